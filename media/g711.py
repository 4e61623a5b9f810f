"""G.711 PCMU (mu-law) and PCMA (A-law) with numpy lookup tables.

The tables are built once, vectorised, from the ITU-T G.711 / Sun reference
algorithm (the one CPython's ``audioop`` implements): encoding indexes a
65536-entry table by the int16 sample, decoding a 256-entry table by the byte.
"""

from __future__ import annotations

import numpy as np

_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _build_ulaw_encode() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int64) >> 2  # 14-bit
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), 8159) + 0x21
    seg = np.searchsorted(_SEG_UEND, mag, side="left")
    uval = (seg << 4) | ((mag >> (seg + 1)) & 0xF)
    out = np.where(seg >= 8, 0x7F ^ mask, uval ^ mask).astype(np.uint8)
    return _by_uint16(out)


def _build_alaw_encode() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int64) >> 3  # 13-bit
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_SEG_AEND, mag, side="left")
    shift = np.where(seg < 2, 1, seg)
    aval = (np.minimum(seg, 7) << 4) | ((mag >> shift) & 0xF)
    out = np.where(seg >= 8, 0x7F ^ mask, aval ^ mask).astype(np.uint8)
    return _by_uint16(out)


def _by_uint16(table_from_min: np.ndarray) -> np.ndarray:
    """Reorder a table indexed by (sample + 32768) to be indexed by sample.view(uint16)."""
    return np.roll(table_from_min, -32768)


def _build_ulaw_decode() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int64) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _build_alaw_decode() -> np.ndarray:
    a = np.arange(256, dtype=np.int64) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


ULAW_ENCODE = _build_ulaw_encode()
ALAW_ENCODE = _build_alaw_encode()
ULAW_DECODE = _build_ulaw_decode()
ALAW_DECODE = _build_alaw_decode()
ULAW_SILENCE = 0xFF
ALAW_SILENCE = 0xD5


def _as_index(pcm: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pcm, dtype=np.int16).view(np.uint16)


def ulaw_encode(pcm: np.ndarray) -> bytes:
    return ULAW_ENCODE[_as_index(pcm)].tobytes()


def alaw_encode(pcm: np.ndarray) -> bytes:
    return ALAW_ENCODE[_as_index(pcm)].tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    return ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def alaw_decode(data: bytes) -> np.ndarray:
    return ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


class G711Codec:
    """One codec by name ('PCMU' or 'PCMA') with its static RTP payload type."""

    def __init__(self, name: str) -> None:
        name = name.upper()
        if name == "PCMU":
            self.payload_type, self._enc, self._dec = 0, ULAW_ENCODE, ULAW_DECODE
        elif name == "PCMA":
            self.payload_type, self._enc, self._dec = 8, ALAW_ENCODE, ALAW_DECODE
        else:
            raise ValueError(f"not a G.711 codec: {name}")
        self.name = name
        self.sample_rate = 8000

    def encode(self, pcm: np.ndarray) -> bytes:
        return self._enc[_as_index(pcm)].tobytes()

    def decode(self, data: bytes) -> np.ndarray:
        return self._dec[np.frombuffer(data, dtype=np.uint8)]
