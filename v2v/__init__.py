"""v2v: a self-hosted real-time voice-to-voice media server.

The code lives in four folders at the repository root (``media``, ``worker``,
``signaling``, ``static``); they are installed as the subpackages
``v2v.media``, ``v2v.worker``, ``v2v.signaling`` and ``v2v.static``. Importing
this package has no side effects.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
