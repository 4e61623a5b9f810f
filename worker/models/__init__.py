"""Speech models behind one interface: the session ABC, its typed events, and the shipped factories.

:mod:`.base` defines :class:`ModelFactory` / :class:`ModelSession` and the
events a session yields; :class:`EchoModelFactory` (tests and load),
:class:`LocalModelFactory` (offline: pocketsphinx, a rule-based brain,
espeak-ng) and :class:`OpenAIRealtimeFactory` (the OpenAI Realtime API)
implement it. Importing this package loads no model and starts no thread.
"""

from .base import (
    AudioDelta,
    AudioDone,
    Connected,
    ContextMessage,
    Disconnected,
    FunctionCall,
    InputCommitted,
    InputTranscript,
    ModelCapabilities,
    ModelError,
    ModelEvent,
    ModelFactory,
    ModelSession,
    OutputTranscriptDelta,
    OutputTranscriptDone,
    ResponseCreated,
    ResponseDone,
    SessionConfig,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    TextDone,
    ToolSpec,
)
from .echo import EchoModelFactory
from .local import LocalModelFactory
from .openai_realtime import OpenAIRealtimeFactory

__all__ = [
    # the interface
    "ModelCapabilities",
    "ModelFactory",
    "ModelSession",
    "SessionConfig",
    "ToolSpec",
    "ContextMessage",
    # the events a session yields
    "ModelEvent",
    "AudioDelta",
    "AudioDone",
    "Connected",
    "Disconnected",
    "FunctionCall",
    "InputCommitted",
    "InputTranscript",
    "ModelError",
    "OutputTranscriptDelta",
    "OutputTranscriptDone",
    "ResponseCreated",
    "ResponseDone",
    "SpeechStarted",
    "SpeechStopped",
    "TextDelta",
    "TextDone",
    # the factories
    "EchoModelFactory",
    "LocalModelFactory",
    "OpenAIRealtimeFactory",
]
