"""One call's runtime, transport-neutral: :mod:`.call` (``CallSession``), the
events it emits (:mod:`.events`), the model sessions (:mod:`.models`), tools,
RTVI and the WAV-file transport.

The other modules (barge-in, transcript pacing, tool running, the response
ledger, task sets, ...) are parts of ``CallSession``, not public API. Imports
``v2v.media`` only, never ``v2v.signaling``; importing this package imports
none of its modules.
"""

__all__ = ["call", "dtmf", "events", "models", "rtvi", "tools", "transport", "wavcall"]
