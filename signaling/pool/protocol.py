"""The worker RPC: how a signaling node drives the calls of a worker process.

A worker serves, under ``/pool/v1/``, one ``POST`` per
:class:`~v2v.signaling.dispatch.Dispatcher` method (the JSON of the dispatch
dataclasses in, the JSON of the answer out; a :class:`DispatchError` as
``{"error", "status", "retry_after"}`` with that HTTP status) and the
WebSocket ``/pool/v1/events``: a ``hello`` (the worker's load and calls), then
every :class:`~v2v.signaling.dispatch.CallEvent` (JSON with a ``type`` field,
the event's class name) and ``load`` updates (on every call change and each
second). The transport is plain HTTP over TCP or a unix socket.

:class:`WorkerService` is the server side (around any Dispatcher, in practice
a :class:`~v2v.signaling.host.CallHost`); :class:`RemoteWorker` the client side
(one keep-alive session, the events socket kept open and reconnected).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, fields
from typing import Any

import aiohttp
from aiohttp import web

from .. import dispatch as d
from ..dispatch import (
    CallEnded,
    CallEvent,
    Dispatcher,
    DispatchError,
    IceCandidateInit,
    MediaAnswer,
    MediaRequest,
    OfferAnswer,
    OfferRequest,
    WorkerInfo,
    error_from_status,
)

__all__ = [
    "PREFIX",
    "RemoteWorker",
    "WorkerService",
    "WorkerUnavailable",
    "event_from_json",
    "event_to_json",
]

log = logging.getLogger("v2v.pool.protocol")

PREFIX = "/pool/v1"
LOAD_INTERVAL_S = 1.0  # load pushed on the events socket at least this often
WS_HEARTBEAT_S = 2.0  # WebSocket ping; a silent peer is dropped after ~3 s (a busy worker's loop may lag 0.5 s)
RPC_TIMEOUT_S = 30.0
RECENT_ENDS = 1024


class WorkerUnavailable(DispatchError):
    """The worker did not answer (process gone, connection refused or reset)."""

    status = 503


# -----------------------------------------------------------------------------
# JSON of events and messages
# -----------------------------------------------------------------------------


def _event_types() -> dict[str, type[CallEvent]]:
    out: dict[str, type[CallEvent]] = {}
    for value in vars(d).values():
        if isinstance(value, type) and issubclass(value, CallEvent):
            out[value.__name__] = value
    return out


def event_to_json(event: CallEvent) -> dict[str, Any]:
    return {"type": type(event).__name__, **asdict(event)}


def event_from_json(data: dict[str, Any]) -> CallEvent | None:
    """The event of ``data``, or None for a type this side does not know."""
    cls = _event_types().get(str(data.get("type")))
    if cls is None:
        return None
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def _build(cls: Any, data: Any) -> Any:
    """``cls(**data)`` keeping only its fields; malformed input is a BadRequest."""
    if not isinstance(data, dict):
        raise d.BadRequest("body must be a JSON object")
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as e:
        raise d.BadRequest(f"bad {cls.__name__}: {e}") from None


def _key(body: dict[str, Any]) -> d.CallKey | None:
    """The caller's :class:`CallKey` of an RPC body (None: an internal request)."""
    raw = body.get("key")
    return None if raw is None else _build(d.CallKey, raw)


def _str(body: dict[str, Any], key: str) -> str:
    v = body.get(key)
    if not isinstance(v, str):
        raise d.BadRequest(f"'{key}' must be a string")
    return v


# -----------------------------------------------------------------------------
# Server side (in the worker process)
# -----------------------------------------------------------------------------

CallHook = Callable[[str, str], Awaitable[None]]  # (call_id, transport)


class WorkerService:
    """Serves a Dispatcher's methods and events to signaling nodes.

    ``info`` gives the worker's current :class:`WorkerInfo`; ``on_call``
    (optional) is awaited when a new call is placed here, before the answer
    goes back (the Redis registry records the call map there).
    """

    def __init__(self, host: Dispatcher, info: Callable[[], WorkerInfo], on_call: CallHook | None = None) -> None:
        self.host = host
        self.info = info
        self.on_call = on_call
        self.calls: dict[str, str] = {}  # call_id -> transport, of the calls placed through the RPC
        self._sockets: dict[web.WebSocketResponse, tuple[asyncio.Queue[dict[str, Any] | None], asyncio.Event]] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._ended: OrderedDict[str, None] = OrderedDict()  # recent ends (an end can overtake its answer)
        host.add_listener(self._on_event)

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        for name, handler in (
            ("offer", self._offer), ("add_candidates", self._add_candidates), ("hangup", self._hangup),
            ("open_media", self._open_media), ("start_media", self._start_media), ("reoffer", self._reoffer),
            ("set_answer", self._set_answer), ("dtmf", self._dtmf), ("info", self._info),
            ("transfer", self._transfer), ("transfer_done", self._transfer_done),
        ):
            r.add_post(f"{PREFIX}/{name}", self._wrap(handler))
        r.add_get(f"{PREFIX}/events", self._events)
        app.on_startup.append(self._start_ticker)
        app.on_shutdown.append(self._close_sockets)

    # -- RPC ---------------------------------------------------------------
    def _wrap(self, fn: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> Any:
        async def handler(request: web.Request) -> web.Response:
            try:
                body = json.loads(await request.read() or b"{}")
                if not isinstance(body, dict):
                    raise d.BadRequest("body must be a JSON object")
                return web.json_response(await fn(body))
            except DispatchError as e:
                err = {"error": e.message, "status": e.status, "retry_after": e.retry_after}
                return web.json_response(err, status=e.status)
            except ValueError:
                return web.json_response({"error": "body is not valid JSON", "status": 400}, status=400)
            except Exception as e:
                log.exception("worker RPC %s failed", request.path)
                return web.json_response({"error": f"worker error: {type(e).__name__}", "status": 500}, status=500)

        return handler

    async def _placed(self, call_id: str, transport: str) -> None:
        if call_id in self.calls or call_id in self._ended:  # known, or ended before its answer went
            return
        self.calls[call_id] = transport
        if self.on_call is not None:
            await self.on_call(call_id, transport)
        self.push_load()

    async def _offer(self, body: dict[str, Any]) -> dict[str, Any]:
        req: OfferRequest = _build(OfferRequest, body)
        answer = await self.host.offer(req)
        await self._placed(answer.pc_id, "webrtc")
        return asdict(answer)

    async def _add_candidates(self, body: dict[str, Any]) -> dict[str, Any]:
        raw = body.get("candidates")
        if not isinstance(raw, list):
            raise d.BadRequest("'candidates' must be a list")
        await self.host.add_candidates(_str(body, "pc_id"), [_build(IceCandidateInit, c) for c in raw], _key(body))
        return {}

    async def _hangup(self, body: dict[str, Any]) -> dict[str, Any]:
        await self.host.hangup(_str(body, "call_id"), str(body.get("reason") or "hangup"), _key(body))
        return {}

    async def _open_media(self, body: dict[str, Any]) -> dict[str, Any]:
        req: MediaRequest = _build(MediaRequest, body)
        answer = await self.host.open_media(req)
        await self._placed(req.call_id, req.transport)
        return asdict(answer)

    async def _start_media(self, body: dict[str, Any]) -> dict[str, Any]:
        await self.host.start_media(_str(body, "call_id"))
        return {}

    async def _reoffer(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"sdp": await self.host.reoffer(_str(body, "call_id"), _str(body, "sdp"))}

    async def _set_answer(self, body: dict[str, Any]) -> dict[str, Any]:
        await self.host.set_answer(_str(body, "call_id"), _str(body, "sdp"))
        return {}

    async def _dtmf(self, body: dict[str, Any]) -> dict[str, Any]:
        await self.host.dtmf(_str(body, "call_id"), _str(body, "digit"))
        return {}

    async def _transfer(self, body: dict[str, Any]) -> dict[str, Any]:
        result = await self.host.transfer(_str(body, "call_id"), _str(body, "target"), str(body.get("reason") or ""),
                                          _key(body))
        return asdict(result)

    async def _transfer_done(self, body: dict[str, Any]) -> dict[str, Any]:
        result: d.TransferResult = _build(d.TransferResult, body.get("result"))
        await self.host.transfer_done(_str(body, "call_id"), _str(body, "request_id"), result)
        return {}

    async def _info(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"worker": asdict(self.info()), "calls": sorted(self.calls)}

    # -- events --------------------------------------------------------------
    def _on_event(self, event: CallEvent) -> None:
        if isinstance(event, CallEnded):
            self.calls.pop(event.call_id, None)
            self._ended[event.call_id] = None
            while len(self._ended) > RECENT_ENDS:
                self._ended.popitem(last=False)
        self._broadcast(event_to_json(event))
        if isinstance(event, CallEnded):
            self.push_load()

    def _broadcast(self, msg: dict[str, Any]) -> None:
        for q, _ in self._sockets.values():
            q.put_nowait(msg)

    def push_load(self) -> None:
        self._broadcast({"type": "load", "worker": asdict(self.info())})

    async def _start_ticker(self, app: web.Application) -> None:
        async def tick() -> None:
            while True:
                await asyncio.sleep(LOAD_INTERVAL_S)
                if self._sockets:
                    self.push_load()

        self._ticker = asyncio.create_task(tick(), name="pool-load-ticker")

    async def _close_sockets(self, app: web.Application) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        handlers = [done for q, done in self._sockets.values()]
        for q, _ in self._sockets.values():
            q.put_nowait(None)  # after the events still queued (the calls' ends)
        if handlers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handlers)), 2.0)

    async def _events(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=WS_HEARTBEAT_S)
        await ws.prepare(request)
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        q.put_nowait({"type": "hello", "worker": asdict(self.info()), "calls": sorted(self.calls)})
        done = asyncio.Event()
        self._sockets[ws] = (q, done)

        async def drain_incoming() -> None:
            async for _ in ws:  # nothing is expected; this notices the close
                pass
            q.put_nowait(None)

        reader = asyncio.create_task(drain_incoming())
        try:
            while (msg := await q.get()) is not None:
                await ws.send_json(msg)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._sockets.pop(ws, None)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await ws.close()
            done.set()
        return ws


# -----------------------------------------------------------------------------
# Client side (in the signaling node)
# -----------------------------------------------------------------------------


class RemoteWorker:
    """One worker as a signaling node sees it: its RPC and its events socket.

    ``url`` is the worker's base URL (``http://host:port``); with ``unix`` the
    requests go over that unix socket instead. ``on_event(worker, event)`` gets
    every call event; ``on_state(worker)`` is called when the events socket
    connects or is lost (``connected`` says which; ``lost_at`` is the
    monotonic time it went down, None while up).
    """

    def __init__(
        self,
        name: str,
        url: str = "",
        *,
        unix: str | None = None,
        on_event: Callable[[RemoteWorker, CallEvent], None] | None = None,
        on_state: Callable[[RemoteWorker], None] | None = None,
        timeout: float = RPC_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.unix = unix
        self.url = (url or "http://worker").rstrip("/")
        self.on_event = on_event
        self.on_state = on_state
        self.timeout = timeout
        self.info: WorkerInfo | None = None
        self.info_at = 0.0  # monotonic time of the last load update
        self.calls: set[str] = set()  # the worker's calls, as its events tell
        self.connected = False
        self.ever_connected = False
        self.lost_at: float | None = time.monotonic()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.Event()

    def __repr__(self) -> str:
        return f"RemoteWorker({self.name!r}, {self.unix or self.url})"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            conn: aiohttp.BaseConnector
            if self.unix:
                conn = aiohttp.UnixConnector(path=self.unix)
            else:
                conn = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(
                connector=conn, timeout=aiohttp.ClientTimeout(total=self.timeout), json_serialize=json.dumps
            )
        return self._session

    async def start(self) -> None:
        """Open the events socket in the background (reconnecting until :meth:`close`)."""
        if self._task is None:
            self._task = asyncio.create_task(self._event_loop(), name=f"pool-events-{self.name}")

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first.wait(), timeout)
        return self.connected

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- events socket -------------------------------------------------------
    async def _event_loop(self) -> None:
        delay = 0.1
        while True:
            try:
                async with self._client().ws_connect(
                    f"{self.url}{PREFIX}/events", heartbeat=WS_HEARTBEAT_S, timeout=aiohttp.ClientWSTimeout(ws_close=2.0)
                ) as ws:
                    delay = 0.1
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            self._on_message(json.loads(msg.data))
                        elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                            break
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError, DispatchError) as e:
                log.debug("worker %s events socket: %s", self.name, e)
            self._set_connected(False)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _set_connected(self, up: bool) -> None:
        if up == self.connected:
            return
        self.connected = up
        self.lost_at = None if up else time.monotonic()
        if up:
            self.ever_connected = True
            self._first.set()
            log.info("worker %s connected (%s)", self.name, self.unix or self.url)
        else:
            log.warning("worker %s: events socket lost", self.name)
        if self.on_state is not None:
            self.on_state(self)

    def _on_message(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        if kind in ("hello", "load"):
            self.info = _build(WorkerInfo, data.get("worker"))
            self.info_at = time.monotonic()
            if kind == "hello":
                self.calls = {str(c) for c in data.get("calls") or []}
                self._set_connected(True)
            return
        event = event_from_json(data)
        if event is None:
            log.debug("worker %s: unknown event %r", self.name, kind)
            return
        if isinstance(event, CallEnded):
            self.calls.discard(event.call_id)
        if self.on_event is not None:
            self.on_event(self, event)

    # -- RPC -------------------------------------------------------------------
    async def rpc(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload`` to ``method``; raises the worker's DispatchError or WorkerUnavailable."""
        try:
            async with self._client().post(f"{self.url}{PREFIX}/{method}", json=payload) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                if not isinstance(body, dict):
                    raise WorkerUnavailable(f"worker {self.name}: bad answer to {method} ({resp.status})", retry_after=1)
                if resp.status != 200:
                    raise error_from_status(resp.status, str(body.get("error") or "error"), body.get("retry_after"))
                return body
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise WorkerUnavailable(f"worker {self.name} unavailable: {type(e).__name__}", retry_after=1) from e

    async def offer(self, req: OfferRequest) -> OfferAnswer:
        answer: OfferAnswer = _build(OfferAnswer, await self.rpc("offer", asdict(req)))
        self.calls.add(answer.pc_id)
        return answer

    async def add_candidates(
        self, pc_id: str, candidates: list[IceCandidateInit], key: d.CallKey | None = None
    ) -> None:
        payload = {"pc_id": pc_id, "candidates": [asdict(c) for c in candidates]}
        await self.rpc("add_candidates", {**payload, "key": asdict(key)} if key is not None else payload)

    async def hangup(self, call_id: str, reason: str = "hangup", key: d.CallKey | None = None) -> None:
        payload = {"call_id": call_id, "reason": reason}
        await self.rpc("hangup", {**payload, "key": asdict(key)} if key is not None else payload)

    async def open_media(self, req: MediaRequest) -> MediaAnswer:
        answer: MediaAnswer = _build(MediaAnswer, await self.rpc("open_media", asdict(req)))
        self.calls.add(req.call_id)
        return answer

    async def start_media(self, call_id: str) -> None:
        await self.rpc("start_media", {"call_id": call_id})

    async def reoffer(self, call_id: str, sdp: str) -> str:
        return str((await self.rpc("reoffer", {"call_id": call_id, "sdp": sdp}))["sdp"])

    async def set_answer(self, call_id: str, sdp: str) -> None:
        await self.rpc("set_answer", {"call_id": call_id, "sdp": sdp})

    async def dtmf(self, call_id: str, digit: str) -> None:
        await self.rpc("dtmf", {"call_id": call_id, "digit": digit})

    async def transfer(self, call_id: str, target: str, reason: str = "", key: d.CallKey | None = None
                       ) -> d.TransferResult:
        payload: dict[str, Any] = {"call_id": call_id, "target": target, "reason": reason}
        if key is not None:
            payload["key"] = asdict(key)
        result: d.TransferResult = _build(d.TransferResult, await self.rpc("transfer", payload))
        return result

    async def transfer_done(self, call_id: str, request_id: str, result: d.TransferResult) -> None:
        await self.rpc("transfer_done", {"call_id": call_id, "request_id": request_id, "result": asdict(result)})

    async def fetch_info(self) -> WorkerInfo:
        body = await self.rpc("info", {})
        self.info = _build(WorkerInfo, body.get("worker"))
        self.info_at = time.monotonic()
        return self.info
