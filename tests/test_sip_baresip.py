"""baresip (headless: aufile microphone, sndfile recorder) calls v2v over SIP/UDP."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import numpy as np

from tests.sip.harness import FIXTURES, HERE, artifacts, running_server, wait_for
from v2v.worker.wavcall import read_wav, write_wav

BARESIP = HERE / "baresip"


def normalized_xcorr_peak(ref: np.ndarray, rec: np.ndarray) -> tuple[float, int]:
    """max over lags of <ref, rec[lag:lag+len(ref)]> / (|ref| |rec segment|)."""
    ref = ref.astype(np.float64)
    rec = rec.astype(np.float64)
    n = len(rec) + len(ref)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(rec, size) * np.conj(np.fft.rfft(ref, size)), size)[: len(rec) - len(ref) + 1]
    energy = np.concatenate([[0.0], np.cumsum(rec * rec)])
    seg = energy[len(ref):] - energy[: len(rec) - len(ref) + 1]
    denom = np.sqrt(np.maximum(seg, 1e-9)) * np.linalg.norm(ref)
    score = corr / denom
    score[seg < 0.05 * np.max(seg)] = 0  # ignore near-silent windows
    lag = int(np.argmax(score))
    return float(score[lag]), lag


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _netstring(obj: dict) -> bytes:
    b = json.dumps(obj).encode()
    return str(len(b)).encode() + b":" + b + b","


async def _read_netstring(reader: asyncio.StreamReader) -> dict:
    n = await reader.readuntil(b":")
    data = await reader.readexactly(int(n[:-1]) + 1)
    return json.loads(data[:-1])


class Baresip:
    """One headless baresip process driven over its ctrl_tcp JSON interface."""

    def __init__(self, workdir: Path, in_wav: Path, codecs: str = "PCMU") -> None:
        self.dir = workdir
        self.rec = workdir / "rec"
        self.rec.mkdir()
        self.ctrl_port = _free_tcp_port()
        lo = 42000 + 2 * (self.ctrl_port % 2000)
        (workdir / "config").write_text((BARESIP / "config.in").read_text().format(
            in_wav=in_wav, rec_dir=self.rec, ctrl_port=self.ctrl_port, rtp_lo=lo, rtp_hi=lo + 20))
        (workdir / "accounts").write_text((BARESIP / "accounts.in").read_text().format(codecs=codecs))
        (workdir / "contacts").write_text("")
        self.events: list[dict] = []
        self._event = asyncio.Event()
        self.log: list[str] = []

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "baresip", "-f", str(self.dir), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        self._out = asyncio.create_task(self._pump())
        # baresip opens its control port once its modules are loaded
        for _ in range(100):
            try:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.ctrl_port)
                break
            except OSError as e:
                if self.proc.returncode is not None:
                    raise AssertionError("baresip exited:\n" + "\n".join(self.log)) from e
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("baresip control port never opened:\n" + "\n".join(self.log))
        self._rx = asyncio.create_task(self._read_events())

    async def _pump(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.log.append(line.decode("utf-8", "replace").rstrip())

    async def _read_events(self) -> None:
        try:
            while True:
                msg = await _read_netstring(self.reader)
                if msg.get("event"):
                    self.events.append(msg)
                    self._event.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # baresip closed its control socket: no more events

    async def command(self, cmd: str, params: str = "") -> None:
        self.writer.write(_netstring({"command": cmd, "params": params, "token": cmd}))
        await self.writer.drain()

    async def wait_event(self, type_: str, timeout: float) -> dict:
        async def _wait() -> dict:
            while True:
                for e in self.events:
                    if e.get("type") == type_:
                        return e
                self._event.clear()
                await self._event.wait()

        try:
            return await asyncio.wait_for(_wait(), timeout)
        except TimeoutError as e:
            raise AssertionError(f"baresip: no {type_} in {timeout}s; events {self.events}\n"
                                 + "\n".join(self.log[-40:])) from e

    async def stop(self) -> None:
        if self.proc.returncode is None:
            try:
                await self.command("quit")
                await asyncio.wait_for(self.proc.wait(), 5)
            except (TimeoutError, ConnectionError):
                self.proc.kill()
                await self.proc.wait()
        self._rx.cancel()
        await asyncio.gather(self._out, return_exceptions=True)


async def test_baresip_calls_echo_over_udp() -> None:
    work = artifacts("baresip")
    speech, rate = read_wav(FIXTURES / "speech_8k.wav")
    assert rate == 8000
    lead, tail = 4000, 7 * 8000  # 0.5 s, then 7 s of silence while the echo plays
    mic = np.concatenate([np.zeros(lead, np.int16), speech.astype(np.int16), np.zeros(tail, np.int16)])
    write_wav(work / "mic.wav", mic, 8000)
    async with running_server() as srv:
        bs = Baresip(work, work / "mic.wav")
        await bs.start()
        try:
            await bs.command("dial", f"sip:echo@127.0.0.1:{srv.sip_port}")
            await bs.wait_event("CALL_ESTABLISHED", 5)
            await wait_for(lambda: srv.active("sip_udp") == 1, 1.0, "the call to be active")
            # the microphone file ends after ~11.3 s: baresip hangs up (BYE)
            closed = await bs.wait_event("CALL_CLOSED", 20)
            await wait_for(lambda: srv.active() == 0, 1.0, "active calls back to 0")
            assert srv.metric("v2v_calls_total", transport="sip_udp", outcome="hangup") == 1
        finally:
            await bs.stop()
        assert closed["param"] in ("end of file", "Connection reset by peer", "")
    (dec,) = list(bs.rec.glob("dump-*-dec.wav"))
    heard, hrate = read_wav(dec)
    assert hrate == 8000
    # the reply came after the caller finished speaking, and it is the caller's own speech
    score, _lag = normalized_xcorr_peak(speech.astype(np.int16), heard)
    assert score > 0.6, f"echo does not match what was sent (score {score:.2f})"
    spoke_until = lead + np.flatnonzero(np.abs(speech) > 500)[-1]
    reply_from = np.flatnonzero(np.abs(heard) > 500)[0]
    assert reply_from > spoke_until, f"reply at {reply_from / 8000:.2f}s overlaps the caller's speech"
    # silence before the reply was real RTP too: the recording spans the whole call
    assert len(heard) > (lead + len(speech) + 5 * 8000)
