"""What an application embedding v2v adds, for the Pipecat interop test server.

Loaded before ``v2v serve`` starts (see tests/test_pipecat_client.py):

* a ``client-message`` handler, through the public extension API
  :func:`worker.rtvi.register_client_message_handler`;
* client-executed tools (``client_side=True`` in the call's ToolRegistry):
  ``get_time`` (so the local model asks the browser for the time) and
  ``get_location``. v2v has no public hook for a server's tools yet, so this
  wraps :class:`worker.call.CallSession` (its documented constructor) to add
  them to every call's registry.
"""

from __future__ import annotations

from typing import Any

from worker.call import CallSession
from worker.rtvi import ClientMessageError, ClientRequest, register_client_message_handler
from worker.tools import ToolRegistry


async def app_echo(req: ClientRequest) -> Any:
    if not isinstance(req.d, dict):
        raise ClientMessageError("d must be an object")
    return {"echo": req.d, "call_id": req.call.call_id}


register_client_message_handler("app-echo", app_echo)

_init = CallSession.__init__


def _init_with_client_tools(self: CallSession, call_id: str, model: Any, config: Any, playout: Any,
                            tools: ToolRegistry | None = None, *args: Any, **kwargs: Any) -> None:
    reg = tools.copy() if tools is not None else ToolRegistry()
    reg.register("get_time", "Get the current local time of day on the user's device.", None,
                 client_side=True)
    reg.register("get_location", "Get the user's location from their device.",
                 {"type": "object", "properties": {"precision": {"type": "string"}}}, client_side=True)
    _init(self, call_id, model, config, playout, reg, *args, **kwargs)


CallSession.__init__ = _init_with_client_tools  # type: ignore[method-assign]
