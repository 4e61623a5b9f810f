"""Wideband codecs on plain RTP (issue 12): SDP negotiation by --sip-codecs, G.722 and Opus.

Real peers: baresip (its g722 and opus modules, headless as in test_sip_baresip.py) calls the
echo profile with G.722 and with Opus first and hears its own (wideband) speech back; with
``--sip-codecs pcmu`` the same Opus-first phone gets PCMU; a scripted Opus caller sends RFC 4733
digits at the 48 kHz clock. Unit tests pin the negotiation and the codecs' rates.
"""

from __future__ import annotations

import asyncio
import re
import struct
import time
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from tests.sip.harness import FIXTURES, artifacts, record_call_events, running_server, wait_for
from tests.sip.uac import Call, SipClient
from tests.test_sip_baresip import Baresip, normalized_xcorr_peak
from v2v.media.resample import Resampler
from v2v.media.rtp_codecs import CODECS, make_codec, parse_preference
from v2v.signaling.config import ServerConfig
from v2v.signaling.sip.sdp import SdpError, SdpSession, parse_offer
from v2v.worker.wavcall import read_wav, write_wav

OPUS_FIRST = """v=0
o=- 1 1 IN IP4 10.0.0.5
s=-
c=IN IP4 10.0.0.5
t=0 0
m=audio 4000 RTP/AVP 111 9 0 8 110 101
a=rtpmap:111 opus/48000/2
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:110 telephone-event/48000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
"""


# ------------------------------------------------------------------ negotiation
def test_opus_first_offer_gets_opus_with_events_at_48000() -> None:
    o = parse_offer(OPUS_FIRST)
    assert (o.codec, o.payload_type, o.dtmf_pt, o.dtmf_rate) == ("OPUS", 111, 110, 48000)
    assert o.fmtp_params()["useinbandfec"] == "1"
    ans = SdpSession("192.0.2.10").build_answer(o, 20000)
    assert "m=audio 20000 RTP/AVP 111 110\r\n" in ans
    assert "a=rtpmap:111 opus/48000/2\r\n" in ans and "a=rtpmap:110 telephone-event/48000\r\n" in ans
    fmtp = next(line for line in ans.split("\r\n") if line.startswith("a=fmtp:111 "))
    assert "stereo=0" in fmtp and "sprop-stereo=0" in fmtp  # mono voice (RFC 7587)


def test_server_preference_beats_the_callers_order() -> None:
    narrow_first = OPUS_FIRST.replace("RTP/AVP 111 9 0 8 110 101", "RTP/AVP 0 9 101")
    o = parse_offer(narrow_first)
    assert (o.codec, o.payload_type, o.dtmf_pt, o.dtmf_rate) == ("G722", 9, 101, 8000)
    ans = SdpSession("h").build_answer(o, 1)
    assert "RTP/AVP 9 101\r\n" in ans and "a=rtpmap:9 G722/8000" in ans and "telephone-event/8000" in ans
    # static payload type 9 without an rtpmap is G.722 too
    assert parse_offer("v=0\r\nc=IN IP4 10.0.0.5\r\nm=audio 4000 RTP/AVP 0 9\r\n").codec == "G722"


def test_g711_laws_tie_and_the_caller_decides() -> None:
    both = OPUS_FIRST.replace("RTP/AVP 111 9 0 8 110 101", "RTP/AVP 8 0 101")
    assert parse_offer(both).codec == "PCMA"
    assert parse_offer(both, ("PCMU", "PCMA")).codec == "PCMA"
    assert parse_offer(both.replace("RTP/AVP 8 0", "RTP/AVP 0 8")).codec == "PCMU"


def test_sip_codecs_restricts_and_refuses_with_the_offered_list() -> None:
    assert parse_offer(OPUS_FIRST, ("PCMU",)).codec == "PCMU"
    assert parse_offer(OPUS_FIRST, ("G722", "OPUS")).codec == "G722"
    with pytest.raises(SdpError, match="offered OPUS/48000,G722/8000"):
        parse_offer(OPUS_FIRST.replace("RTP/AVP 111 9 0 8 110 101", "RTP/AVP 111 9 110"), ("PCMU", "PCMA"))
    # G.722 must be at its RFC 3551 clock (8000); a /16000 rtpmap is not ours to guess
    wrong = OPUS_FIRST.replace("a=rtpmap:9 G722/8000", "a=rtpmap:9 G722/16000")
    assert parse_offer(wrong.replace("RTP/AVP 111 9 0 8 110 101", "RTP/AVP 9 0"), ("G722", "PCMU")).codec == "PCMU"


def test_opus_with_events_only_at_8000_keeps_them() -> None:
    """baresip 1.0 offers telephone-event/8000 beside Opus: answered as offered, digits still decode."""
    o = parse_offer(OPUS_FIRST.replace("RTP/AVP 111 9 0 8 110 101", "RTP/AVP 111 101"))
    assert (o.codec, o.dtmf_pt, o.dtmf_rate) == ("OPUS", 101, 8000)
    assert "a=rtpmap:101 telephone-event/8000" in SdpSession("h").build_answer(o, 1)


def test_our_offer_lists_the_preference() -> None:
    offer = SdpSession("192.0.2.10").build_offer(30000, codecs=parse_preference(["opus", "g722", "pcmu", "pcma"]))
    assert "m=audio 30000 RTP/AVP 111 9 0 8 101 110\r\n" in offer
    for line in ("a=rtpmap:111 opus/48000/2", "a=rtpmap:9 G722/8000", "a=rtpmap:0 PCMU/8000",
                 "a=rtpmap:101 telephone-event/8000", "a=rtpmap:110 telephone-event/48000"):
        assert line + "\r\n" in offer
    o = parse_offer(offer)  # an answerer echoing our offer gets what we prefer
    assert (o.codec, o.dtmf_pt, o.dtmf_rate) == ("OPUS", 110, 48000)
    narrow = SdpSession("h").build_offer(1, codecs=("PCMU",))
    assert "RTP/AVP 0 101\r\n" in narrow and "opus" not in narrow and "/48000" not in narrow


def test_sip_codecs_flag_is_checked() -> None:
    assert parse_preference(["Opus", "PCMU", "pcmu"]) == ("OPUS", "PCMU")
    with pytest.raises(ValueError, match="g729"):
        ServerConfig(sip_codecs=["g729"]).validate()
    assert ServerConfig().sip_codecs == ["opus", "g722", "pcmu", "pcma"]


@pytest.mark.parametrize(("name", "ticks", "samples", "enc_samples"), [
    ("PCMU", 160, 160, 160), ("G722", 160, 320, 320), ("OPUS", 960, 960, 480)])
def test_codec_rates_and_round_trip(name: str, ticks: int, samples: int, enc_samples: int) -> None:
    codec = make_codec(name)
    info = codec.info
    assert (info.frame_ticks, info.frame_samples, info.encode_samples) == (ticks, samples, enc_samples)
    assert info.ticks_to_samples(ticks) == samples and info.samples_to_ticks(samples) == ticks
    t = np.arange(50 * enc_samples) / info.encode_rate
    tone = (8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    out = [codec.decode(codec.encode(tone[i * enc_samples:(i + 1) * enc_samples])) for i in range(50)]
    assert all(len(o) == samples for o in out)
    got = np.concatenate(out[10:]).astype(np.float64)
    ref = (8000 * np.sin(2 * np.pi * 1000 * np.arange(len(got)) / info.audio_rate))
    # the same 1 kHz tone at the decoder's rate, whatever the codec's delay: its spectrum peaks at 1 kHz
    spectrum = np.abs(np.fft.rfft(got))
    assert abs(np.argmax(spectrum) * info.audio_rate / len(got) - 1000) < 10
    assert 0.5 < np.std(got) / np.std(ref) < 1.5
    assert codec.decode(b"").size == 0 and set(CODECS) == {"PCMU", "PCMA", "G722", "OPUS"}


# ------------------------------------------------------------------ baresip
def _wideband_mic(work: Path, rate: int) -> tuple[np.ndarray, int, np.ndarray]:
    """0.5 s of silence, the 24 kHz speech fixture at ``rate``, 7 s of silence (the echo plays then)."""
    speech24, r = read_wav(FIXTURES / "speech_24k.wav")
    assert r == 24000
    rs = Resampler(24000, rate)
    speech = np.concatenate([rs.process(speech24.astype(np.int16)), rs.flush()])
    lead = rate // 2
    mic = np.concatenate([np.zeros(lead, np.int16), speech, np.zeros(7 * rate, np.int16)])
    write_wav(work / "mic.wav", mic, rate)
    return speech, lead, mic


def _baresip(work: Path, codecs: str, rate: int) -> Baresip:
    """baresip as in test_sip_baresip.py, with the g722 and opus modules and its audio at ``rate``."""
    bs = Baresip(work, work / "mic.wav", codecs=codecs)
    cfg = work / "config"
    text = re.sub(r"(?m)^module\s+g711\.so$", "module\t\t\tg711.so\nmodule\t\t\tg722.so\nmodule\t\t\topus.so",
                  cfg.read_text())
    text = re.sub(r"(?m)^(ausrc_srate|auplay_srate)\s+\d+", rf"\g<1>\t\t{rate}", text)
    cfg.write_text(text)
    return bs


TURN_EVENTS = ("UserStartedSpeaking", "UserStoppedSpeaking", "BotStartedSpeaking")


def _high_band_share(x: np.ndarray, rate: int, above: float = 4500.0) -> float:
    """The share of the signal's energy above ``above`` Hz (telephone audio carries ~none)."""
    spec = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    return float(spec[freqs > above].sum() / max(spec.sum(), 1e-9))


async def _echo_call(name: str, codecs: str, rate: int, want: str, digit: str = "",
                     **server: object) -> tuple[float, float]:
    """baresip (audio at ``rate``, offering ``codecs``) calls echo; returns the echo's match score and the
    high-band share of what baresip heard relative to what it said. Asserts the server's codec, and
    that ``digit`` (sent by baresip over RFC 4733 in the leading silence) arrived."""
    work = artifacts(name)
    speech, _lead, _mic = _wideband_mic(work, rate)
    async with running_server(**server) as srv:
        events = record_call_events(srv)
        bs = _baresip(work, codecs, rate)
        await bs.start()
        try:
            await bs.command("dial", f"sip:echo@127.0.0.1:{srv.sip_port}")
            await bs.wait_event("CALL_ESTABLISHED", 5)
            await wait_for(lambda: srv.active("sip_udp") == 1, 1.0, "the call to be active")
            (d,) = srv.sip.core.dialogs.values()
            rtp = srv.rtp_of(d.media)
            assert rtp.codec.name == want and rtp.input_rate == CODECS[want].audio_rate
            if digit:  # once baresip's audio flows (its events ride the audio stream's timeline)
                await wait_for(lambda: rtp.stats.packets_in >= 10, 3.0, "baresip's audio")
                await bs.command("sndcode", digit)
                await wait_for(lambda: srv.metric("v2v_dtmf_digits_total") == 1, 2.0, "baresip's digit")
                assert rtp.stats.dtmf_in == 1
            await bs.wait_event("CALL_CLOSED", 20)  # the microphone file ended: baresip hangs up
            await wait_for(lambda: srv.active() == 0, 1.0, "active calls back to 0")
            assert srv.metric("v2v_calls_total", transport="sip_udp", outcome="hangup") == 1
        finally:
            await bs.stop()
    (dec,) = list(bs.rec.glob("dump-*-dec.wav"))
    heard, hrate = read_wav(dec)
    ref = speech if hrate == rate else Resampler(rate, hrate).process(speech)
    score, lag = normalized_xcorr_peak(ref.astype(np.int16), heard)
    # the reply came after the caller's one turn (baresip's two recordings start at different times,
    # so the order is taken from the server's events)
    kinds = [type(e).__name__ for e in events if type(e).__name__ in TURN_EVENTS]
    assert kinds[:3] == ["UserStartedSpeaking", "UserStoppedSpeaking", "BotStartedSpeaking"], kinds
    echo = heard[lag:lag + len(ref)]
    if hrate < 16000:  # telephone band: nothing above 4 kHz to compare
        return score, 0.0
    return score, _high_band_share(echo, hrate) / _high_band_share(ref, hrate)


async def test_baresip_g722_call_hears_its_wideband_echo() -> None:
    """A narrowband-first phone (PCMU, then G.722) gets G.722: the server's preference decides."""
    score, band = await _echo_call("codecs-g722", "PCMU,G722/16000/1", 16000, "G722")
    assert score > 0.6, f"echo does not match what was sent (score {score:.2f})"
    assert band > 0.5, f"the echo lost the band above 4.5 kHz ({band:.2f} of the sent share)"


async def test_baresip_opus_first_gets_opus_and_hears_its_echo() -> None:
    """baresip 1.0 offers telephone-event/8000 only, also beside Opus: its digit arrives all the same."""
    score, band = await _echo_call("codecs-opus", "opus/48000/2,G722/16000/1,PCMU", 48000, "OPUS", digit="7")
    assert score > 0.6, f"echo does not match what was sent (score {score:.2f})"
    assert band > 0.5, f"the echo lost the band above 4.5 kHz ({band:.2f} of the sent share)"


async def test_sip_codecs_pcmu_forces_pcmu_on_an_opus_first_phone() -> None:
    score, _band = await _echo_call("codecs-pcmu", "opus/48000/2,G722/16000/1,PCMU", 48000, "PCMU",
                                    sip_codecs=["pcmu"])
    assert score > 0.6, f"echo does not match what was sent (score {score:.2f})"


# ------------------------------------------------------------------ Opus + RFC 4733 at 48 kHz
class CodecPeer(asyncio.DatagramProtocol):
    """A scripted caller: 20 ms packets of one codec (timestamps + its frame's ticks) and RFC 4733 digits
    at its clock (3 x 20 ms + 3 end packets each)."""

    def __init__(self, name: str = "OPUS", pt: int = 111) -> None:
        self.codec = make_codec(name)
        self.pt = pt
        self.received: list[tuple[int, int, bytes]] = []  # (pt, timestamp, payload)
        self.digits: list[int] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.seq, self.ts = 7, 0
        self.event_left = 0  # audio frames a digit still stands in for

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if len(data) > 12:
            self.received.append((data[1] & 0x7F, struct.unpack("!I", data[4:8])[0], data[12:]))

    def _send(self, remote: tuple[str, int], pt: int, ts: int, payload: bytes, marker: bool = False) -> None:
        assert self.transport is not None
        self.seq += 1
        hdr = struct.pack("!BBHII", 0x80, (int(marker) << 7) | pt, self.seq & 0xFFFF, ts & 0xFFFFFFFF, 0x5EED)
        self.transport.sendto(hdr + payload, remote)

    async def run(self, remote: tuple[str, int], seconds: float, dtmf_pt: int = 101,
                  audio: np.ndarray | None = None) -> None:
        """``audio`` (at the encoder's rate; a tone if None, silence after its end) for ``seconds``; a
        queued digit goes out every 0.8 s."""
        info = self.codec.info
        step, ticks = info.encode_samples, info.frame_ticks
        if audio is None:
            audio = (3000 * np.sin(2 * np.pi * 700 * np.arange(int(seconds * info.encode_rate))
                                   / info.encode_rate)).astype(np.int16)
        t0 = time.monotonic()
        for n in range(int(seconds * 50)):
            await asyncio.sleep(max(0.0, t0 + n * 0.02 - time.monotonic()))
            if n % 40 == 20 and self.digits:
                self._event(remote, dtmf_pt, ticks)
            if self.event_left:
                self.event_left -= 1
                continue
            frame = audio[n * step:(n + 1) * step]
            frame = np.pad(frame, (0, step - len(frame)))
            self._send(remote, self.pt, self.ts, self.codec.encode(frame))
            self.ts += ticks

    def _event(self, remote: tuple[str, int], dtmf_pt: int, ticks: int) -> None:
        """One digit in place of three 20 ms audio frames: its updates and three end packets (sent at
        once: the receiver takes one digit per event timestamp), all stamped with its start."""
        event, start = self.digits.pop(0), self.ts
        for i in range(1, 4):
            self._send(remote, dtmf_pt, start, struct.pack("!BBH", event, 10, i * ticks), marker=i == 1)
        for _ in range(3):
            self._send(remote, dtmf_pt, start, struct.pack("!BBH", event, 0x80 | 10, 3 * ticks))
        self.ts += 3 * ticks
        self.event_left = 3


async def test_opus_call_takes_digits_at_48000_and_sends_opus_at_the_48k_clock() -> None:
    async with running_server() as srv:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(CodecPeer, local_addr=("127.0.0.1", 0))
        sip = await SipClient("udp", ("127.0.0.1", srv.sip_port)).connect()
        try:
            assert peer.transport is not None
            port = peer.transport.get_extra_info("sockname")[1]
            call = Call(sip, peer, f"sip:echo@127.0.0.1:{srv.sip_port}")  # type: ignore[arg-type]  # its RTP is driven here
            sdp = OPUS_FIRST.replace("10.0.0.5", "127.0.0.1").replace("m=audio 4000", f"m=audio {port}")
            sip.send(sip.request("INVITE", call.uri, call.call_id, from_tag=call.from_tag, cseq=1, body=sdp))
            resp = await sip.recv_final(call.call_id, "INVITE")
            assert resp.status == 200
            call.to_tag = resp.to.tag
            sip.send(sip.request("ACK", call.uri, call.call_id, from_tag=call.from_tag, to_tag=call.to_tag, cseq=1))
            answer = resp.body.decode()
            assert " RTP/AVP 111 110\r\n" in answer and "a=rtpmap:110 telephone-event/48000" in answer
            (d,) = srv.sip.core.dialogs.values()
            rtp = srv.rtp_of(d.media)
            assert (rtp.codec.name, rtp.dtmf_pt, rtp.input_rate) == ("OPUS", 110, 48000)
            peer.digits = [5, 9]
            await peer.run(call._remote_rtp(resp), 2.0, dtmf_pt=110)
            await wait_for(lambda: srv.metric("v2v_dtmf_digits_total") == 2, 2.0, "both digits counted")
            assert rtp.stats.dtmf_in == 2
            call.cseq = 2
            assert (await call.bye()).status == 200
            await wait_for(lambda: srv.active() == 0, 1.0, "the call to end")
        finally:
            await sip.close()
            assert peer.transport is not None
            peer.transport.close()
    audio = [(ts, p) for pt, ts, p in peer.received if pt == 111]
    assert len(audio) > 50 and {pt for pt, _, _ in peer.received} == {111}
    steps = [(b[0] - a[0]) & 0xFFFFFFFF for a, b in zip(audio, audio[1:], strict=False)]
    # 960 ticks per 20 ms packet; a keep-alive before the latch may precede the stream by whole packets
    assert all(st % 960 == 0 for st in steps) and set(steps[-50:]) == {960}, sorted(set(steps))[:5]
    dec = make_codec("OPUS")
    assert all(len(dec.decode(p)) == 960 for _ts, p in audio[:20])  # 20 ms at 48 kHz each


# ------------------------------------------------------------------ RtpSession with G.722
async def test_rtp_session_g722_clock_8000_with_16k_audio_and_gaps_in_ticks() -> None:
    """G.722 on the wire: 160 ticks and 160 bytes per 20 ms out; in: 320 samples per packet and a lost
    packet's gap (ticks at 8000) filled with twice as many silent 16 kHz samples."""
    from tests.test_sip_rtp import _peer, _rtp
    from v2v.media.playout import PlayoutBuffer
    from v2v.signaling.sip.rtp_session import PortAllocator, RtpSession

    peer = await _peer()
    playout = PlayoutBuffer()
    playout.add("item-1", (8000 * np.sin(2 * np.pi * 300 * np.arange(24000) / 24000)).astype(np.int16))
    got: list[np.ndarray] = []
    sock = PortAllocator(37000, 37999).bind("127.0.0.1")
    s = RtpSession(sock, make_codec("G722"), 9, 101, ("127.0.0.1", peer.port), playout, got.append,
                   lambda _d: None, lambda: None)
    assert s.input_rate == 16000
    await s.start()
    caller = make_codec("G722")
    tone = (6000 * np.sin(2 * np.pi * 1000 * np.arange(320 * 6) / 16000)).astype(np.int16)
    frames = [caller.encode(tone[i * 320:(i + 1) * 320]) for i in range(6)]
    try:
        assert peer.transport is not None
        dest = ("127.0.0.1", s.local_port)
        for i in (0, 1, 2, 4, 5):  # packet 3 lost: its 160 ticks become 320 samples of silence
            peer.transport.sendto(_rtp(10 + i, frames[i], pt=9, ts=1000 + 160 * i), dest)
        await wait_for(lambda: sum(map(len, got)) >= 6 * 320, 2.0, "the caller's audio")
        n0 = len(peer.packets)
        await wait_for(lambda: len(peer.packets) >= n0 + 20, 2.0, "20 packets out")
    finally:
        await s.close()
    pcm = np.concatenate(got)
    # five packets of 320 samples and one lost packet's 320 silent ones; then, with no more packets,
    # silence made up at the real-time pace in whole 20 ms frames (160 ticks = 320 samples)
    assert np.abs(pcm[3 * 320:4 * 320]).max() == 0 and np.abs(pcm[4 * 320 + 40:5 * 320]).max() > 2000
    assert np.abs(pcm[5 * 320 + 40:6 * 320]).max() > 2000
    assert len(pcm) % 320 == 0 and np.abs(pcm[6 * 320:]).max(initial=0) == 0
    out = [p for _, p in peer.packets[n0:]]
    assert {p.payload_type for p in out} == {9} and {len(p.payload) for p in out} == {160}
    assert {(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in zip(out, out[1:], strict=False)} == {160}
    assert playout.played("item-1") == 480 * s.stats.packets_out  # 20 ms of 24 kHz playout per packet


async def test_rtp_session_codec_change_keeps_the_input_rate() -> None:
    """A re-INVITE moving a PCMU call to G.722: the worker's input stays 8 kHz (resampled), out goes G.722."""
    from tests.test_sip_rtp import _peer, _rtp
    from v2v.media.playout import PlayoutBuffer
    from v2v.signaling.sip.rtp_session import PortAllocator, RtpSession

    peer = await _peer()
    got: list[np.ndarray] = []
    sock = PortAllocator(37000, 37999).bind("127.0.0.1")
    s = RtpSession(sock, "PCMU", 0, 101, ("127.0.0.1", peer.port), PlayoutBuffer(), got.append,
                   lambda _d: None, lambda: None)
    await s.start()
    caller = make_codec("G722")
    tone = (6000 * np.sin(2 * np.pi * 1000 * np.arange(320 * 25) / 16000)).astype(np.int16)
    try:
        assert peer.transport is not None
        dest = ("127.0.0.1", s.local_port)
        s.set_codec(make_codec("G722"), 9)
        assert s.input_rate == 8000 and s.codec.name == "G722"
        for i in range(25):
            peer.transport.sendto(_rtp(10 + i, caller.encode(tone[i * 320:(i + 1) * 320]), pt=9, ts=160 * i), dest)
        await wait_for(lambda: sum(map(len, got)) >= 24 * 160, 2.0, "the caller's audio at 8 kHz")
        n0 = len(peer.packets)
        await wait_for(lambda: len(peer.packets) >= n0 + 5, 2.0, "packets out")
    finally:
        await s.close()
    pcm = np.concatenate(got)[:24 * 160].astype(np.float64)
    peak = np.argmax(np.abs(np.fft.rfft(pcm[800:]))) * 8000 / len(pcm[800:])
    assert abs(peak - 1000) < 20  # the 1 kHz tone, at 8 kHz
    assert {p.payload_type for _, p in peer.packets[n0:]} == {9}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "pt"), [("G722", 9), ("OPUS", 111)])
async def test_local_model_over_a_wideband_call_gets_the_time(name: str, pt: int) -> None:
    """The default local model on a G.722 (16 kHz) or Opus (48 kHz input) call: "what time is it" is
    understood, get_time runs, the time is spoken back in that codec."""
    from v2v.worker import events as ev
    from v2v.worker.models import local_brain as brain

    pcm, rate = read_wav(FIXTURES / "what_time_is_it.wav")
    peer_rate = CODECS[name].encode_rate
    rs = Resampler(rate, peer_rate)
    speech = np.concatenate([rs.process(pcm), rs.flush()])
    async with running_server(model="local") as srv:
        events = record_call_events(srv)
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(lambda: CodecPeer(name, pt), local_addr=("127.0.0.1", 0))
        sip = await SipClient("udp", ("127.0.0.1", srv.sip_port)).connect()
        try:
            assert peer.transport is not None
            port = peer.transport.get_extra_info("sockname")[1]
            call = Call(sip, peer, f"sip:assistant@127.0.0.1:{srv.sip_port}")  # type: ignore[arg-type]  # its RTP is driven here
            fmts = f"{pt} 0 101"
            sdp = OPUS_FIRST.replace("10.0.0.5", "127.0.0.1").replace("m=audio 4000 RTP/AVP 111 9 0 8 110 101",
                                                                       f"m=audio {port} RTP/AVP {fmts}")
            sip.send(sip.request("INVITE", call.uri, call.call_id, from_tag=call.from_tag, cseq=1, body=sdp))
            resp = await sip.recv_final(call.call_id, "INVITE")
            assert resp.status == 200
            call.to_tag = resp.to.tag
            sip.send(sip.request("ACK", call.uri, call.call_id, from_tag=call.from_tag, to_tag=call.to_tag, cseq=1))
            (d,) = srv.sip.core.dialogs.values()
            assert srv.rtp_of(d.media).codec.name == name
            sender = asyncio.ensure_future(peer.run(call._remote_rtp(resp), 15.0, audio=speech))
            try:
                await wait_for(lambda: any(isinstance(e, ev.BotOutput) and e.final for e in events), 25, "the answer")
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            call.cseq = 2
            assert (await call.bye()).status == 200
        finally:
            await sip.close()
            assert peer.transport is not None
            peer.transport.close()
    heard = [e.text for e in events if isinstance(e, ev.UserTranscript) and e.final]
    decided = brain.decide(heard[0])
    assert isinstance(decided, brain.ToolCall) and decided.name == "get_time", heard
    said = " ".join(e.text for e in events if isinstance(e, ev.BotTranscript))
    assert said.startswith("It is "), said
    dec = make_codec(name)
    answer = np.concatenate([dec.decode(p) for ptype, _ts, p in peer.received if ptype == pt])
    assert np.abs(answer).max(initial=0) > 2000  # the answer came back as audio in the call's codec


def test_opus_respects_the_peers_maxaveragebitrate() -> None:
    from v2v.signaling.rtp_call import offer_codec

    speech, rate = read_wav(FIXTURES / "speech_24k.wav")
    frames = speech[: 480 * 100].astype(np.int16).reshape(-1, 480)

    def mean_bytes(fmtp: str) -> float:
        codec = offer_codec(parse_offer(OPUS_FIRST.replace("minptime=10;useinbandfec=1", fmtp)))
        return float(np.mean([len(codec.encode(f)) for f in frames]))

    ours, capped = mean_bytes("minptime=10"), mean_bytes("maxaveragebitrate=12000")
    assert ours > 60 and capped < 12000 / 50 / 8 * 1.3, (ours, capped)  # 32 kbit/s: 80 B; 12 kbit/s: 30 B
