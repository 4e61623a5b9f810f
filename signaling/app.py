"""The aiohttp application: offer/answer, ICE PATCH, hang-up, page, health, metrics.

``create_app(config)`` builds the app around a
:class:`~v2v.signaling.dispatch.Dispatcher`: the in-process
:class:`~v2v.signaling.host.CallHost` unless one is given (a worker pool's
dispatcher on a signaling node). SIP (``GET /sip`` and, with ``--sip-port``,
UDP/TCP) is part of every app unless ``sip=False``. Every error is a
JSON ``{"error": ...}`` with a 4xx status (503 + Retry-After past
``--max-calls``); malformed input never reaches a 500.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web

from .config import ServerConfig
from .dispatch import Dispatcher, DispatchError, IceCandidateInit, OfferRequest
from .host import CallHost
from .metrics import ServerMetrics
from .sip.server import setup_app as setup_sip

log = logging.getLogger("v2v.http")

CONFIG = web.AppKey("v2v_config", ServerConfig)
DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("v2v_dispatcher")
HOST = web.AppKey("v2v_host", CallHost)  # only when the calls run in this process
METRICS = web.AppKey("v2v_metrics", ServerMetrics)


def static_dir() -> Path | None:
    """The installed ``static`` package (works for editable and regular installs)."""
    try:
        spec = importlib.util.find_spec("v2v.static")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization",
    "Access-Control-Max-Age": "600",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.method == "OPTIONS" and request.path.startswith("/api/"):
        return web.Response(status=204, headers=CORS_HEADERS)
    try:
        resp = await handler(request)
    except DispatchError as e:
        headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
        resp = _error(e.status, e.message, headers)
    except web.HTTPRequestEntityTooLarge:
        resp = _error(413, f"request body too large (max {request.app[CONFIG].max_body} bytes)")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        resp = _error(e.status, e.reason or "error")
        for k in ("Allow", "Retry-After"):
            if k in e.headers:
                resp.headers[k] = e.headers[k]
    except Exception:
        log.exception("unexpected error", extra={"path": request.path, "method": request.method})
        resp = _error(500, "internal error")
    if request.path.startswith("/api/"):
        resp.headers.update({k: v for k, v in CORS_HEADERS.items() if k.startswith("Access-Control-Allow-Origin")})
    return resp


async def _json_body(request: web.Request) -> dict[str, Any]:
    limit = request.app[CONFIG].max_body
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    raw = await request.read()  # client_max_size raises 413 past the limit
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DispatchError("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise DispatchError("body must be a JSON object")
    return body


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, (tuple, list)) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(request.remote or "")


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    v = body.get(key)
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise DispatchError(f"'{key}' must be a string")
    return v


async def post_offer(request: web.Request) -> web.Response:
    body = await _json_body(request)
    sdp, type_ = body.get("sdp"), body.get("type")
    if not isinstance(sdp, str) or not sdp.strip():
        raise DispatchError("'sdp' must be a non-empty string")
    if type_ != "offer":
        raise DispatchError("'type' must be \"offer\"")
    restart = body.get("restart_pc", False)
    if restart is None:
        restart = False
    if not isinstance(restart, bool):
        raise DispatchError("'restart_pc' must be a boolean")
    req = OfferRequest(
        sdp=sdp,
        type=type_,
        pc_id=_opt_str(body, "pc_id"),
        restart_pc=restart,
        request_data=body.get("requestData", body.get("request_data")),
        peer=_peer(request),
    )
    answer = await request.app[DISPATCHER].offer(req)
    return web.json_response(answer.to_json())


def _candidate(c: Any) -> IceCandidateInit:
    if not isinstance(c, dict):
        raise DispatchError("each candidate must be an object")
    cand = c.get("candidate")
    if cand is None:
        cand = ""
    if not isinstance(cand, str):
        raise DispatchError("'candidate' must be a string")
    mid = c.get("sdp_mid", c.get("sdpMid"))
    idx = c.get("sdp_mline_index", c.get("sdpMLineIndex"))
    if mid is not None and not isinstance(mid, (str, int)):
        raise DispatchError("'sdp_mid' must be a string")
    if idx is not None and (not isinstance(idx, int) or isinstance(idx, bool) or idx < 0):
        raise DispatchError("'sdp_mline_index' must be a non-negative integer")
    return IceCandidateInit(cand, None if mid is None else str(mid), idx)


async def patch_offer(request: web.Request) -> web.Response:
    body = await _json_body(request)
    pc_id = _opt_str(body, "pc_id")
    if pc_id is None:
        raise DispatchError("'pc_id' is required")
    cands = body.get("candidates")
    if not isinstance(cands, list):
        raise DispatchError("'candidates' must be a list")
    await request.app[DISPATCHER].add_candidates(pc_id, [_candidate(c) for c in cands])
    return web.json_response({"status": "success"})


async def delete_offer(request: web.Request) -> web.Response:
    await request.app[DISPATCHER].hangup(request.match_info["pc_id"], "hangup")
    return web.json_response({"status": "success"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    reason = request.app[DISPATCHER].not_ready_reason()
    if reason:
        return _error(503, reason, {"Retry-After": "5"})
    return web.json_response({"status": "ready", "active_calls": request.app[DISPATCHER].active_calls()})


async def workers(request: web.Request) -> web.Response:
    rows = await request.app[DISPATCHER].workers()
    return web.json_response({"workers": [asdict(w) for w in rows]})


async def metrics_handler(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].render()
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = content_type
    return resp


async def index(request: web.Request) -> web.StreamResponse:
    d = static_dir()
    page = d / "index.html" if d else None
    if page is None or not page.is_file():
        return _error(404, "demo page not installed (static/index.html missing)")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


def create_app(
    config: ServerConfig | None = None,
    dispatcher: Dispatcher | None = None,
    *,
    metrics: ServerMetrics | None = None,
    sip: bool = True,
) -> web.Application:
    """The signaling app around ``dispatcher`` (default: a :class:`CallHost` in this process).

    ``metrics`` is what ``/metrics`` renders: the host's own when the calls run
    here, otherwise the caller's (a pool dispatcher's).
    """
    config = config or ServerConfig()
    app = web.Application(middlewares=[error_middleware], client_max_size=config.max_body)
    if dispatcher is None:
        host = CallHost(config, metrics)
        app[HOST] = host
        dispatcher, metrics = host, host.metrics
    app[CONFIG] = config
    app[DISPATCHER] = dispatcher
    app[METRICS] = metrics or ServerMetrics()
    app.router.add_get("/", index)
    app.router.add_post("/api/offer", post_offer)
    app.router.add_patch("/api/offer", patch_offer)
    app.router.add_delete("/api/offer/{pc_id}", delete_offer)
    app.router.add_get("/api/workers", workers)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    d = static_dir()
    if d is not None and d.is_dir():
        app.router.add_static("/static/", d, show_index=False, append_version=False)
    if sip:
        setup_sip(app, dispatcher, config)
    started = dispatcher

    async def on_startup(app: web.Application) -> None:
        await started.start()

    async def on_shutdown(app: web.Application) -> None:
        await started.close("shutdown")

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app
