"""Access control (shared/DESIGN.md section 7): tokens, call ownership, CORS and origins, log hygiene.

Real servers on loopback and real aiortc callers; tokens minted with the same code as ``v2v token``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from aiohttp import ClientSession, WSServerHandshakeError, web

from tests import pool_util
from tests.conftest import load_wav
from tests.signaling_util import metric_value, running_server, wait_until
from v2v.signaling import cli
from v2v.signaling.app import create_app
from v2v.signaling.auth import AuthError, OriginPolicy, mint_token, redact, verify_token
from v2v.signaling.client import Caller
from v2v.signaling.config import ServerConfig
from v2v.signaling.logs import setup_logging
from v2v.signaling.pool.registry import RedisRegistry

pytestmark = pytest.mark.timeout(90)

SECRET = "test-secret-0123456789-abcdefghijklmnop"  # >= 32 bytes (RFC 7518 3.2)
OTHER = "another-secret-0123456789-abcdefghijklm"


async def real_offer() -> dict[str, Any]:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return {"sdp": sdp, "type": "offer"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def error_of(resp: Any, status: int) -> str:
    assert resp.status == status, (resp.status, await resp.text())
    body = await resp.json()
    assert isinstance(body["error"], str) and body["error"]
    return str(body["error"])


# -- tokens ----------------------------------------------------------------------------


def test_token_claims_and_refusals() -> None:
    now = time.time()
    claims = verify_token(SECRET, mint_token(SECRET, 60, subject="alice", profile="echo"))
    assert (claims.subject, claims.profile) == ("alice", "echo")
    assert verify_token(SECRET, mint_token(SECRET, 60)).subject == ""
    refused = {
        "missing": None,
        "malformed": "not.a.jwt",
        "bad signature": mint_token(OTHER, 60, subject="alice"),
        "expired": mint_token(SECRET, 10, subject="alice", now=now - 3600),
        "no exp": jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),
        "alg none": jwt.encode({"sub": "alice", "exp": int(now) + 60}, None, algorithm="none"),
        "sub not a string": jwt.encode({"sub": 5, "exp": int(now) + 60}, SECRET, algorithm="HS256"),
    }
    messages = {}
    for what, token in refused.items():
        with pytest.raises(AuthError) as err:
            verify_token(SECRET, token)
        messages[what] = err.value.message
        assert token is None or token not in err.value.message
    assert "expired" in messages["expired"] and "signature" in messages["bad signature"]
    assert "missing" in messages["missing"] and "exp" in messages["no exp"]
    with pytest.raises(ValueError):
        mint_token("short", 60)
    with pytest.raises(ValueError):
        ServerConfig(auth_secret="short").validate()


def test_v2v_token_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["token", "--secret", SECRET, "--ttl", "120", "--sub", "bob", "--profile", "echo"]) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "bob" and claims["profile"] == "echo"
    assert 115 <= claims["exp"] - time.time() <= 121
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    assert "--auth-secret" in help_text.getvalue() and "V2V_AUTH_SECRET" in help_text.getvalue()
    assert "--cors-origin" in help_text.getvalue() and "--connect-timeout" in help_text.getvalue()


async def test_api_needs_a_valid_token_and_nothing_starts_without_one() -> None:
    async with running_server(auth_secret=SECRET) as server, ClientSession() as http:
        offer = await real_offer()
        bad = {
            "none": {},
            "not bearer": {"Authorization": "Basic dXNlcjpwYXNz"},
            "malformed": bearer("garbage"),
            "bad signature": bearer(mint_token(OTHER, 60)),
            "expired": bearer(mint_token(SECRET, 10, now=time.time() - 600)),
        }
        for what, headers in bad.items():
            async with http.post(server.offer_url, json=offer, headers=headers) as r:
                await error_of(r, 401)
                assert r.headers["WWW-Authenticate"].startswith("Bearer"), what
            async with http.patch(server.offer_url, json={"pc_id": "x", "candidates": []}, headers=headers) as r:
                await error_of(r, 401)
            async with http.delete(server.offer_url + "/x", headers=headers) as r:
                await error_of(r, 401)
            async with http.get(server.url + "api/workers", headers=headers) as r:
                await error_of(r, 401)
        assert server.manager.active_calls() == 0 and server.host.webrtc.open_peer_connections == 0
        # health, readiness and metrics stay open, and show no token
        token = mint_token(SECRET, 60, subject="alice")
        for path in ("healthz", "readyz", "metrics"):
            async with http.get(server.url + path) as r:
                assert r.status == 200 and token not in await r.text() and SECRET not in await r.text()
        async with http.get(server.url + "metrics") as r:
            assert metric_value(await r.text(), "v2v_http_errors_total", {"status": "401"}) == 4 * len(bad)
        # a valid token in the header, or in ?token= (where a browser cannot set headers)
        async with http.get(server.url + "api/workers", headers=bearer(token)) as r:
            assert r.status == 200
        async with http.get(server.url + f"api/workers?token={token}") as r:
            assert r.status == 200
        caller = Caller(server.url, token=token)
        try:
            await caller.connect()
            call = server.manager.get(caller.pc_id or "")
            assert call is not None and server.host.webrtc.get(call.call_id).key.owner == "alice"  # type: ignore[union-attr]
            assert await caller.hangup() == 200
        finally:
            await caller.close()


async def test_a_call_belongs_to_its_token_subject() -> None:
    async with running_server(auth_secret=SECRET) as server, ClientSession() as http:
        alice, mallory = mint_token(SECRET, 60, subject="alice"), mint_token(SECRET, 60, subject="mallory")
        caller = Caller(server.url, token=alice)
        try:
            await caller.connect()
            pc_id = caller.pc_id
            assert pc_id is not None
            wc = server.host.webrtc.get(pc_id)
            assert wc is not None
            pc_before = wc.pc
            cand = {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", "sdp_mid": "0",
                    "sdp_mline_index": 0}
            async with http.patch(server.offer_url, json={"pc_id": pc_id, "candidates": [cand]},
                                  headers=bearer(mallory)) as r:
                await error_of(r, 403)
            async with http.post(server.offer_url, json={**await real_offer(), "pc_id": pc_id, "restart_pc": True},
                                 headers=bearer(mallory)) as r:
                await error_of(r, 403)
            async with http.post(server.offer_url, json={**await real_offer(), "pc_id": pc_id},
                                 headers=bearer(mallory)) as r:
                await error_of(r, 403)
            async with http.delete(f"{server.offer_url}/{pc_id}", headers=bearer(mallory)) as r:
                await error_of(r, 403)
            # the victim's call is untouched: same peer connection, still connected, audio flows
            assert wc.pc is pc_before and server.manager.active_calls() == 1
            pcm, _ = load_wav("hello_48k.wav")
            caller.play(pcm)
            await asyncio.wait_for(caller.received.first_loud.wait(), 8)
            # its creator renegotiates, restarts and hangs up
            await caller.renegotiate(restart_pc=True)
            assert server.host.webrtc.get(pc_id) is wc and wc.pc is not pc_before
            assert await caller.hangup() == 200
        finally:
            await caller.close()


async def test_pc_id_is_unguessable_and_never_logged_in_full() -> None:
    stream = io.StringIO()
    saved = {n: (lg.handlers[:], lg.propagate, lg.level) for n in ("v2v", "aiohttp.server", "aiohttp.web")
             for lg in [logging.getLogger(n)]}
    setup_logging("text", "debug", stream)
    try:
        async with running_server() as server:
            caller = Caller(server.url)
            try:
                await caller.connect()
                pc_id = caller.pc_id or ""
                assert len(pc_id) == 3 + 32 and int(pc_id[3:], 16) >= 0
                assert await caller.hangup() == 200
                await wait_until(lambda: server.manager.active_calls() == 0, 5, "the call's end")
            finally:
                await caller.close()
    finally:
        for name, (handlers, propagate, level) in saved.items():  # as before: other tests' caplog
            lg = logging.getLogger(name)
            lg.handlers[:], lg.propagate = handlers, propagate
            lg.setLevel(level)
    text = stream.getvalue()
    assert pc_id[:11] in text and pc_id not in text
    assert redact(f"x {pc_id} y") == f"x {pc_id[:11]}... y"


async def test_token_profile_pins_the_call() -> None:
    async with running_server(auth_secret=SECRET, profiles={"support": "echo"}) as server, \
            ClientSession() as http:
        token = mint_token(SECRET, 60, subject="a", profile="support")
        body = {**await real_offer(), "requestData": {"profile": "sales"}}
        async with http.post(server.offer_url, json=body, headers=bearer(token)) as r:
            assert "support" in await error_of(r, 403)
        assert server.manager.active_calls() == 0
        caller = Caller(server.url, token=token)  # no requestData: the token's profile
        try:
            await caller.connect()
            call = server.manager.get(caller.pc_id or "")
            assert call is not None and call.profile == "support"
        finally:
            await caller.hangup()
            await caller.close()


# -- origins -----------------------------------------------------------------------------


def test_origin_policy() -> None:
    same = OriginPolicy.parse([])
    assert same.admits(None, "v2v.example")  # not a browser's cross-origin request
    assert same.admits("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert same.admits("https://v2v.example", "v2v.example")  # behind a TLS proxy that keeps Host
    assert not same.admits("https://v2v.example", "v2v.example:8080")
    assert not same.admits("http://evil.example", "127.0.0.1:8080")
    assert not same.admits("null", "127.0.0.1:8080")
    assert same.allow_header("http://127.0.0.1:8080") is None  # same origin needs no CORS header
    listed = OriginPolicy.parse(["https://app.example", "http://localhost:3000/"])
    assert listed.admits("http://localhost:3000", "v2v.example")
    assert listed.allow_header("https://APP.example") == "https://APP.example"
    assert listed.allow_header("https://other.example") is None
    anyone = OriginPolicy.parse(["*"])
    assert anyone.admits("http://evil.example", "x") and anyone.allow_header("http://evil.example") == "*"


async def test_cross_origin_requests_start_nothing() -> None:
    async with running_server(cors_origin=["https://app.example"]) as server, ClientSession() as http:
        offer = await real_offer()
        import json

        # the "simple" cross-origin POST a foreign page can send without a preflight
        async with http.post(server.offer_url, data=json.dumps(offer),
                             headers={"Origin": "http://evil.example", "Content-Type": "text/plain"}) as r:
            await error_of(r, 403)
            assert "Access-Control-Allow-Origin" not in r.headers
        async with http.delete(server.offer_url + "/pc-x", headers={"Origin": "http://evil.example"}) as r:
            await error_of(r, 403)
        async with http.options(server.offer_url, headers={"Origin": "http://evil.example",
                                                            "Access-Control-Request-Method": "POST"}) as r:
            assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
        assert server.manager.active_calls() == 0 and server.host.webrtc.open_peer_connections == 0
        # a listed origin: preflight and answer carry its own origin
        async with http.options(server.offer_url, headers={"Origin": "https://app.example",
                                                            "Access-Control-Request-Method": "POST"}) as r:
            assert r.status == 204 and "Authorization" in r.headers["Access-Control-Allow-Headers"]
        async with http.get(server.url + "api/workers", headers={"Origin": "https://app.example"}) as r:
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert r.headers["Vary"] == "Origin"
        # this server's own page (same origin) needs no listing
        host = server.url.split("/")[2]
        async with http.get(server.url + "api/workers", headers={"Origin": f"http://{host}"}) as r:
            assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers


@contextlib.asynccontextmanager
async def sip_app(**overrides: Any) -> AsyncIterator[str]:
    cfg = ServerConfig(model="echo", host="127.0.0.1", port=0, **overrides)
    runner = web.AppRunner(create_app(cfg, sip=True), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_sip_websocket_refuses_foreign_origins_and_needs_a_token() -> None:
    async with sip_app(auth_secret=SECRET) as hostport, ClientSession() as http:
        url = f"http://{hostport}/sip"
        token = mint_token(SECRET, 60, subject="phone")
        with pytest.raises(WSServerHandshakeError) as err:
            await http.ws_connect(f"{url}?token={token}", protocols=("sip",),
                                  headers={"Origin": "http://evil.example"})
        assert err.value.status == 403
        with pytest.raises(WSServerHandshakeError) as err:
            await http.ws_connect(url, protocols=("sip",), headers={"Origin": f"http://{hostport}"})
        assert err.value.status == 401
        ws = await http.ws_connect(f"{url}?token={token}", protocols=("sip",),
                                   headers={"Origin": f"http://{hostport}"})
        assert ws.protocol == "sip"
        await ws.close()


# -- through a worker pool ---------------------------------------------------------------

redis_server = pool_util.redis_server  # the fixture


async def test_ownership_holds_through_a_pool_node(redis_server: pool_util.RedisServer) -> None:
    async with (
        pool_util.running_worker(redis_server.url, name="wa") as worker,
        pool_util.running_node(RedisRegistry(redis_server.url), auth_secret=SECRET) as node,
        ClientSession() as http,
    ):
        alice, mallory = mint_token(SECRET, 60, subject="alice"), mint_token(SECRET, 60, subject="mallory")
        async with http.post(node.offer_url, json=await real_offer()) as r:
            await error_of(r, 401)
        caller = Caller(node.url, token=alice)
        try:
            await caller.connect()
            pc_id = caller.pc_id
            assert worker.host.active_calls() == 1
            async with http.delete(f"{node.offer_url}/{pc_id}", headers=bearer(mallory)) as r:
                await error_of(r, 403)  # the worker's refusal, relayed with its status
            async with http.post(node.offer_url, json={**await real_offer(), "pc_id": pc_id, "restart_pc": True},
                                 headers=bearer(mallory)) as r:
                await error_of(r, 403)
            assert worker.host.active_calls() == 1
            assert await caller.hangup() == 200
            await wait_until(lambda: worker.host.active_calls() == 0, 5, "the call's end")
        finally:
            await caller.close()
