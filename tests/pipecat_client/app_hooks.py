"""What an application embedding v2v adds, for the Pipecat interop test server.

Loaded before ``v2v serve`` starts (see tests/test_pipecat_client.py):

* a ``client-message`` handler, through the public extension API
  :func:`worker.rtvi.register_client_message_handler`;
* client-executed tools (``client_side=True`` in the call's ToolRegistry):
  ``get_time`` (so the local model asks the browser for the time) and
  ``get_location``. v2v has no public hook for per-server tools yet, so this
  wraps the call manager's default-tools factory.
"""

from __future__ import annotations

from typing import Any

import signaling.calls as calls
from worker.rtvi import ClientMessageError, ClientRequest, register_client_message_handler
from worker.tools import ToolRegistry


async def app_echo(req: ClientRequest) -> Any:
    if not isinstance(req.d, dict):
        raise ClientMessageError("d must be an object")
    return {"echo": req.d, "call_id": req.call.call_id}


register_client_message_handler("app-echo", app_echo)

_base_tools = calls._default_tools


def _tools_with_client_side() -> ToolRegistry:
    reg = _base_tools() or ToolRegistry()
    reg.register("get_time", "Get the current local time of day on the user's device.", None,
                 client_side=True)
    reg.register("get_location", "Get the user's location from their device.",
                 {"type": "object", "properties": {"precision": {"type": "string"}}}, client_side=True)
    return reg


calls._default_tools = _tools_with_client_side
