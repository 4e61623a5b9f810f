"""The aiohttp application: offer/answer, ICE PATCH, hang-up, page, health, metrics.

``create_app(config)`` builds the app around a
:class:`~v2v.signaling.dispatch.Dispatcher`: the in-process
:class:`~v2v.signaling.host.CallHost` unless one is given (a worker pool's
dispatcher on a signaling node). SIP (``GET /sip`` and, with ``--sip-port``,
UDP/TCP) is part of every app unless ``sip=False``. Every error is a
JSON ``{"error": ...}`` with a 4xx status (503 + Retry-After past
``--max-calls``); malformed input never reaches a 500: it is one WARNING
line (the body truncated and escaped) and a count in ``v2v_http_errors_total``.

Access control (shared/DESIGN.md section 7, :mod:`.auth`): ``/api/*`` and
``/sip`` refuse a browser ``Origin`` that is neither this server nor listed in
``--cors-origin`` (403), and with ``--auth-secret`` need a token (401). A
call's ``pc_id`` is its creator's credential (unguessable, never logged in
full); with tokens, requests about a call also need its creator's subject
(:class:`~v2v.signaling.dispatch.CallKey`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web

from .auth import AuthError, OriginPolicy, TokenClaims, request_token, verify_token
from .config import ServerConfig
from .dispatch import CallKey, Dispatcher, DispatchError, Forbidden, IceCandidateInit, OfferRequest
from .host import CallHost
from .metrics import ServerMetrics
from .sip.server import setup_app as setup_sip

log = logging.getLogger("v2v.http")

CONFIG = web.AppKey("v2v_config", ServerConfig)
DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("v2v_dispatcher")
HOST = web.AppKey("v2v_host", CallHost)  # only when the calls run in this process
METRICS = web.AppKey("v2v_metrics", ServerMetrics)
ORIGINS = web.AppKey("v2v_origins", OriginPolicy)
CLAIMS = web.RequestKey("v2v_claims", TokenClaims)  # the verified token of a request
BODY = web.RequestKey("v2v_body", bytes)  # the raw body read, for the log line of a refused request
MAX_JSON_DEPTH = 16  # Pipecat's requestData is an application's small object
LOGGED_BODY = 200  # bytes of a refused body in its log line
GUARDED = ("/api/", "/sip")  # paths behind the origin check and the token


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


CORS_PREFLIGHT = {
    "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization",
    "Access-Control-Max-Age": "600",
}


def _guarded(path: str) -> bool:
    return path.startswith(GUARDED[0]) or path == GUARDED[1]


def _check_access(request: web.Request) -> web.StreamResponse | None:
    """The origin check and the token of a guarded path: a refusal, or None to go on."""
    origin = request.headers.get("Origin")
    policy = request.app[ORIGINS]
    if request.method == "OPTIONS":  # a CORS preflight: only listed origins get the headers
        if policy.allow_header(origin) is None:
            return _error(403, "origin not allowed (--cors-origin)")
        return web.Response(status=204, headers=CORS_PREFLIGHT)
    if not policy.admits(origin, request.host):
        return _error(403, "origin not allowed (--cors-origin)")
    secret = request.app[CONFIG].auth_secret
    if secret:
        try:
            token = request_token(request.headers.get("Authorization"), request.query.get("token"))
            request[CLAIMS] = verify_token(secret, token)
        except AuthError as e:
            return _error(401, e.message, {"WWW-Authenticate": 'Bearer realm="v2v"'})
    return None


def _log_refused(request: web.Request, resp: web.StreamResponse, message: str) -> None:
    """One WARNING line for a refused request: no traceback, the body truncated and escaped."""
    raw = request.get(BODY, b"")
    body = ascii(bytes(raw[:LOGGED_BODY]))[2:-1] + ("..." if len(raw) > LOGGED_BODY else "")
    log.warning("refused %s %s: %d %s; body (%d bytes): %s", request.method, request.path, resp.status,
                ascii(message[:LOGGED_BODY])[1:-1], len(raw), body)


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    guarded = _guarded(request.path)
    refused = _check_access(request) if guarded else None
    try:
        if refused is not None:
            resp = refused
        else:
            resp = await handler(request)
    except DispatchError as e:
        headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
        resp = _error(e.status, e.message, headers)
    except web.HTTPRequestEntityTooLarge:
        resp = _error(413, f"request body too large (max {request.app[CONFIG].max_body} bytes)")
    except web.RequestPayloadError:  # e.g. Content-Encoding: gzip on a body that is not gzip
        resp = _error(400, "the request body cannot be read (bad Content-Encoding or truncated)")
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
    if resp.status >= 400:
        await _settle_body(request, resp)
    if 400 <= resp.status < 500:
        request.app[METRICS].http_errors.labels(status=str(resp.status)).inc()
        if guarded and resp.status != 404 and isinstance(resp, web.Response):
            _log_refused(request, resp, _message(resp))
    allow = request.app[ORIGINS].allow_header(request.headers.get("Origin")) if guarded else None
    if allow is not None and not resp.prepared:
        resp.headers["Access-Control-Allow-Origin"] = allow
        resp.headers["Vary"] = "Origin"
    return resp


async def _settle_body(request: web.Request, resp: web.StreamResponse) -> None:
    """The body a refused request left unread: read it (at most --max-body) so that aiohttp's own
    lingering read cannot fail after the response; a body that cannot be decoded (a gzip that is not
    gzip) is dropped and the connection closed after the response."""
    if not request.body_exists or request.content.is_eof():
        return
    try:
        await request.read()
    except web.HTTPRequestEntityTooLarge:
        return  # aiohttp reads and drops the rest, as for any 413
    except web.RequestPayloadError:
        request.content.feed_eof()  # the parser has stopped: nothing more of it can be read
        resp.force_close()


def _message(resp: web.Response) -> str:
    try:
        body = json.loads(resp.body) if isinstance(resp.body, bytes) else {}
    except ValueError:
        return ""
    return str(body.get("error", "")) if isinstance(body, dict) else ""


def _too_deep(value: Any, limit: int) -> bool:
    """Is ``value`` (parsed JSON) nested deeper than ``limit``? Iterative: no recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


async def _json_body(request: web.Request) -> dict[str, Any]:
    limit = request.app[CONFIG].max_body
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    raw = await request.read()  # client_max_size raises 413 past the limit (also once decompressed)
    request[BODY] = raw
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DispatchError("body is not valid JSON") from None
    except RecursionError:
        raise DispatchError(f"JSON nested too deep (max {MAX_JSON_DEPTH})") from None
    if not isinstance(body, dict):
        raise DispatchError("body must be a JSON object")
    if _too_deep(body, MAX_JSON_DEPTH):
        raise DispatchError(f"JSON nested too deep (max {MAX_JSON_DEPTH})")
    return body


def _claims(request: web.Request) -> TokenClaims:
    return request.get(CLAIMS) or TokenClaims()


def _key(request: web.Request) -> CallKey:
    """What the request presents for a call it names: its token's subject ("" without tokens)."""
    return CallKey(_claims(request).subject)


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
    request_data = body.get("requestData", body.get("request_data"))
    claims = _claims(request)
    asked = request_data.get("profile") if isinstance(request_data, dict) else None
    if claims.profile and asked not in (None, "", claims.profile):
        raise Forbidden(f"the access token is for profile {claims.profile!r}")
    req = OfferRequest(
        sdp=sdp, type=type_, pc_id=_opt_str(body, "pc_id"), restart_pc=restart, request_data=request_data,
        peer=_peer(request), owner=claims.subject, profile=claims.profile,
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
    await request.app[DISPATCHER].add_candidates(pc_id, [_candidate(c) for c in cands], _key(request))
    return web.json_response({"status": "success"})


async def delete_offer(request: web.Request) -> web.Response:
    await request.app[DISPATCHER].hangup(request.match_info["pc_id"], "hangup", _key(request))
    return web.json_response({"status": "success"})


async def post_transfer(request: web.Request) -> web.Response:
    """``POST /api/calls/{call_id}/transfer`` ``{target, reason?}``: a blind transfer (SIP REFER) of the call's
    caller; 200 once accepted (the call then ends as ``transferred``), 409 with the reason when refused or
    impossible (a WebRTC caller), 403 for a target outside ``--transfer-targets``."""
    body = await _json_body(request)
    target = _opt_str(body, "target")
    if target is None:
        raise DispatchError("'target' is required")
    result = await request.app[DISPATCHER].transfer(
        request.match_info["call_id"], target, _opt_str(body, "reason") or "", _key(request))
    if not result.ok:
        return _error(409, result.detail, None) if not result.status else web.json_response(
            {"error": result.detail, "sip_status": result.status}, status=409)
    return web.json_response({"status": "transferred", "detail": result.detail, "sip_status": result.status})


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
    app[ORIGINS] = OriginPolicy.parse(config.cors_origin)
    app[DISPATCHER] = dispatcher
    app[METRICS] = metrics or ServerMetrics()
    app.router.add_get("/", index)
    app.router.add_post("/api/offer", post_offer)
    app.router.add_patch("/api/offer", patch_offer)
    app.router.add_delete("/api/offer/{pc_id}", delete_offer)
    app.router.add_get("/api/workers", workers)
    app.router.add_post("/api/calls/{call_id}/transfer", post_transfer)
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
