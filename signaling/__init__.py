"""The server: HTTP signaling and WebRTC (:mod:`.app`, :mod:`.webrtc`), SIP
(:mod:`.sip`), the calls and the dispatcher seam (:mod:`.calls`,
:mod:`.dispatch`, :mod:`.host`), the worker pool (:mod:`.pool`), settings, the
``v2v`` command, the headless caller, logs and metrics.

Importing this package imports none of its modules (the aiortc tuning is
applied by the server's start-up, not on import).
"""

__all__ = [
    "aiortc_tuning", "app", "calls", "cli", "client", "config", "dispatch", "host", "logs", "metrics", "pool",
    "rtp_call", "sip", "webrtc",
]
