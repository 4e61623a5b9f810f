"""The ``gpt-live`` model: OpenAI's GPT-Live (full duplex) over an aiohttp WebSocket.

* :mod:`.link` -- the socket (``OPENAI_BASE_URL`` + ``/live/sessions``):
  ``session.start`` first, then the Realtime link's reading, reconnecting and
  key scrubbing;
* :mod:`.session` -- the session: caller audio streamed, model output cut into
  utterances for the worker, client delegation for v2v's tools;
* :mod:`.factory` -- its factory.
"""

from .factory import DEFAULT_LIVE_MODEL, GptLiveFactory
from .session import GptLiveSession, pick_tool

__all__ = ["DEFAULT_LIVE_MODEL", "GptLiveFactory", "GptLiveSession", "pick_tool"]
