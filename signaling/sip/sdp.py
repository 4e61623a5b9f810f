"""Plain-RTP SDP offer/answer (RFC 3264) for G.711 + RFC 4733 telephone-event.

:func:`parse_offer` extracts what the RTP session needs from a caller's offer
(remote IP address and port -- a host name is refused, nothing is looked up
--, codec choice: the caller's first preference among PCMU and PCMA, the
telephone-event payload type, direction); :func:`build_answer` writes the
matching answer, rejecting other media lines with port 0.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field

STATIC_PT = {0: "PCMU", 8: "PCMA"}
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


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
    codec: str  # PCMU | PCMA
    payload_type: int
    dtmf_pt: int | None
    direction: str
    ptime: int
    media: list[MediaLine]
    audio_index: int

    @property
    def on_hold(self) -> bool:
        """The caller does not want to receive (sendonly/inactive or c=0.0.0.0)."""
        return self.direction in ("sendonly", "inactive") or self.address in ("0.0.0.0", "::")


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


def parse_offer(text: str) -> AudioOffer:
    session_c, media, session_attrs = parse_sdp(text)
    for idx, m in enumerate(media):
        if m.kind != "audio" or m.port == 0 or m.proto.upper() not in ("RTP/AVP", "RTP/AVPF"):
            continue
        rtpmap: dict[int, tuple[str, int]] = {}
        ptime = 20
        direction = next((a for a in session_attrs if a in DIRECTIONS), "sendrecv")
        for a in m.attrs:
            if a.startswith("rtpmap:"):
                try:
                    pt_s, enc = a[7:].split(None, 1)
                    enc_name, rate_s = enc.split("/")[:2]
                    pt_n, rate_n = _number(pt_s), _number(rate_s)
                    if pt_n is not None and rate_n is not None:
                        rtpmap[pt_n] = (enc_name.upper(), rate_n)
                except ValueError:  # a malformed rtpmap: that payload type stays unknown
                    continue
            elif a.startswith("ptime:") and _number(a[6:].strip()) is not None:
                ptime = int(a[6:].strip())
            elif a in DIRECTIONS:
                direction = a
        codec: str | None = None
        pt: int | None = None
        dtmf_pt: int | None = None
        for f in m.fmts:
            p_n = _number(f)
            if p_n is None or p_n > 127:
                continue
            p = p_n
            name, rate = rtpmap.get(p, (STATIC_PT.get(p, ""), 8000))
            if codec is None and name in ("PCMU", "PCMA") and rate == 8000:
                codec, pt = name, p
            if dtmf_pt is None and name == "TELEPHONE-EVENT" and rate == 8000:
                dtmf_pt = p
        if codec is None or pt is None:
            continue
        addr = m.connection or session_c
        if not addr:
            raise SdpError("no connection address")
        check_address(addr)
        return AudioOffer(addr, m.port, codec, pt, dtmf_pt, direction, ptime, media, idx)
    raise SdpError("no RTP/AVP audio stream with PCMU or PCMA")


def check_address(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The c= address as an IP address; a host name is refused (no DNS lookup on a caller's word)."""
    try:
        return ipaddress.ip_address(addr.strip("[]"))
    except ValueError:
        raise SdpError(f"c= names a host ({addr[:40]!r}), not an IP address") from None


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

    def build_offer(self, port: int, dtmf_pt: int = 101) -> str:
        """Our offer when the INVITE had none: PCMU, PCMA, telephone-event."""
        self.version += 1
        lines = self._head() + [
            f"m=audio {port} RTP/AVP 0 8 {dtmf_pt}",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:8 PCMA/8000",
            f"a=rtpmap:{dtmf_pt} telephone-event/8000",
            f"a=fmtp:{dtmf_pt} 0-16",
            "a=ptime:20",
            "a=sendrecv",
        ]
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
            lines.append(f"a=rtpmap:{offer.payload_type} {offer.codec}/8000")
            if offer.dtmf_pt is not None:
                lines.append(f"a=rtpmap:{offer.dtmf_pt} telephone-event/8000")
                lines.append(f"a=fmtp:{offer.dtmf_pt} 0-16")
            lines.append("a=ptime:20")
            lines.append(f"a={direction}")
        return "\r\n".join(lines) + "\r\n"
