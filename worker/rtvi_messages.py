"""RTVI wire format: constants, frame parsing and validation, message builders.

Pipecat's clients (``@pipecat-ai/client-js`` with the SmallWebRTC transport)
send three kinds of text frames on the data channel:

* ``ping: <ms>`` keep-alives (not JSON);
* ``{"type": "signalling", "message": {...}}`` envelopes (``trackStatus``);
* RTVI messages ``{"label": "rtvi-ai", "type": ..., "id": ..., "data": {...}}``.

:func:`parse_frame` turns one frame into a typed request dataclass or a
:class:`ProtocolError` (never raises). :class:`BotOutputTracker` shapes the
assistant's paced text into RTVI 2.x ``bot-output`` segments (one per
sentence, with ``spoken_status``/``spoken_progress``) or the 1.x shape.
Nothing here touches a call or a transport.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .dtmf import is_dtmf_digit

PROTOCOL_VERSION = "2.1.0"
LEGACY_PROTOCOL_VERSION = "1.4.0"  # what a 1.x client is told
LABEL = "rtvi-ai"
MAX_FRAME_BYTES = 64 * 1024  # client-js's default maxMessageSize
MAX_TEXT_CHARS = 16 * 1024


# --------------------------------------------------------------------------
# Building outgoing frames
# --------------------------------------------------------------------------


def new_id() -> str:
    return uuid.uuid4().hex[:8]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)


def rtvi_frame(type_: str, data: Any = None, id_: str | None = None) -> str:
    """One RTVI message as text. Every message carries an id (the request's
    id for replies, a fresh one otherwise)."""
    msg: dict[str, Any] = {"label": LABEL, "type": type_, "id": id_ if id_ is not None else new_id()}
    if data is not None:
        msg["data"] = data
    return _dumps(msg)


def signalling_frame(message_type: str, **fields: Any) -> str:
    return _dumps({"type": "signalling", "message": {"type": message_type, **fields}})


def iso_now() -> str:
    """UTC ISO 8601 with milliseconds and a Z, as Pipecat's transcripts carry."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------
# Parsed client frames
# --------------------------------------------------------------------------


@dataclass
class ProtocolError:
    """A frame that cannot be served; answered with error-response when
    ``id`` is known, else with ``error``."""

    message: str
    id: str | None = None


@dataclass
class Ping:
    client_ms: int | None


@dataclass
class TrackStatus:
    receiver_index: int
    enabled: bool


@dataclass
class ClientReady:
    id: str
    version: str | None
    major: int  # 2 for 2.x (and unknown), 1 for 1.x, 0 for 0.x
    about: dict[str, Any]
    problem: str | None = None  # a non-fatal complaint about version/about
    minor: int = 1


@dataclass
class SendText:
    id: str | None
    content: str
    run_immediately: bool = True
    audio_response: bool = True


@dataclass
class ClientMessage:
    id: str
    t: str
    d: Any = None


@dataclass
class FunctionCallResult:
    id: str | None
    tool_call_id: str
    function_name: str | None
    arguments: dict[str, Any]
    result: Any


@dataclass
class AppendToContext:
    id: str | None
    role: str
    content: str
    run_immediately: bool = False


@dataclass
class DisconnectBot:
    id: str | None


@dataclass
class Dtmf:
    id: str | None
    digits: list[str] = field(default_factory=list)


ParsedFrame = (
    ProtocolError | Ping | TrackStatus | ClientReady | SendText | ClientMessage
    | FunctionCallResult | AppendToContext | DisconnectBot | Dtmf
)


class _Invalid(Exception):
    pass


def _opt_bool(data: dict[str, Any], key: str, default: bool) -> bool:
    v = data.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _Invalid(f"{key} must be a boolean")
    return v


def _text(data: dict[str, Any], key: str, *, required: bool = True) -> str:
    v = data.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str) or (required and not v.strip()):
        raise _Invalid(f"{key} must be a non-empty string")
    if len(v) > MAX_TEXT_CHARS:
        raise _Invalid(f"{key} is longer than {MAX_TEXT_CHARS} characters")
    return v


def _content_text(content: Any) -> str:
    """append-to-context content: a string or OpenAI-style text parts."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list) and all(
        isinstance(p, dict) and isinstance(p.get("text"), str) for p in content
    ):
        text = " ".join(p["text"] for p in content)
    else:
        raise _Invalid("content must be a string or a list of {text} parts")
    if not text.strip():
        raise _Invalid("content must not be empty")
    if len(text) > MAX_TEXT_CHARS:
        raise _Invalid(f"content is longer than {MAX_TEXT_CHARS} characters")
    return text


def _version(version: Any) -> tuple[tuple[int, int], str | None]:
    """(major, minor) of a client's RTVI version, and a complaint if any."""
    if version is None:
        return (2, 1), "client version unknown; assuming RTVI 2.x"
    if not isinstance(version, str):
        return (2, 1), "invalid client version; assuming RTVI 2.x"
    parts = version.split(".")
    try:
        nums = [int(p) for p in parts]
        if len(nums) != 3 or min(nums) < 0:
            raise ValueError
    except ValueError:
        return (2, 1), f"invalid client version format ({version[:32]}); assuming RTVI 2.x"
    if nums[0] > 2:
        return (2, 1), f"client RTVI {version} is newer than this server's {PROTOCOL_VERSION}"
    return (nums[0], nums[1]), None


def _parse_signalling(obj: dict[str, Any]) -> ParsedFrame:
    m = obj.get("message")
    if not isinstance(m, dict):
        return ProtocolError("signalling envelope without a message object")
    if m.get("type") != "trackStatus":
        return ProtocolError(f"unsupported signalling message {str(m.get('type'))[:64]!r}")
    idx, enabled = m.get("receiver_index"), m.get("enabled")
    if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0 or not isinstance(enabled, bool):
        return ProtocolError("trackStatus needs receiver_index (int >= 0) and enabled (bool)")
    return TrackStatus(idx, enabled)


def _parse_rtvi(type_: str, id_: str | None, data: dict[str, Any]) -> ParsedFrame:
    if type_ == "client-ready":
        if id_ is None:
            raise _Invalid("client-ready needs an id")
        (major, minor), problem = _version(data.get("version"))
        about = data.get("about")
        if about is not None and not isinstance(about, dict):
            about, problem = {}, problem or "about must be an object; ignored"
        return ClientReady(id_, data.get("version") if isinstance(data.get("version"), str) else None,
                           major, about or {}, problem, minor)
    if type_ == "send-text":
        opts = data.get("options")
        opts = {} if opts is None else opts
        if not isinstance(opts, dict):
            raise _Invalid("options must be an object")
        return SendText(id_, _text(data, "content"), _opt_bool(opts, "run_immediately", True),
                        _opt_bool(opts, "audio_response", True))
    if type_ == "client-message":
        if id_ is None:
            raise _Invalid("client-message needs an id")
        t = data.get("t")
        if not isinstance(t, str) or not t or len(t) > 128:
            raise _Invalid("client-message needs t: a non-empty string")
        return ClientMessage(id_, t, data.get("d"))
    if type_ == "llm-function-call-result":
        tcid = data.get("tool_call_id")
        if not isinstance(tcid, str) or not tcid:
            raise _Invalid("tool_call_id must be a non-empty string")
        if "result" not in data:
            raise _Invalid("result is missing")
        name = data.get("function_name")
        if name is not None and not isinstance(name, str):
            raise _Invalid("function_name must be a string")
        args = data.get("arguments")
        args = {} if args is None else args
        if not isinstance(args, dict):
            raise _Invalid("arguments must be an object")
        return FunctionCallResult(id_, tcid, name, args, data["result"])
    if type_ == "append-to-context":
        role = data.get("role")
        if role not in ("user", "assistant", "system"):
            raise _Invalid("role must be user, assistant or system")
        return AppendToContext(id_, role, _content_text(data.get("content")),
                               _opt_bool(data, "run_immediately", False))
    if type_ == "disconnect-bot":
        return DisconnectBot(id_)
    if type_ == "dtmf":
        if "buttons" in data:  # RTVI 2.1
            keys = data["buttons"]
            if not isinstance(keys, list) or not keys or len(keys) > 64:
                raise _Invalid("buttons must be a non-empty list of at most 64 keys")
        elif "button" in data:  # RTVI 2.0
            keys = [data["button"]]
        else:
            raise _Invalid("dtmf needs buttons (or button)")
        if not all(is_dtmf_digit(k) for k in keys):
            raise _Invalid("dtmf keys must be 0-9, *, # or A-D")
        return Dtmf(id_, list(keys))
    raise _Invalid(f"unsupported message type {type_[:64]!r}")


def parse_frame(raw: str | bytes, max_bytes: int = MAX_FRAME_BYTES) -> ParsedFrame:
    """Classify and validate one incoming data-channel frame. Never raises."""
    try:
        if isinstance(raw, (bytes, bytearray, memoryview)):
            if len(raw) > max_bytes:
                return ProtocolError(f"frame larger than {max_bytes} bytes")
            try:
                raw = bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                return ProtocolError("binary frames are not supported")
        if not isinstance(raw, str):
            return ProtocolError("unsupported frame")
        if len(raw) > max_bytes or len(raw.encode("utf-8", "surrogatepass")) > max_bytes:
            return ProtocolError(f"frame larger than {max_bytes} bytes")
        if raw.startswith("ping"):
            m = re.fullmatch(r"ping:?\s*(\d{1,16})?\s*", raw)
            if m is None:
                return ProtocolError("malformed ping")
            return Ping(int(m.group(1)) if m.group(1) else None)
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            return ProtocolError("frame is not JSON")
        if not isinstance(obj, dict):
            return ProtocolError("frame is not a JSON object")
        if obj.get("type") == "signalling" and "label" not in obj:
            return _parse_signalling(obj)
        raw_id = obj.get("id")
        id_ = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 128 else None
        if obj.get("label") != LABEL:
            return ProtocolError("not an RTVI message (label must be 'rtvi-ai')", id_)
        if raw_id is not None and id_ is None:
            return ProtocolError("id must be a string of 1-128 characters")
        type_ = obj.get("type")
        if not isinstance(type_, str) or not type_:
            return ProtocolError("type must be a non-empty string", id_)
        data = obj.get("data")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            return ProtocolError("data must be an object", id_)
        try:
            return _parse_rtvi(type_, id_, data)
        except _Invalid as e:
            return ProtocolError(f"invalid {type_[:64]}: {e}", id_)
    except Exception as e:  # belt and braces: nothing escapes
        return ProtocolError(f"unreadable frame ({type(e).__name__})")


# --------------------------------------------------------------------------
# bot-output shaping
# --------------------------------------------------------------------------

_NWS = re.compile(r"\S")


def _nws(text: str) -> int:
    return len(_NWS.findall(text))


def _split_nws(text: str, k: int) -> tuple[str, str]:
    """Split ``text`` after its k-th non-whitespace character."""
    if k <= 0:
        return "", text
    for i, m in enumerate(_NWS.finditer(text), 1):
        if i == k:
            return text[: m.end()], text[m.end():]
    return text, ""


@dataclass
class _Segment:
    id: int
    text: str
    size: int  # non-whitespace characters
    spoken: int = 0
    done: bool = False

    def progress(self) -> tuple[str, str]:
        acc, rest = _split_nws(self.text, self.spoken)
        return acc.strip(), rest.strip()


@dataclass
class _Item:
    segments: list[_Segment] = field(default_factory=list)
    cursor: int = 0
    pending: str = ""  # spoken text not yet matched to a produced sentence
    spoken_text: str = ""


class BotOutputTracker:
    """Turns produced sentences (BotTranscript) and playout-paced text
    (BotOutput) into ``bot-output`` data dicts.

    RTVI 2.x: each sentence is a segment announced ``spoken_status: "new"``
    when produced, then ``in-progress``/``completed`` as it is heard, with
    ``spoken_progress {accumulated_text, remaining_text}``; ``text`` of a
    progress message is the newly heard piece. Sentences and heard text are
    matched by non-whitespace characters. When an item ends interrupted, its
    unfinished segments are closed ``completed`` with ``interrupted: true``
    and the unheard part in ``remaining_text``. The last message of an item
    carries v2v's extensions ``final``, ``interrupted``, ``spoken_text``
    (all that was heard) and ``unspoken``; every message has ``item_id``.

    RTVI 1.x: one ``{text, spoken: true, aggregated_by: "sentence"}`` per
    heard sentence (and the heard part of an interrupted one).
    """

    MAX_ITEMS = 32

    def __init__(self) -> None:
        self.legacy = False
        self._items: dict[str, _Item] = {}
        self._next_segment = 1

    def _item(self, item_id: str) -> _Item:
        item = self._items.get(item_id)
        if item is None:
            if len(self._items) >= self.MAX_ITEMS:
                self._items.pop(next(iter(self._items)))
            item = self._items[item_id] = _Item()
        return item

    def _new_segment(self, item: _Item, text: str) -> _Segment:
        seg = _Segment(self._next_segment, text, _nws(text))
        self._next_segment += 1
        item.segments.append(seg)
        return seg

    def _msg(self, item_id: str, seg: _Segment, text: str, status: str,
             interrupted: bool = False) -> dict[str, Any]:
        acc, rest = seg.progress()
        d: dict[str, Any] = {
            "text": text,
            "aggregated_by": "sentence",
            "segment_id": seg.id,
            "will_be_spoken": True,
            "spoken_status": status,
            "spoken_progress": {"accumulated_text": acc, "remaining_text": rest},
            "item_id": item_id,
        }
        if status == "new":
            d["spoken"] = False
        if interrupted:
            d["interrupted"] = True
        return d

    def _legacy(self, item_id: str, text: str) -> dict[str, Any]:
        return {"text": text, "spoken": True, "aggregated_by": "sentence", "item_id": item_id}

    def _advance(self, item_id: str, item: _Item) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while item.cursor < len(item.segments) and _nws(item.pending):
            seg = item.segments[item.cursor]
            need = seg.size - seg.spoken
            piece, item.pending = _split_nws(item.pending, need)
            seg.spoken += min(need, _nws(piece))
            if seg.spoken >= seg.size:
                seg.done = True
                item.cursor += 1
                out.append(self._legacy(item_id, seg.text.strip()) if self.legacy
                           else self._msg(item_id, seg, piece, "completed"))
            elif not self.legacy:
                out.append(self._msg(item_id, seg, piece, "in-progress"))
        # skip empty (whitespace-only) sentences
        while item.cursor < len(item.segments) and item.segments[item.cursor].size == 0:
            item.segments[item.cursor].done = True
            item.cursor += 1
        return out

    def produced(self, item_id: str, sentence: str) -> list[dict[str, Any]]:
        """A sentence of the answer was produced (not yet heard)."""
        item = self._item(item_id)
        seg = self._new_segment(item, sentence)
        out = [] if self.legacy else [self._msg(item_id, seg, sentence, "new")]
        return out + self._advance(item_id, item)

    def heard(self, item_id: str, text: str, final: bool = False, interrupted: bool = False,
              spoken: str = "", unspoken: str = "") -> list[dict[str, Any]]:
        """Newly heard text of an item; ``final`` ends the item."""
        item = self._item(item_id)
        if text:
            item.pending += text
            item.spoken_text += text
        out = self._advance(item_id, item)
        if not final:
            return out
        self._items.pop(item_id, None)
        if _nws(item.pending):  # heard text no sentence announced: make it one
            seg = self._new_segment(item, item.pending.strip())
            if not self.legacy:
                out.append(self._msg(item_id, seg, seg.text, "new"))
            out += self._advance(item_id, item)
        for seg in item.segments:
            if seg.done:
                continue
            seg.done = True
            if interrupted:
                acc, _ = seg.progress()
                if self.legacy:
                    if acc:
                        out.append(self._legacy(item_id, acc))
                else:
                    out.append(self._msg(item_id, seg, "", "completed", interrupted=True))
            else:
                seg.spoken = seg.size
                out.append(self._legacy(item_id, seg.text.strip()) if self.legacy
                           else self._msg(item_id, seg, "", "completed"))
        if not out:
            if self.legacy or not item.segments:
                return out  # an answer without text: nothing to show
            out.append(self._msg(item_id, item.segments[-1], "", "completed", interrupted))
        heard_all = spoken or item.spoken_text
        out[-1].update(final=True, interrupted=interrupted, spoken_text=heard_all.strip(),
                       unspoken=unspoken.strip())
        return out
