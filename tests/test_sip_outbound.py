"""Outbound calls through a trunk: v2v dials real sipp callees (answer, busy, no answer, digest)
and registers at a sipp registrar; POST /api/calls/dial, v2v_sip_dials_total, the call's media."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import socket
import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from tests.sip.harness import FIXTURES, HERE, Server, free_udp_port, running_server, wait_for
from tests.test_sip_baresip import Baresip, normalized_xcorr_peak
from tests.test_sip_sipp import Recorder
from tests.test_sip_tls_srtp import make_certs
from v2v.signaling.app import DISPATCHER, HOST
from v2v.signaling.auth import mint_token
from v2v.signaling.sip import uac
from v2v.signaling.sip.outbound import OUTBOUND_APP_KEY
from v2v.worker import events as ev
from v2v.worker.wavcall import read_wav, write_wav

ROOT = Path(__file__).resolve().parent.parent


class Uas:
    """One sipp process playing the callee (or registrar) of ``scenario`` on a free UDP port."""

    def __init__(self, tmp: Path, scenario: str, ip: str = "127.0.0.1", transport: str = "udp") -> None:
        self.dir = tmp
        self.ip = ip
        self.transport = transport
        for name in (scenario, "speech_8k.ulaw"):
            shutil.copy(HERE / name, tmp / name)
        self.scenario = scenario
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Uas:
        for _ in range(5):
            self.port = random.randrange(35000, 45000)
            media = self.port + 10000 if self.port % 2 == 0 else self.port + 10001
            self.proc = await asyncio.create_subprocess_exec(
                "sipp", "-sf", self.scenario, "-i", self.ip, "-p", str(self.port), "-mp", str(media),
                "-m", "1", "-nostdin", "-timeout", "60", "-trace_err", "-t", "t1" if self.transport == "tcp" else "u1",
                cwd=self.dir,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            try:  # a port taken (or a bad scenario) makes sipp exit at once
                await asyncio.wait_for(self.proc.wait(), 0.3)
            except TimeoutError:
                return self
            out, err = await self.proc.communicate()
            if b"bind" not in out + err:
                raise AssertionError(f"sipp exited: {out.decode()[-2000:]} {err.decode()[-2000:]}")
        raise AssertionError("sipp could not bind a port")

    async def result(self, timeout: float = 30.0) -> tuple[int, str]:
        assert self.proc is not None
        try:
            out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        except TimeoutError:
            self.proc.kill()
            out, err = await self.proc.communicate()
            raise AssertionError(f"sipp did not finish:\n{out.decode()[-3000:]}\n{err.decode()[-2000:]}") from None
        errors = "".join(p.read_text(errors="replace")[-2000:] for p in self.dir.glob("*_errors.log"))
        return self.proc.returncode or 0, out.decode("utf-8", "replace")[-3000:] + err.decode()[-2000:] + errors

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


async def dial(srv: Server, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.post(f"http://127.0.0.1:{srv.http_port}/api/calls/dial",
                                                    json=body, headers=headers) as r:
        return r.status, await r.json()


def trunk(uas: Uas, **kw: object) -> dict:
    tp = ";transport=tcp" if uas.transport == "tcp" else ""
    return {"sip_trunk": f"sip:127.0.0.1:{uas.port}{tp}", "sip_caller_id": "+15550001111", **kw}


async def test_dial_answered_model_heard_both_ways(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    uas = await Uas(tmp_path, "uas_answer.xml").start()
    try:
        async with running_server(**trunk(uas)) as srv:
            rec = Recorder(monkeypatch, srv.manager)
            status, out = await dial(srv, {"to": "sip:+15551234567@127.0.0.1", "profile": "echo"})
            assert status == 200, out
            assert out["outcome"] == "answered" and out["ringing"] is True, out
            assert out["call_id"].startswith("sip_udp-")
            assert srv.active("sip_udp") == 1
            rc, log = await uas.result()
            assert rc == 0, log  # the callee got our ACK, and our 200 to its BYE
            await wait_for(lambda: srv.active() == 0 and not srv.sip.core.dialogs, 2.0, "call ended by BYE")
            # the callee's speech reached the echo model, which answered it audibly
            assert rec.of(ev.UserStartedSpeaking) and rec.of(ev.UserStoppedSpeaking)
            assert rec.of(ev.BotStartedSpeaking), "the model's reply never became audible"
            assert [e.reason for e in rec.of(ev.CallEnded)] == ["hangup"]
            (m,) = rec.media
            assert m.rtp.codec.name == "PCMU"
            assert m.rtp.stats.packets_in > 250 and m.rtp.stats.packets_out > 250, m.rtp.stats
            assert srv.metric("v2v_sip_dials_total", outcome="answered") == 1
            assert srv.metric("v2v_calls_total", transport="sip_udp") == 1
    finally:
        uas.kill()


async def test_dial_answered_v2v_hangs_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With tokens: the dialer's subject (only) ends the call with DELETE /api/calls/{id}; v2v sends BYE."""
    secret = "s" * 32
    uas = await Uas(tmp_path, "uas_hangup_wait.xml").start()
    try:
        async with running_server(**trunk(uas), auth_secret=secret) as srv:
            rec = Recorder(monkeypatch, srv.manager)
            alice = {"Authorization": f"Bearer {mint_token(secret, subject='alice')}"}
            mallory = {"Authorization": f"Bearer {mint_token(secret, subject='mallory')}"}
            assert (await dial(srv, {"to": "+15551234567"}))[0] == 401  # no token: nothing dialled
            status, out = await dial(srv, {"to": "+15551234567"}, alice)  # a number: sip:+1555...@trunk
            assert status == 200 and out["outcome"] == "answered", out
            assert out["ringing"] is False  # answered at once
            url = f"http://127.0.0.1:{srv.http_port}/api/calls/{out['call_id']}"
            async with aiohttp.ClientSession() as s:
                for who, want in ((mallory, 404), (alice, 200)):
                    async with s.delete(url, headers=who) as r:
                        assert r.status == want, await r.text()
            rc, log = await uas.result()
            assert rc == 0, log  # our BYE reached the callee
            await wait_for(lambda: srv.active() == 0 and not srv.sip.core.dialogs, 2.0, "call over")
            (m,) = rec.media
            assert m.rtp.codec.name == "PCMA"  # the callee's answer chose it
            async with aiohttp.ClientSession() as s, s.delete(url, headers=alice) as r:
                assert r.status == 404  # over
    finally:
        uas.kill()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_dial_busy(tmp_path: Path, transport: str) -> None:
    uas = await Uas(tmp_path, "uas_busy.xml", transport=transport).start()
    try:
        async with running_server(**trunk(uas)) as srv:
            status, out = await dial(srv, {"to": "sip:+15551234567@127.0.0.1", "profile": "echo"})
            assert status == 502, out
            assert out["outcome"] == "busy" and out["sip_status"] == 486 and out["reason"] == "Busy Here", out
            rc, log = await uas.result()
            assert rc == 0, log  # the 486 was ACKed
            await wait_for(lambda: srv.active() == 0, 1.0, "no call left")
            assert srv.metric("v2v_sip_dials_total", outcome="busy") == 1
            assert srv.metric("v2v_sip_dials_total", outcome="answered") == 0
    finally:
        uas.kill()


async def test_dial_no_answer_cancelled(tmp_path: Path) -> None:
    uas = await Uas(tmp_path, "uas_noanswer.xml").start()
    try:
        async with running_server(**trunk(uas, sip_dial_timeout=1.5)) as srv:
            t0 = asyncio.get_running_loop().time()
            status, out = await dial(srv, {"to": "sip:+15551234567@127.0.0.1"})
            took = asyncio.get_running_loop().time() - t0
            assert status == 504, out
            assert out["outcome"] == "no-answer" and out["ringing"] is True and out["sip_status"] == 487, out
            assert 1.4 < took < 5.0, took
            rc, log = await uas.result()
            assert rc == 0, log  # CANCEL came, its 200 and the 487 were answered (ACK)
            assert srv.active() == 0
            assert srv.metric("v2v_sip_dials_total", outcome="no-answer") == 1
    finally:
        uas.kill()


@pytest.mark.parametrize("scenario", ["uas_auth.xml", "uas_auth407.xml"])
async def test_dial_digest_challenge_retried(tmp_path: Path, scenario: str) -> None:
    uas = await Uas(tmp_path, scenario).start()
    try:
        async with running_server(**trunk(uas, sip_trunk_user="trunkuser", sip_trunk_password="s3cret")) as srv:
            status, out = await dial(srv, {"to": "sip:+15551234567@127.0.0.1", "profile": "echo"})
            assert status == 200 and out["outcome"] == "answered", out
            rc, log = await uas.result()
            assert rc == 0, log  # the credentials were right, the call ended by the callee's BYE
            await wait_for(lambda: srv.active() == 0, 2.0, "call over")
    finally:
        uas.kill()


async def test_dial_wrong_password_fails(tmp_path: Path) -> None:
    uas = await Uas(tmp_path, "uas_auth.xml").start()
    try:
        async with running_server(**trunk(uas, sip_trunk_user="trunkuser", sip_trunk_password="wrong")) as srv:
            status, out = await dial(srv, {"to": "sip:+15551234567@127.0.0.1"})
            assert status == 502 and out["outcome"] == "rejected" and out["sip_status"] == 403, out
            await uas.result()
    finally:
        uas.kill()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_register_with_digest_and_unregister(tmp_path: Path, transport: str) -> None:
    uas = await Uas(tmp_path, "uas_registrar.xml", transport=transport).start()
    try:
        async with running_server(**trunk(uas, sip_trunk_user="trunkuser", sip_trunk_password="s3cret",
                                          sip_register=True)) as srv:
            reg = srv.app[OUTBOUND_APP_KEY].registration
            assert reg is not None
            await wait_for(lambda: reg.registered, 5.0, "registered")
            assert reg.granted == 60 and reg.last_status == 200
            assert srv.metric("v2v_sip_registered") == 1
        # the server has shut down: its unREGISTER (Expires: 0) was the registrar's last message
        rc, log = await uas.result(10)
        assert rc == 0, log
        assert not reg.registered
    finally:
        uas.kill()


async def test_dial_endpoint_refusals(tmp_path: Path) -> None:
    async with running_server() as srv:  # no trunk
        status, out = await dial(srv, {"to": "+15551234567"})
        assert status == 404 and "--sip-trunk" in out["error"]
    async with running_server(sip_trunk="sip:127.0.0.1:9") as srv:
        for body, want in (({}, "'to'"), ({"to": 5}, "'to'"), ({"to": "+1", "profile": "nope"}, "unknown profile"),
                           ({"to": "+1", "timeout": -1}, "'timeout'"), ({"to": "a b"}, "'to'")):
            status, out = await dial(srv, body)
            assert status == 400 and want in out["error"], (body, out)
        assert srv.metric("v2v_sip_dials_total") == 0


async def _v2v_dial(srv: Server, *args: str) -> tuple[int, dict]:
    """``v2v dial`` as a real process against the test server."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "v2v.signaling.cli", "dial", *args, "--server", f"http://127.0.0.1:{srv.http_port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert out, err.decode()
    return proc.returncode or 0, json.loads(out)


async def test_v2v_dial_cli_busy_and_answered(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "answer").mkdir()
    uas = await Uas(tmp_path / "busy", "uas_busy.xml").start()
    try:
        async with running_server(**trunk(uas)) as srv:
            rc, out = await _v2v_dial(srv, "sip:+15551234567@127.0.0.1", "--profile", "echo")
            assert rc == 3 and out["outcome"] == "busy" and out["http_status"] == 502, out
            assert (await uas.result())[0] == 0
    finally:
        uas.kill()
    uas = await Uas(tmp_path / "answer", "uas_hangup_wait.xml").start()
    try:
        async with running_server(**trunk(uas)) as srv:
            rc, out = await _v2v_dial(srv, "tel:+15551234567", "--profile", "echo")
            assert rc == 0 and out["outcome"] == "answered" and out["http_status"] == 200, out
            assert srv.active("sip_udp") == 1
            await srv.app[DISPATCHER].hangup(out["call_id"])
            assert (await uas.result())[0] == 0
    finally:
        uas.kill()


async def test_dial_baresip_auto_answer_hears_its_echo(tmp_path: Path) -> None:
    """baresip as the callee (answermode=auto): it hears its own speech back from the echo model."""
    speech, rate = read_wav(FIXTURES / "speech_8k.wav")
    lead, tail = 4000, 7 * 8000  # 0.5 s, then 7 s of silence while the echo plays
    write_wav(tmp_path / "mic.wav", np.concatenate(
        [np.zeros(lead, np.int16), speech.astype(np.int16), np.zeros(tail, np.int16)]), 8000)
    bs = Baresip(tmp_path, tmp_path / "mic.wav")
    sip_port = free_udp_port()
    cfg = tmp_path / "config"
    cfg.write_text(cfg.read_text().replace("127.0.0.1:0", f"127.0.0.1:{sip_port}", 1))
    (tmp_path / "accounts").write_text(f"<sip:callee@127.0.0.1:{sip_port}>;regint=0;answermode=auto;"
                                       "audio_codecs=PCMU\n")
    await bs.start()
    try:
        async with running_server(sip_trunk=f"127.0.0.1:{sip_port}") as srv:
            status, out = await dial(srv, {"to": f"sip:callee@127.0.0.1:{sip_port}", "profile": "echo"})
            assert status == 200 and out["outcome"] == "answered", (out, "\n".join(bs.log[-30:]))
            await bs.wait_event("CALL_ESTABLISHED", 5)
            # the microphone file ends after ~11.3 s: baresip hangs up (its BYE)
            await bs.wait_event("CALL_CLOSED", 20)
            await wait_for(lambda: srv.active() == 0, 2.0, "the call to end")
            assert srv.metric("v2v_calls_total", transport="sip_udp", outcome="hangup") == 1
    finally:
        await bs.stop()
    (dec,) = list(bs.rec.glob("dump-*-dec.wav"))
    heard, _ = read_wav(dec)
    score, _lag = normalized_xcorr_peak(speech.astype(np.int16), heard)
    assert score > 0.6, f"the callee did not hear its echo (score {score:.2f})"


async def test_register_refreshed_before_expiry(tmp_path: Path) -> None:
    uas = await Uas(tmp_path, "uas_registrar_refresh.xml").start()
    try:
        async with running_server(**trunk(uas, sip_trunk_user="trunkuser", sip_trunk_password="s3cret",
                                          sip_register=True)) as srv:
            reg = srv.app[OUTBOUND_APP_KEY].registration
            assert reg is not None
            await wait_for(lambda: reg.registered and reg.granted == 10, 5.0, "registered for 10 s")
            t0 = asyncio.get_running_loop().time()
            await wait_for(lambda: reg.successes >= 2, 9.0, "the refresh accepted")  # at half of 10 s
            assert 3.0 < asyncio.get_running_loop().time() - t0 < 9.0
            assert reg.registered and reg.last_status == 200
        rc, log = await uas.result(10)
        assert rc == 0, log  # the refresh carried credentials, the unREGISTER came last
    finally:
        uas.kill()


async def test_dial_callee_holds_and_hangs_up(tmp_path: Path) -> None:
    """The callee's re-INVITE (hold) and BYE reach the dialog v2v made (the core's in-dialog handling)."""
    uas = await Uas(tmp_path, "uas_reinvite.xml").start()
    try:
        async with running_server(**trunk(uas)) as srv:
            status, out = await dial(srv, {"to": "+15551234567", "profile": "echo"})
            assert status == 200 and out["outcome"] == "answered", out
            rc, log = await uas.result()
            assert rc == 0, log  # our 200 to the re-INVITE said recvonly; our 200 answered its BYE
            await wait_for(lambda: srv.active() == 0 and not srv.sip.core.dialogs, 2.0, "call over")
    finally:
        uas.kill()


async def test_dial_silent_trunk_fails_after_timer_b(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trunk that never answers: the INVITE is retransmitted (Timer A) until Timer B, outcome failed."""
    monkeypatch.setattr(uac, "TIMER_B", 2.0)  # 64*T1 = 32 s in production
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.setblocking(False)
        async with running_server(sip_trunk=f"127.0.0.1:{silent.getsockname()[1]}") as srv:
            status, out = await dial(srv, {"to": "+15551234567"})
            assert status == 504 and out["outcome"] == "failed", out
            assert out["detail"] == "no response from the trunk" and 1900 < out["elapsed_ms"] < 4000, out
            got = []
            while True:
                try:
                    got.append(silent.recv(65536))
                except BlockingIOError:
                    break
            assert len(got) >= 3 and all(g.startswith(b"INVITE ") for g in got)  # sent at 0, 0.5 and 1.5 s
            assert len(set(got)) == 1  # retransmissions are the same request
            assert srv.active() == 0  # the call's media was released
            assert srv.metric("v2v_sip_dials_total", outcome="failed") == 1


@pytest.mark.parametrize("server_host,callee_ip", [("::", "127.0.0.1"), ("::1", "::1")])
async def test_dial_over_ipv6_and_dual_stack(tmp_path: Path, server_host: str, callee_ip: str) -> None:
    """A dual-stack server (--host ::) dials an IPv4 trunk; an IPv6 server dials an IPv6 trunk."""
    uas = await Uas(tmp_path, "uas_hangup_wait.xml", ip=callee_ip).start()
    host = f"[{callee_ip}]" if ":" in callee_ip else callee_ip
    try:
        async with running_server(host=server_host, sip_trunk=f"{host}:{uas.port}") as srv:
            status, out = await dial(srv, {"to": "+15551234567", "profile": "echo"})
            assert status == 200 and out["outcome"] == "answered", out
            await srv.app[DISPATCHER].hangup(out["call_id"])
            rc, log = await uas.result()
            assert rc == 0, log  # the callee got our INVITE, ACK and BYE on its address family
            await wait_for(lambda: srv.active() == 0 and not srv.sip.core.dialogs, 2.0, "call over")
    finally:
        uas.kill()


async def test_dial_over_tcp_answered_then_our_bye(tmp_path: Path) -> None:
    """A TCP trunk: one connection carries the INVITE, the ACK and our BYE (no retransmissions)."""
    uas = await Uas(tmp_path, "uas_hangup_wait.xml", transport="tcp").start()
    try:
        async with running_server(**trunk(uas)) as srv:
            status, out = await dial(srv, {"to": "+15551234567", "profile": "echo"})
            assert status == 200 and out["outcome"] == "answered", out
            assert srv.active("sip_tcp") == 1  # the call is labelled by its signalling transport
            await srv.app[DISPATCHER].hangup(out["call_id"])
            rc, log = await uas.result()
            assert rc == 0, log
            await wait_for(lambda: srv.active() == 0 and not srv.sip.core.dialogs, 2.0, "call over")
    finally:
        uas.kill()


async def test_dial_over_tls_with_srtp(monkeypatch: pytest.MonkeyPatch) -> None:
    """v2v dials v2v through a TLS trunk (sips:) with SRTP required: the callee's certificate is checked
    (SSL_CERT_FILE trusts the test CA), SRTP flows both ways, our BYE crosses the TLS connection."""
    ca, cert, key = await make_certs()
    async with running_server(sip_tls_port=0, sip_tls_cert=str(cert), sip_tls_key=str(key)) as callee:
        assert callee.sip.tls is not None
        port = callee.sip.tls.port
        async with running_server(sip_trunk=f"sips:127.0.0.1:{port}", sip_srtp="require") as srv:
            status, out = await dial(srv, {"to": f"sip:echo@127.0.0.1:{port}"})
            assert status == 502 and "CERTIFICATE_VERIFY_FAILED" in out["detail"], out  # CA not trusted yet
            monkeypatch.setenv("SSL_CERT_FILE", str(ca))
            status, out = await dial(srv, {"to": f"sip:echo@127.0.0.1:{port}", "profile": "echo"})
            assert status == 200 and out["outcome"] == "answered", out
            assert srv.active("sip_tls") == 1 and callee.active("sip_tls") == 1
            media = srv.app[HOST].hosted(out["call_id"])
            assert media.srtp.suite and "RTP/SAVP" in media.answer_sdp  # our offer (require) was taken
            theirs = callee.hosted(next(iter(callee.sip._media.values())))
            await wait_for(lambda: media.srtp.current.stats.unprotected > 10
                           and theirs.srtp.current.stats.unprotected > 10, 3.0, "SRTP both ways")
            await srv.app[DISPATCHER].hangup(out["call_id"])
            await wait_for(lambda: callee.active() == 0 and srv.active() == 0, 3.0, "the BYE over TLS")
            assert srv.metric("v2v_sip_dials_total", outcome="answered") == 1
