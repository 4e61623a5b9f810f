"""SIP over WebSocket (RFC 7118) at ``GET /sip``, subprotocol ``sip``.

Each WebSocket message is one SIP message (text or binary). Responses and
in-dialog requests go back on the same socket (JsSIP's Via host is
``.invalid``); a closed socket ends its calls. Outgoing messages are queued
and written by one task per socket, so the SIP core can send synchronously.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from .core import Conn, SipCore
from .message import MAX_MESSAGE

log = logging.getLogger("v2v.sip.ws")

MAX_QUEUE = 256


def sip_websocket_handler(core: SipCore) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The ``GET /sip`` handler feeding every message to ``core``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await _serve(core, request)

    return handler


async def _serve(core: SipCore, request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(protocols=("sip",), max_msg_size=MAX_MESSAGE, heartbeat=30.0)
    if not ws.can_prepare(request).ok:
        return web.json_response({"error": "SIP over WebSocket: a WebSocket upgrade is required"}, status=400)
    await ws.prepare(request)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    remote = (peer[0], peer[1]) if peer else ("0.0.0.0", 0)
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    local = (sock[0], sock[1]) if sock else ("0.0.0.0", 0)
    out: asyncio.Queue[bytes] = asyncio.Queue(MAX_QUEUE)
    closed = False

    def send(data: bytes) -> None:
        if closed:
            return
        try:
            out.put_nowait(data)
        except asyncio.QueueFull:
            log.info("sip ws: %s:%s not reading, dropping a message", *remote)

    def is_open() -> bool:
        return not closed and not ws.closed

    conn = Conn("WS", remote, local, send, is_open)

    async def writer() -> None:
        while True:
            data = await out.get()
            try:
                await ws.send_str(data.decode("utf-8", "replace"))
            except (ConnectionError, RuntimeError):
                return
            finally:
                out.task_done()

    wtask = asyncio.create_task(writer(), name=f"sip-ws-writer-{remote[0]}:{remote[1]}")
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                core.receive(msg.data.encode("utf-8"), conn)
            elif msg.type == WSMsgType.BINARY:
                core.receive(msg.data, conn)
            elif msg.type == WSMsgType.ERROR:
                log.info("sip ws: error from %s:%s: %s", *remote, ws.exception())
                break
    finally:
        # let queued responses (e.g. the 200 to a BYE) go out before closing
        with contextlib.suppress(TimeoutError):  # a peer not reading gets what was sent so far
            await asyncio.wait_for(out.join(), 1.0)
        closed = True
        wtask.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # the writer's end, asked for just above
            await wtask
        core.connection_lost(lambda c: c is conn)
        await ws.close()
    return ws
