"""RTCP on plain RTP (issue 12): RFC 3550 statistics of a known lossy stream, and baresip calls
(RTCP on port+1 and muxed) in which v2v sends sender reports and reads baresip's reports."""

from __future__ import annotations

import logging
import random
import time

import numpy as np
import pytest
from aiortc.rtp import RtcpPacket, RtcpSrPacket

from tests.sip.harness import FIXTURES, artifacts, running_server, wait_for
from tests.test_sip_baresip import Baresip
from tests.test_sip_sipp import Recorder
from v2v.signaling.logs import LOGGER as CALL_LOGGER
from v2v.signaling.sip.rtcp import ReceiveStats, offers_mux
from v2v.worker.wavcall import read_wav, write_wav

pytestmark = pytest.mark.timeout(90)


def stream(n: int, drop: set[int], seq0: int, jitter_ticks: list[int]) -> list[tuple[int, int, int]]:
    """(seq, timestamp, arrival) of ``n`` 20 ms packets at 8 kHz minus ``drop``; arrival = send time +
    a per-packet delay (jitter), all in clock units."""
    out = []
    for i in range(n):
        if i in drop:
            continue
        ts = 1000 + 160 * i
        out.append(((seq0 + i) & 0xFFFF, ts & 0xFFFFFFFF, 5_000_000 + 160 * i + jitter_ticks[i]))
    return out


def reference_jitter(pkts: list[tuple[int, int, int]]) -> float:
    """RFC 3550 6.4.1 in floating point: J += (|D| - J) / 16."""
    j, prev = 0.0, None
    for _seq, ts, arr in pkts:
        transit = arr - ts
        if prev is not None:
            j += (abs(transit - prev) - j) / 16
        prev = transit
    return j


def test_loss_and_jitter_of_a_known_lossy_stream() -> None:
    rng = random.Random(7)
    n = 1000
    drop = set(rng.sample(range(1, n - 1), 37))  # first and last arrive (they bound "expected")
    delays = [rng.randrange(0, 240) for _ in range(n)]  # up to 30 ms of delay variation
    pkts = stream(n, drop, seq0=65_000, jitter_ticks=delays)  # the sequence numbers wrap past 65535
    s = ReceiveStats()
    half = len(pkts) // 2
    for seq, ts, arr in pkts[:half]:
        s.update(0x1234, seq, ts, arr)
    s.fraction_lost()  # a report: the next fraction counts from here
    for seq, ts, arr in pkts[half:]:
        s.update(0x1234, seq, ts, arr)
    assert s.expected == n and s.received == n - len(drop) and s.lost == len(drop)
    assert s.extended_max == 65_000 + n - 1  # one wrap: 65536 + (65000 + 999 - 65536)
    expected_prior = (pkts[half - 1][0] - 65_000) % 65536 + 1  # at the first report
    lost_since = (n - expected_prior) - (len(pkts) - half)
    assert lost_since > 0 and s.fraction_lost() == (lost_since << 8) // (n - expected_prior)
    assert abs(s.jitter - reference_jitter(pkts)) <= 2, (s.jitter, reference_jitter(pkts))
    # a steady stream has no jitter; a constant 80-tick (10 ms) alternation converges to 80
    steady = ReceiveStats()
    for seq, ts, arr in stream(200, set(), 10, [0] * 200):
        steady.update(1, seq, ts, arr)
    assert steady.jitter == 0 and steady.lost == 0
    alt = ReceiveStats()
    for seq, ts, arr in stream(400, set(), 10, [80 * (i % 2) for i in range(400)]):
        alt.update(1, seq, ts, arr)
    assert 78 <= alt.jitter <= 80


def test_duplicates_reordering_and_restart() -> None:
    s = ReceiveStats()
    for seq in (100, 101, 103, 102, 102, 104):  # 102 late and duplicated
        s.update(9, seq, seq * 160, seq * 160)
    assert s.expected == 5 and s.received == 6 and s.lost == -1
    s.update(9, 30_000, 0, 0)  # a jump far beyond MAX_DROPOUT: the sender restarted its numbering
    assert s.expected == 1 and s.received == 1
    s.update(10, 5, 0, 0)  # a new SSRC starts over
    assert s.ssrc == 10 and s.expected == 1
    assert offers_mux("v=0\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp-mux\r\n") and not offers_mux("a=rtcp:4001\r\n")


@pytest.mark.parametrize("mux", [False, True], ids=["port+1", "rtcp-mux"])
async def test_baresip_call_exchanges_reports(mux: bool, caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    work = artifacts(f"baresip-rtcp-{'mux' if mux else 'port1'}")
    speech, rate = read_wav(FIXTURES / "speech_8k.wav")
    mic = np.concatenate([speech.astype(np.int16), np.zeros(12 * 8000, np.int16)])[: 13 * 8000]
    write_wav(work / "mic.wav", mic, rate)
    caplog.set_level(logging.INFO, logger=CALL_LOGGER)
    async with running_server() as srv:
        rec = Recorder(monkeypatch, srv.manager)
        bs = Baresip(work, work / "mic.wav")
        cfg = work / "config"
        cfg.write_text(cfg.read_text().replace("rtcp_mux\t\tno", f"rtcp_mux\t\t{'yes' if mux else 'no'}"))
        await bs.start()
        try:
            await bs.command("dial", f"sip:echo@127.0.0.1:{srv.sip_port}")
            await bs.wait_event("CALL_ESTABLISHED", 5)
            (m,) = rec.media
            rtcp = m.rtcp
            assert rtcp is not None and rtcp.mux is mux
            # baresip reports on our stream (an RR block for our SSRC, LSR set: it got our SR) and we on its
            await wait_for(lambda: rtcp.peer.rtt_ms is not None and rtcp.counters.sr_out >= 2, 20.0,
                           "baresip's report on our SR, and two of ours")
            await bs.wait_event("CALL_CLOSED", 20)
            await wait_for(lambda: srv.active() == 0, 2.0, "the call to end")
        finally:
            await bs.stop()
    c = rtcp.counters
    assert c.sr_in + c.rr_in >= 1 and c.bad_in == 0 and c.foreign_in == 0, c
    assert c.bye_out == 1 and c.send_failures == 0, c
    assert rtcp.stats.received > 300 and 0 <= rtcp.stats.lost <= 2  # loopback: nothing lost
    assert 0 <= rtcp.peer.packets_lost <= 2 and rtcp.peer.rtt_ms is not None and rtcp.peer.rtt_ms < 500
    assert srv.metric("v2v_rtcp_packets_total", direction="out", type="sr") == c.sr_out
    assert srv.metric("v2v_rtcp_packets_total", direction="in") == c.sr_in + c.rr_in + c.bye_in
    assert srv.metric("v2v_rtp_jitter_seconds_count", source="reported") >= 1
    assert srv.metric("v2v_rtp_jitter_seconds_count", source="computed") >= 1
    ended = [r for r in caplog.records if r.getMessage() == "call-ended"]
    assert len(ended) == 1
    line = vars(ended[0])
    assert line["rtcp"] == ("mux" if mux else "port+1") and "rx_jitter_ms" in line and "peer_jitter_ms" in line
    assert line["rx_lost"] == rtcp.stats.lost


def test_compound_report_parses() -> None:
    """Our SR + SDES (+ BYE) as aiortc (and any RFC 3550 stack) parses it."""
    from v2v.signaling.sip.rtcp import RtcpSession

    class FakeStats:
        packets_out, keepalives_out, octets_out = 50, 0, 8000

    class FakeRtp:  # the RTP session's attributes RTCP reads
        _ssrc, _ts, stats, latched = 0xABCD, 123456, FakeStats(), True

        class codec:
            class info:
                clock_rate = 8000

    r = RtcpSession(FakeRtp(), mux=True)  # type: ignore[arg-type]
    r.stats.update(0x55, 10, 0, 0)
    packets = RtcpPacket.parse(r.compound(bye=True))
    sr = packets[0]
    assert isinstance(sr, RtcpSrPacket) and sr.ssrc == 0xABCD and sr.sender_info.packet_count == 50
    assert sr.sender_info.octet_count == 8000 and sr.reports[0].ssrc == 0x55
    assert [type(p).__name__ for p in packets] == ["RtcpSrPacket", "RtcpSdesPacket", "RtcpByePacket"]


def test_a_report_without_lsr_keeps_the_last_round_trip() -> None:
    """A block whose LSR is 0 (the peer had no SR of ours at hand, e.g. its last report at hang-up)
    updates loss and jitter but keeps the round trip measured before."""
    from aiortc.rtp import RtcpReceiverInfo

    from v2v.signaling.sip.rtcp import RtcpSession, ntp_time

    class FakeRtp:
        _ssrc, _ts, latched = 0xABCD, 0, True

    r = RtcpSession(FakeRtp(), mux=True)  # type: ignore[arg-type]
    lsr = (ntp_time(time.time()) >> 16) & 0xFFFFFFFF

    def block(lsr: int, lost: int) -> RtcpReceiverInfo:
        return RtcpReceiverInfo(ssrc=0xABCD, fraction_lost=0, packets_lost=lost, highest_sequence=100,
                                jitter=8, lsr=lsr, dlsr=0)

    r._reports([block(lsr, 1)])
    rtt = r.peer.rtt_ms
    assert rtt is not None and 0 <= rtt < 1000
    r._reports([block(0, 2)])
    assert r.peer.packets_lost == 2 and r.peer.rtt_ms == rtt
