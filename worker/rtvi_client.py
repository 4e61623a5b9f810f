"""Client messages of RTVI: the registry of ``client-message`` handlers.

Built in: ``get-state`` and ``update-instructions``; an application adds its
own with :func:`register_client_message_handler` (every call) or
:meth:`~worker.rtvi.RTVIHandler.register_client_message_handler` (one call).
:mod:`worker.rtvi` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import rtvi_messages as m

if TYPE_CHECKING:
    from .call import CallSession
    from .rtvi import RTVIHandler

__all__ = [
    "BUILTIN_CLIENT_MESSAGES", "ClientMessageError", "ClientMessageHandler", "ClientRequest",
    "app_handler", "register_client_message_handler", "unregister_client_message_handler",
]


class ClientMessageError(Exception):
    """Raised by a client-message handler: answered with ``error-response``."""


@dataclass
class ClientRequest:
    """One ``client-message`` as a handler sees it."""

    t: str
    d: Any
    id: str
    call: CallSession
    rtvi: RTVIHandler


ClientMessageHandler = Callable[[ClientRequest], Awaitable[Any] | Any]

_app_handlers: dict[str, ClientMessageHandler] = {}


def register_client_message_handler(t: str, fn: ClientMessageHandler) -> None:
    """Serve ``client-message`` type ``t`` on every call (an application hook).

    ``fn(req: ClientRequest)`` (async or not) returns the ``d`` of the
    ``server-response``; raising :class:`ClientMessageError` answers
    ``error-response`` with its message (any other exception answers a generic
    error-response and is logged). Registering a built-in name overrides it.
    """
    if not isinstance(t, str) or not t:
        raise ValueError("client-message type must be a non-empty string")
    _app_handlers[t] = fn


def unregister_client_message_handler(t: str) -> None:
    _app_handlers.pop(t, None)


async def _get_state(req: ClientRequest) -> Any:
    return {"state": req.call.state}


async def _update_instructions(req: ClientRequest) -> Any:
    d = req.d
    text = d.get("instructions") if isinstance(d, dict) else d
    if not isinstance(text, str) or not text.strip():
        raise ClientMessageError("d.instructions must be a non-empty string")
    if len(text) > m.MAX_TEXT_CHARS:
        raise ClientMessageError(f"instructions longer than {m.MAX_TEXT_CHARS} characters")
    await req.call.update_instructions(text)
    return {"ok": True}


BUILTIN_CLIENT_MESSAGES: dict[str, ClientMessageHandler] = {
    "get-state": _get_state,
    "update-instructions": _update_instructions,
}


def app_handler(t: str) -> ClientMessageHandler | None:
    """The handler an application registered for ``t`` on every call, if any."""
    return _app_handlers.get(t)
