"""RTP sequence-number extension (media/rtp_seq.py) and its two users across the 16-bit wrap."""

from __future__ import annotations

import pytest

from v2v.media.jitter import JitterBuffer
from v2v.media.rtp_seq import SEQ_MOD, extend_seq, seq_delta
from v2v.signaling.sip.rtcp import ReceiveStats


@pytest.mark.parametrize("seq, ref, delta", [
    (5, 5, 0),
    (6, 5, 1),
    (4, 5, -1),
    (0, 65535, 1),  # across the wrap, forwards
    (2, 65534, 4),
    (65535, 0, -1),  # across the wrap, backwards (a late packet)
    (65534, 2, -4),
    (32767, 0, 32767),  # half way round: the largest forward step
    (32768, 0, -32768),  # one more is read as backwards
    (1, 65537, 0),  # ref is an extended number: only its low 16 bits count
])
def test_seq_delta(seq: int, ref: int, delta: int) -> None:
    assert seq_delta(seq, ref) == delta


def test_extend_seq_counts_on_past_the_wrap_and_places_late_packets_before_it() -> None:
    ext = 65530
    got = []
    for seq in (65531, 65533, 65532, 65535, 0, 65534, 2, 1, 3):  # reordered on both sides of the wrap
        e = extend_seq(seq, ext)
        assert e % SEQ_MOD == seq
        got.append(e)
        ext = max(ext, e)
    assert got == [65531, 65533, 65532, 65535, 65536, 65534, 65538, 65537, 65539]
    assert extend_seq(65535, 3 * SEQ_MOD + 2) == 3 * SEQ_MOD - 1  # a late one, three wraps on
    assert extend_seq(65535, 0) == -1  # before the first packet: below zero, not a wrap forwards


def test_extend_seq_large_jumps() -> None:
    assert extend_seq(30_000, 100) == 30_000  # within half the space: forwards
    assert extend_seq(40_000, 100) == 40_000 - SEQ_MOD  # more than half: read as backwards
    assert extend_seq(100, 70_000) == SEQ_MOD + 100  # 4364 back from 70000, same cycle


def test_jitter_buffer_releases_in_order_across_the_wrap() -> None:
    jb: JitterBuffer[int] = JitterBuffer(depth=3)
    out: list[tuple[int, int | None]] = []
    for seq in (65533, 65535, 65534, 1, 0, 2, 65535, 4, 3):  # 65535 again: late (already released)
        out += jb.put(seq, seq)
    out += jb.flush()
    assert [s for s, _ in out] == [65533, 65534, 65535, 0, 1, 2, 3, 4]
    assert all(item == s for s, item in out)
    assert jb.stats.late == 1 and jb.stats.lost == 0 and jb.stats.resets == 0


def test_receive_stats_count_one_cycle_for_a_reordered_wrap() -> None:
    s = ReceiveStats()
    for seq in (65533, 65535, 65534, 1, 0, 2, 65535, 4, 3):
        s.update(7, seq, 0, 0)
    assert s.cycles == SEQ_MOD and s.max_seq == 4 and s.extended_max == SEQ_MOD + 4
    assert s.expected == 8 and s.received == 9 and s.lost == -1  # 65535 twice
    s.update(7, 4 + 2999, 0, 0)  # the largest step A.1 still takes as a gap
    assert s.extended_max == SEQ_MOD + 3003 and s.expected == 3007
    s.update(7, 3003 - 99, 0, 0)  # 99 back: late, counted, the highest unchanged
    assert s.extended_max == SEQ_MOD + 3003 and s.received == 11
    s.update(7, 3003 - 100, 0, 0)  # 100 back: the sender restarted its numbering
    assert s.base_seq == 2903 and s.cycles == 0 and s.expected == 1 and s.received == 1
