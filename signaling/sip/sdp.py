"""Plain-RTP SDP offer/answer (RFC 3264): G.711, G.722, Opus + RFC 4733 telephone-event.

:func:`parse_offer` extracts what the RTP session needs from a caller's offer
(remote IP address and port -- a host name is refused, nothing is looked up
--, the codec, the telephone-event payload type, direction). The codec is the
best common one by the server's preference (``--sip-codecs``, default
:data:`media.rtp_codecs.DEFAULT_PREFERENCE`: Opus, G.722, PCMU, PCMA): the first
of that list the caller offers, except that PCMU and PCMA count as one step
(the same audio), between which the caller's order decides. telephone-event is
taken at the chosen codec's clock (/48000 for Opus, /8000 otherwise), else at
whatever rate the caller offers it. :func:`build_answer` writes the matching
answer, rejecting other media lines with port 0; :meth:`SdpSession.build_offer`
writes our own offer listing the preference (an INVITE without SDP, outbound
calls).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from v2v.media.rtp_codecs import CODECS, DEFAULT_PREFERENCE, CodecInfo, codec_info

STATIC_PT = {0: "PCMU", 8: "PCMA", 9: "G722"}
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
RTP_PROFILES = ("RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF")  # SAVP: SDES-SRTP, negotiated by srtp.py
ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
G711 = ("PCMU", "PCMA")
OPUS_PT = 111  # our dynamic payload types when we offer
DTMF_PT = 101  # telephone-event/8000
DTMF48_PT = 110  # telephone-event/48000 (with Opus)
# our Opus receive and send parameters (RFC 7587): mono; the model hears and speaks 24 kHz, so nothing
# above 12 kHz is worth the caller's bits. No useinbandfec=1: FFmpeg's libopus decoder never asks libopus
# for the FEC data, so it would only cost the caller bandwidth (our encoder adds FEC when the caller asks).
OPUS_FMTP = "maxplaybackrate=24000;sprop-maxcapturerate=24000;stereo=0;sprop-stereo=0"


class SdpError(ValueError):
    """The offer is unusable (answer 488 Not Acceptable Here)."""


@dataclass
class MediaLine:
    kind: str
    port: int
    proto: str
    fmts: list[str]
    attrs: list[str] = field(default_factory=list)
    connection: str | None = None


@dataclass
class AudioOffer:
    address: str
    port: int
    codec: str  # a key of media.rtp_codecs.CODECS: PCMU | PCMA | G722 | OPUS
    payload_type: int
    dtmf_pt: int | None
    direction: str
    ptime: int
    media: list[MediaLine]
    audio_index: int
    dtmf_rate: int = 8000  # telephone-event's clock as offered
    fmtp: str = ""  # the caller's a=fmtp parameters for the chosen payload type
    offered: list[str] = field(default_factory=list)  # every audio format offered, "name/rate" (for logs)

    @property
    def on_hold(self) -> bool:
        """The caller does not want to receive (sendonly/inactive or c=0.0.0.0)."""
        return self.direction in ("sendonly", "inactive") or self.address in ("0.0.0.0", "::")

    @property
    def info(self) -> CodecInfo:
        return codec_info(self.codec)

    def fmtp_params(self) -> dict[str, str]:
        """The caller's fmtp for the codec as {name: value} (names lower case)."""
        return fmtp_params(self.fmtp)


def fmtp_params(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            out[name.strip().lower()] = value.strip()
    return out


def parse_sdp(text: str) -> tuple[str | None, list[MediaLine], list[str]]:
    session_c: str | None = None
    session_attrs: list[str] = []
    media: list[MediaLine] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        key, val = line[0], line[2:]
        if key == "m":
            parts = val.split()
            port = _number(parts[1].split("/")[0]) if len(parts) >= 4 else None
            if port is None or port > 65535:
                raise SdpError(f"bad m= line {val[:40]!r}")
            media.append(MediaLine(parts[0], port, parts[2], parts[3:]))
        elif key == "c":
            parts = val.split()
            if len(parts) != 3:
                raise SdpError("bad c= line")
            addr = parts[2].split("/")[0]
            if media:
                media[-1].connection = addr
            else:
                session_c = addr
        elif key == "a":
            (media[-1].attrs if media else session_attrs).append(val)
    return session_c, media, session_attrs


def _number(text: str) -> int | None:
    """An unsigned decimal of ASCII digits (``str.isdigit`` also takes '²', which int() refuses)."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 10 else None


@dataclass
class _Formats:
    """One m= line's payload types: (NAME, rate) by number, fmtp by number, in offer order."""

    order: list[int]
    rtpmap: dict[int, tuple[str, int]]
    fmtp: dict[int, str]
    ptime: int
    direction: str | None

    def name(self, pt: int) -> tuple[str, int]:
        return self.rtpmap.get(pt, (STATIC_PT.get(pt, ""), 8000))


def _formats(m: MediaLine) -> _Formats:
    rtpmap: dict[int, tuple[str, int]] = {}
    fmtp: dict[int, str] = {}
    ptime, direction = 20, None
    for a in m.attrs:
        if a.startswith(("rtpmap:", "fmtp:")):
            parts = a.partition(":")[2].split(None, 1)
            pt_n = _number(parts[0]) if parts else None
            rest = parts[1] if len(parts) > 1 else ""
            if pt_n is None:
                continue
            if a.startswith("fmtp:"):
                fmtp[pt_n] = rest.strip()
                continue
            enc_name, _, rate_s = rest.strip().partition("/")
            rate_n = _number(rate_s.partition("/")[0])
            if rate_n is not None and enc_name:  # a malformed rtpmap: that payload type stays unknown
                rtpmap[pt_n] = (enc_name.upper(), rate_n)
        elif a.startswith("ptime:") and _number(a[6:].strip()) is not None:
            ptime = int(a[6:].strip())
        elif a in DIRECTIONS:
            direction = a
    order = [p for p in (_number(f) for f in m.fmts) if p is not None and p <= 127]
    return _Formats(order, rtpmap, fmtp, ptime, direction)


def _rank(preference: Sequence[str]) -> dict[str, int]:
    """Codec key -> rank (lower is better); PCMU and PCMA share the better one's rank."""
    rank = {key: i for i, key in enumerate(preference)}
    g711 = [rank[k] for k in G711 if k in rank]
    for k in G711:
        if k in rank:
            rank[k] = min(g711)
    return rank


def choose(fm: _Formats, preference: Sequence[str]) -> tuple[str, int] | None:
    """The best common codec (key, payload type) of one m= line, or None."""
    rank = _rank(preference)
    best: tuple[int, str, int] | None = None
    for pt in fm.order:
        name, rate = fm.name(pt)
        info = CODECS.get(name)
        if info is None or info.clock_rate != rate or name not in rank:
            continue
        if best is None or rank[name] < best[0]:  # strictly better: ties keep the caller's first
            best = (rank[name], name, pt)
    return (best[1], best[2]) if best else None


def _dtmf(fm: _Formats, clock: int) -> tuple[int | None, int]:
    """telephone-event's payload type and rate: the one at the codec's clock, else the first offered."""
    events = [(pt, fm.name(pt)[1]) for pt in fm.order if fm.name(pt)[0] == "TELEPHONE-EVENT"]
    for pt, rate in events:
        if rate == clock:
            return pt, rate
    return events[0] if events else (None, clock)


def parse_offer(text: str, preference: Sequence[str] = DEFAULT_PREFERENCE) -> AudioOffer:
    """The first usable audio stream of an offer (or answer) with its best common codec."""
    session_c, media, session_attrs = parse_sdp(text)
    offered: list[str] = []
    for idx, m in enumerate(media):
        if m.kind != "audio" or m.port == 0 or m.proto.upper() not in RTP_PROFILES:
            continue
        fm = _formats(m)
        offered += [f"{n or pt}/{r}" for pt in fm.order for n, r in [fm.name(pt)] if n != "TELEPHONE-EVENT"]
        got = choose(fm, preference)
        if got is None:
            continue
        codec, pt = got
        dtmf_pt, dtmf_rate = _dtmf(fm, CODECS[codec].clock_rate)
        addr = m.connection or session_c
        if not addr:
            raise SdpError("no connection address")
        check_address(addr)
        direction = fm.direction or next((a for a in session_attrs if a in DIRECTIONS), "sendrecv")
        return AudioOffer(addr, m.port, codec, pt, dtmf_pt, direction, fm.ptime, media, idx,
                          dtmf_rate=dtmf_rate, fmtp=fm.fmtp.get(pt, ""), offered=offered)
    have = ",".join(offered[:6]) or "none"
    raise SdpError(f"no common codec: offered {have}; we take {','.join(preference).lower()}")


def check_address(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The c= address as an IP address; a host name is refused (no DNS lookup on a caller's word)."""
    try:
        return ipaddress.ip_address(addr.strip("[]"))
    except ValueError:
        raise SdpError(f"c= names a host ({addr[:40]!r}), not an IP address") from None


def codec_lines(info: CodecInfo, pt: int) -> list[str]:
    """a=rtpmap (and a=fmtp for Opus) of one codec at payload type ``pt``."""
    lines = [f"a=rtpmap:{pt} {info.rtpmap}"]
    if info.key == "OPUS":
        lines.append(f"a=fmtp:{pt} {OPUS_FMTP}")
    return lines


class SdpSession:
    """The server side's o= line: one session id, a version bumped per answer."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.session_id = int(time.time() * 1000) & 0x7FFFFFFF
        self.version = 0

    def _head(self) -> list[str]:
        ip = "IP6" if ":" in self.address else "IP4"
        return [
            "v=0",
            f"o=v2v {self.session_id} {self.version} IN {ip} {self.address}",
            "s=v2v",
            f"c=IN {ip} {self.address}",
            "t=0 0",
        ]

    def build_offer(self, port: int, dtmf_pt: int = DTMF_PT, codecs: Sequence[str] = DEFAULT_PREFERENCE) -> str:
        """Our offer (an INVITE without SDP, an outbound call): ``codecs`` in order, telephone-event at
        each clock they use (``dtmf_pt`` at 8000, :data:`DTMF48_PT` at 48000)."""
        self.version += 1
        infos = [codec_info(c) for c in codecs]
        pts = [i.static_pt if i.static_pt is not None else OPUS_PT for i in infos]
        events = [(r, dtmf_pt if r == 8000 else DTMF48_PT) for r in sorted({i.clock_rate for i in infos})]
        fmts = " ".join(str(p) for p in pts + [pt for _r, pt in events])
        lines = self._head() + [f"m=audio {port} RTP/AVP {fmts}"]
        for info, pt in zip(infos, pts, strict=True):
            lines += codec_lines(info, pt)
        for rate, pt in events:
            lines += [f"a=rtpmap:{pt} telephone-event/{rate}", f"a=fmtp:{pt} 0-16"]
        lines += ["a=ptime:20", "a=sendrecv"]
        return "\r\n".join(lines) + "\r\n"

    def build_answer(self, offer: AudioOffer, port: int, direction: str | None = None) -> str:
        self.version += 1
        direction = direction or ANSWER_DIRECTION.get(offer.direction, "sendrecv")
        lines = self._head()
        for idx, m in enumerate(offer.media):
            if idx != offer.audio_index:
                lines.append(f"m={m.kind} 0 {m.proto} {m.fmts[0] if m.fmts else '0'}")
                continue
            fmts = [str(offer.payload_type)]
            if offer.dtmf_pt is not None:
                fmts.append(str(offer.dtmf_pt))
            lines.append(f"m=audio {port} RTP/AVP {' '.join(fmts)}")
            lines += codec_lines(offer.info, offer.payload_type)
            if offer.dtmf_pt is not None:
                lines.append(f"a=rtpmap:{offer.dtmf_pt} telephone-event/{offer.dtmf_rate}")
                lines.append(f"a=fmtp:{offer.dtmf_pt} 0-16")
            lines.append("a=ptime:20")
            lines.append(f"a={direction}")
        return "\r\n".join(lines) + "\r\n"
