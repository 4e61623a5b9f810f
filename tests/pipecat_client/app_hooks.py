"""What an application embedding v2v adds, for the Pipecat interop test server.

Loaded by ``v2v serve --app tests/pipecat_client/app_hooks.py`` (see tests/test_pipecat_client.py):

* a ``client-message`` handler, through the public extension API
  :func:`worker.rtvi.register_client_message_handler`;
* client-executed tools (``client_side=True`` in the call's ToolRegistry):
  ``get_time`` (so the local model asks the browser for the time) and
  ``get_location``, added to every call's registry by ``register_tools``
  (``v2v serve --app`` calls it).
"""

from __future__ import annotations

from typing import Any

from v2v.worker.rtvi import ClientMessageError, ClientRequest, register_client_message_handler
from v2v.worker.tools import ToolRegistry


async def app_echo(req: ClientRequest) -> Any:
    if not isinstance(req.d, dict):
        raise ClientMessageError("d must be an object")
    return {"echo": req.d, "call_id": req.call.call_id}


register_client_message_handler("app-echo", app_echo)


def register_tools(registry: ToolRegistry) -> None:
    """Called by ``v2v serve --app`` for every new call's tool registry."""
    registry.register("get_time", "Get the current local time of day on the user's device.", None,
                      client_side=True)
    registry.register("get_location", "Get the user's location from their device.",
                      {"type": "object", "properties": {"precision": {"type": "string"}}}, client_side=True)
