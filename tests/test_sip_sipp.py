"""sipp (sip-tester) UAC scenarios against a real v2v server over SIP/UDP + RTP."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from tests.sip.harness import HERE, run_proc, running_server, wait_for
from v2v.signaling.rtp_call import RtpCall
from v2v.worker import events as ev

SUCCESS_RE = re.compile(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)")


def successful_calls(out: str) -> int:
    found = SUCCESS_RE.findall(out)
    assert found, out[-2000:]
    return int(found[-1])


def sipp_workdir(tmp: Path, scenario: str) -> Path:
    """sipp's working directory: the test's tmp dir, holding copies of the scenario and the media it
    plays, so the logs sipp writes there (``<scenario>_<pid>_errors.log``...) never land in the tree."""
    for name in (scenario, "speech_8k.ulaw", "dtmf_2833_1.pcap"):
        shutil.copy(HERE / name, tmp / name)
    return tmp


def sipp_args(scenario: str, service: str, port: int, *, calls: int = 1, limit: int = 1, rate: int = 10,
              media_port: int = 0) -> list[str]:
    args = ["sipp", "-sf", scenario, "-s", service, "-i", "127.0.0.1", "-p", "0", "-m", str(calls),
            "-l", str(limit), "-r", str(rate), "-nostdin", "-timeout", "60", "-recv_timeout", "20000",
            f"127.0.0.1:{port}"]
    if media_port:
        args[1:1] = ["-mp", str(media_port)]
    return args


class Recorder:
    """Captures every SIP call's events and its RtpCall."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, manager) -> None:
        self.events: dict[str, list[object]] = {}
        self.media: list[RtpCall] = []
        orig_create = manager.create_call

        async def create_call(*a, **kw):
            call = await orig_create(*a, **kw)
            lst = self.events.setdefault(call.call_id, [])
            call.add_listener(lst.append)
            return call

        monkeypatch.setattr(manager, "create_call", create_call)
        orig_media = RtpCall.create.__func__

        async def media_create(cls, manager, cfg, req):
            m = await orig_media(cls, manager, cfg, req)
            self.media.append(m)
            return m

        monkeypatch.setattr(RtpCall, "create", classmethod(media_create))

    def of(self, cls: type) -> list[object]:
        return [e for lst in self.events.values() for e in lst if isinstance(e, cls)]


async def test_sipp_call_speech_dtmf_bye(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async with running_server() as srv:
        rec = Recorder(monkeypatch, srv.manager)
        dtmf_before = srv.metric("v2v_dtmf_digits_total")
        rc, out, err = await run_proc(*sipp_args("uac_call.xml", "echo", srv.sip_port, media_port=46000),
                                      cwd=sipp_workdir(tmp_path, "uac_call.xml"),
                                      timeout=60)
        assert rc == 0, out[-3000:] + err[-2000:]
        assert successful_calls(out) == 1
        await wait_for(lambda: srv.active() == 0, 1.0, "active calls back to 0")
        assert len(rec.events) == 1
        # the caller's speech was heard, the echo model answered it (audible playout), DTMF reached the worker
        assert rec.of(ev.UserStartedSpeaking) and rec.of(ev.UserStoppedSpeaking)
        assert rec.of(ev.BotStartedSpeaking), "the echo reply never became audible"
        assert [e.digit for e in rec.of(ev.DtmfReceived)] == ["1"]
        assert srv.metric("v2v_dtmf_digits_total") == dtmf_before + 1
        assert [e.reason for e in rec.of(ev.CallEnded)] == ["hangup"]
        (m,) = rec.media
        st = m.rtp.stats
        assert m.rtp.codec.name == "PCMU"  # the caller's first preference
        # ~7.5 s of call: the server sent RTP (silence when idle) all along
        assert st.packets_out > 300, st
        assert st.packets_in > 250 and st.dtmf_in == 1, st
        assert srv.metric("v2v_calls_total", transport="sip_udp") == 1


async def test_sipp_cancel_before_answer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async with running_server(sip_ring_ms=5000) as srv:
        rec = Recorder(monkeypatch, srv.manager)
        rc, out, err = await run_proc(*sipp_args("uac_cancel.xml", "assistant", srv.sip_port),
                                      cwd=sipp_workdir(tmp_path, "uac_cancel.xml"), timeout=30)
        assert rc == 0, out[-3000:] + err[-2000:]
        await wait_for(lambda: srv.active() == 0 and not srv.sip.core.dialogs, 1.0, "cancelled call released")
        # the call never got media going and never sent a 200
        assert all(m.rtp.stats.packets_out == 0 for m in rec.media)
        assert not rec.of(ev.UserStartedSpeaking)


async def test_sipp_20_concurrent_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async with running_server() as srv:
        rec = Recorder(monkeypatch, srv.manager)
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, srv.active("sip_udp"))
                await asyncio.sleep(0.05)

        w = asyncio.create_task(watch())
        try:
            rc, out, err = await run_proc(
                *sipp_args("uac_load.xml", "echo", srv.sip_port, calls=20, limit=20, rate=40, media_port=47000),
                cwd=sipp_workdir(tmp_path, "uac_load.xml"), timeout=60)
        finally:
            w.cancel()
        assert rc == 0, out[-3000:] + err[-2000:]
        assert successful_calls(out) == 20
        assert len(rec.events) == 20
        assert peak == 20, f"only {peak} calls were up at once"
        await wait_for(lambda: srv.active() == 0 and not srv.sip.core.dialogs, 1.0, "all 20 calls released")
        assert len(rec.of(ev.CallEnded)) == 20
        # nothing left behind: SIP tasks done, RTP sockets closed, calls released by the manager
        await wait_for(lambda: not srv.sip.core._tasks and not srv.manager.calls, 2.0, "SIP tasks and calls gone")
        assert all(m.rtp._closed and m.rtp._task.done() and m.rtp.sock.fileno() == -1 for m in rec.media)
        assert all(m.rtp.stats.packets_in > 100 and m.rtp.stats.packets_out > 100 for m in rec.media)
        assert srv.metric("v2v_calls_total", transport="sip_udp") == 20
