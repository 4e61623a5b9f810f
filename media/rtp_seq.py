"""RTP sequence-number arithmetic: 16-bit numbers that wrap, against an extended counter.

:func:`seq_delta` is the signed distance between two 16-bit numbers (modulo 2^16, the
nearer way round); :func:`extend_seq` places a 16-bit number on an extended counter
(which counts on past 65535, and may be negative) next to a reference on it. What is
"late", "lost" or "a restart" is the caller's policy (the jitter buffer and the RFC 3550
A.1 receive statistics each have their own), not this module's.
"""

from __future__ import annotations

__all__ = ["SEQ_MOD", "extend_seq", "seq_delta"]

SEQ_MOD = 1 << 16
_HALF = SEQ_MOD >> 1


def seq_delta(seq: int, ref: int) -> int:
    """How far 16-bit ``seq`` is past ``ref`` (any int; its low 16 bits count), in [-32768, 32767].

    ``seq_delta(2, 65534) == 4`` (across the wrap), ``seq_delta(65534, 2) == -4``.
    """
    return ((seq - ref + _HALF) & 0xFFFF) - _HALF


def extend_seq(seq: int, ref: int) -> int:
    """The extended number of 16-bit ``seq`` nearest to the extended number ``ref``.

    ``extend_seq(1, 65535) == 65537`` (one wrap on), ``extend_seq(65535, 65537) == 65535`` (a late
    packet from before the wrap); ``result & 0xFFFF == seq & 0xFFFF`` always.
    """
    return ref + seq_delta(seq, ref)
