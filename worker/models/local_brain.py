"""The local model's rule-based brain and its real tools.

:func:`decide` maps what the caller said to either a tool call (the time of
day, a long story for trying barge-in, "what can you do") or a direct spoken
reply (greetings, small talk, "go on" after an interruption resumes the cut
answer, and repeating back what it heard). The tools are
plain async functions the worker registers in its tool registry (see
:func:`tool_specs`); their outputs are turned into speech by
:func:`speak_tool_output`.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .base import ToolSpec

GREETING = "Hello! I am the local v2v assistant. Ask me what time it is, or ask me for a story."

CAPABILITIES = (
    "I can tell you the time of day. I can tell you a long story, and you can interrupt me "
    "whenever you like, just start talking; say go on, and I continue where you stopped me. "
    "And if I do not understand, I repeat what I heard."
)

STORY = (
    "Once upon a time, in a small village between the mountains and the sea, there lived a clockmaker "
    "named Ada. Every morning she opened her shop before the sun came up, and every evening she closed it "
    "long after the lamps were lit. The people of the village said that her clocks were never wrong, not "
    "even by a single second. One winter, a traveller arrived with a broken watch that had belonged to his "
    "grandfather. He told Ada that the watch had stopped on the day his grandfather left the village, many "
    "years before. Ada opened the watch and found, folded behind the gears, a tiny map drawn in faded ink. "
    "The map showed the path from the harbour to an old lighthouse on the cliffs. The next day, Ada and the "
    "traveller walked along the coast, through the wind and the cold rain, until they reached the lighthouse. "
    "Inside, on a dusty shelf, they found a wooden box. In the box there was a letter, and a key, and a "
    "second watch, exactly like the first. The letter said that time is only worth keeping when it is shared "
    "with the people we love. The traveller smiled, and for the first time in many years, he felt at home. "
    "Ada repaired both watches, and from that day on they ticked together, side by side, in the window of "
    "her little shop. And the people of the village said that, on quiet nights, you could still hear them, "
    "keeping time for the clockmaker and the traveller, who had become the best of friends. The end."
)

_WORD_RE = re.compile(r"[a-z']+")

_SMALL_TALK: list[tuple[tuple[str, ...], str]] = [
    (("thank", "thanks"), "You are welcome."),
    (("goodbye", "bye"), "Goodbye! It was nice talking to you."),
    (("name",), "I am the local v2v assistant. I run entirely on this machine."),
    (("joke",), "I only know one joke, and it takes too long to tell. Ask me for a story instead."),
]
_GREETINGS = ("hello", "hi", "hey", "morning", "afternoon", "evening")


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass
class Say:
    text: str


Decision = ToolCall | Say


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


_STOP = ("stop", "quiet", "enough", "shut")
_CONTINUE = ("continue", "go on", "carry on", "keep going", "go ahead")


def decide(heard: str, unfinished: str = "") -> Decision:
    """What to do about one user turn (recognized speech or a text message).

    ``unfinished`` is the unspoken rest of the last answer, when the caller
    interrupted it: "continue" (or "go on"...) resumes it from there.
    """
    words = _words(heard)
    ws = set(words)
    joined = " ".join(words)
    if not words:
        return Say("Sorry, I did not catch that. Could you say it again?")
    if unfinished.strip() and any(c in joined for c in _CONTINUE):
        return Say("As I was saying: " + unfinished.strip())
    if ws.intersection(_STOP):
        return Say("Okay, I stopped.")
    if "story" in ws or "stories" in ws:
        return ToolCall("tell_story")
    if "time" in ws or "clock" in ws:
        return ToolCall("get_time")
    if "can you do" in joined or "able to do" in joined or "help" in ws:
        return ToolCall("what_can_you_do")
    if "how are you" in joined:
        return Say("I am fine, thank you. What can I do for you?")
    for keys, reply in _SMALL_TALK:
        if ws.intersection(keys):
            return Say(reply)
    if ws.intersection(_GREETINGS) and len(words) <= 4:
        return Say(GREETING)
    return Say(f"You said: {heard.strip()}.")


# -- tools -------------------------------------------------------------------


def time_text(now: _dt.datetime | None = None) -> str:
    """The time of day as a sentence espeak reads well, e.g. "It is 7:05 PM."."""
    now = now or _dt.datetime.now()
    hour = now.hour % 12 or 12
    return f"It is {hour}:{now.minute:02d} {'AM' if now.hour < 12 else 'PM'}."


async def get_time() -> str:
    """The current local time of the server."""
    now = _dt.datetime.now().astimezone()
    return json.dumps({"time": now.strftime("%H:%M"), "timezone": now.tzname() or "", "text": time_text(now)})


async def tell_story() -> str:
    """A long story (about a minute and a half of speech), for trying barge-in."""
    return json.dumps({"text": STORY})


async def what_can_you_do() -> str:
    """What the local assistant can do."""
    return json.dumps({"text": CAPABILITIES})


ToolFunc = Callable[..., Awaitable[str]]

TOOLS: list[tuple[ToolSpec, ToolFunc]] = [
    (ToolSpec("get_time", "Get the current local time of day."), get_time),
    (ToolSpec("tell_story", "Get a long story to tell the caller."), tell_story),
    (ToolSpec("what_can_you_do", "Describe what this assistant can do."), what_can_you_do),
]


def tool_specs() -> list[tuple[ToolSpec, ToolFunc]]:
    """(ToolSpec, async function) pairs for the worker's tool registry."""
    return list(TOOLS)


def speak_tool_output(name: str, output: str) -> str:
    """Turn a tool's output into the sentence to say."""
    text = output
    try:
        value = json.loads(output)
    except (TypeError, ValueError):
        value = None
    if isinstance(value, dict):
        if isinstance(value.get("text"), str):
            text = value["text"]
        elif isinstance(value.get("error"), str):
            text = f"Sorry, the {name.replace('_', ' ')} tool failed: {value['error']}"
        elif isinstance(value.get("result"), str):
            text = speak_tool_output(name, value["result"])
    elif isinstance(value, str):
        text = value
    text = str(text).strip()
    return text or "Done."


__all__ = [
    "decide", "ToolCall", "Say", "Decision", "tool_specs", "speak_tool_output", "time_text",
    "get_time", "tell_story", "what_can_you_do", "GREETING", "STORY", "CAPABILITIES",
]
