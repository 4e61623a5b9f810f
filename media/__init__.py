"""Audio building blocks with no network and no call logic: frame conversion,
resampling, re-chunking, VAD, the playout buffer and its aiortc track, the
reordering jitter buffer and G.711.

Imports neither ``v2v.worker`` nor ``v2v.signaling``; importing this package
imports none of its modules.
"""

__all__ = ["audio", "chunker", "g711", "jitter", "playout", "resample", "track", "vad"]
