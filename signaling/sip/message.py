"""SIP message parse/serialise (RFC 3261 section 7).

A small, strict layer: requests and responses, compact header names expanded,
header folding unfolded, comma-separated Via/Contact/Route split into separate
values, Content-Length counted in bytes. Parsing raises :class:`SipParseError`
on anything malformed (the servers answer 400 or drop it; :func:`salvage_bad_request` builds that
400 when enough of the request is readable). :class:`StreamFramer` cuts
messages out of a byte stream (TCP) using Content-Length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_MESSAGE = 65535
MAX_HEADER_BYTES = 16384
MAX_HEADERS = 128

COMPACT = {
    "i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length",
    "c": "Content-Type", "f": "From", "s": "Subject", "k": "Supported", "t": "To",
    "v": "Via", "o": "Event", "u": "Allow-Events", "r": "Refer-To", "b": "Referred-By",
    "x": "Session-Expires", "a": "Accept-Contact", "j": "Reject-Contact", "d": "Request-Disposition",
    "y": "Identity",
}
CANONICAL = {n.lower(): n for n in (
    "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Content-Type",
    "Content-Length", "Route", "Record-Route", "Allow", "Supported", "Require", "User-Agent",
    "Server", "Expires", "Authorization", "WWW-Authenticate", "Proxy-Authorization",
    "Proxy-Authenticate", "Session-Expires", "Min-SE", "Accept", "Event", "Subject",
    "Content-Encoding", "Allow-Events", "Refer-To", "Referred-By", "Unsupported", "Reason",
)}
# headers whose values may be comma-separated lists (split on parse)
LIST_HEADERS = {"via", "contact", "route", "record-route"}
TOKEN_RE = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
REASONS = {
    100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 202: "Accepted",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 407: "Proxy Authentication Required", 408: "Request Timeout",
    415: "Unsupported Media Type", 420: "Bad Extension", 422: "Session Interval Too Small",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here", 491: "Request Pending",
    500: "Server Internal Error", 501: "Not Implemented", 503: "Service Unavailable",
    513: "Message Too Large",
}


class SipParseError(ValueError):
    """The bytes are not a well-formed SIP message."""


def canonical_name(name: str) -> str:
    low = name.lower()
    if low in COMPACT:
        return COMPACT[low]
    return CANONICAL.get(low, name)


def split_list(value: str) -> list[str]:
    """Split a header value on top-level commas (not inside <> or quotes)."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    quoted = False
    esc = False
    for ch in value:
        if esc:
            esc = False
        elif quoted and ch == "\\":
            esc = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and not quoted and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    tail = "".join(cur).strip()
    if tail:
        parts.append(tail)
    return [p for p in parts if p]


def parse_params(text: str) -> dict[str, str | None]:
    """`;a=b;c` -> {"a": "b", "c": None} (names lower-cased, values kept verbatim)."""
    out: dict[str, str | None] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip().lower()] = v.strip()
        else:
            out[part.lower()] = None
    return out


@dataclass
class Headers:
    """Ordered multi-valued headers with case-insensitive, compact-aware names."""

    items: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str, default: str | None = None) -> str | None:
        n = canonical_name(name).lower()
        for k, v in self.items:
            if k.lower() == n:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        n = canonical_name(name).lower()
        return [v for k, v in self.items if k.lower() == n]

    def add(self, name: str, value: str) -> None:
        self.items.append((canonical_name(name), value))

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self.add(name, value)

    def remove(self, name: str) -> None:
        n = canonical_name(name).lower()
        self.items = [(k, v) for k, v in self.items if k.lower() != n]

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def copy(self) -> Headers:
        return Headers(list(self.items))


@dataclass
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @classmethod
    def parse(cls, value: str) -> Via:
        m = re.match(r"^\s*SIP\s*/\s*2\.0\s*/\s*([A-Za-z]+)\s+([^;\s]+)\s*(;.*)?$", value)
        if not m:
            raise SipParseError(f"bad Via: {value[:80]!r}")
        hostport = m.group(2)
        host, port = split_hostport(hostport)
        return cls(m.group(1).upper(), host, port, parse_params(m.group(3) or ""))

    def __str__(self) -> str:
        hp = f"{self.host}:{self.port}" if self.port else self.host
        ps = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params.items())
        return f"SIP/2.0/{self.transport} {hp}{ps}"


def split_hostport(hp: str) -> tuple[str, int | None]:
    if hp.startswith("["):
        end = hp.find("]")
        if end < 0:
            raise SipParseError("bad IPv6 host")
        host, rest = hp[: end + 1], hp[end + 1 :]
        if rest.startswith(":"):
            return host, _port(rest[1:])
        return host, None
    if ":" in hp:
        h, p = hp.rsplit(":", 1)
        return h, _port(p)
    return hp, None


def _port(p: str) -> int:
    if not p.isdigit() or not 0 < int(p) < 65536:
        raise SipParseError(f"bad port {p!r}")
    return int(p)


@dataclass
class NameAddr:
    """`"Name" <sip:user@host;uri-params>;tag=x` or a bare URI with params."""

    display: str
    uri: str
    params: dict[str, str | None]

    @classmethod
    def parse(cls, value: str) -> NameAddr:
        value = value.strip()
        if "<" in value:
            lt = value.index("<")
            gt = value.find(">", lt)
            if gt < 0:
                raise SipParseError("unterminated <uri>")
            display = value[:lt].strip().strip('"')
            return cls(display, value[lt + 1 : gt].strip(), parse_params(value[gt + 1 :]))
        if not value:
            raise SipParseError("empty address")
        uri, _, params = value.partition(";")
        return cls("", uri.strip(), parse_params(params))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        d = f'"{self.display}" ' if self.display else ""
        ps = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params.items())
        return f"{d}<{self.uri}>{ps}"


@dataclass
class SipUri:
    scheme: str
    user: str
    host: str
    port: int | None
    params: dict[str, str | None]

    @classmethod
    def parse(cls, uri: str) -> SipUri:
        m = re.match(r"^(sips?|tel):(.*)$", uri.strip(), re.I)
        if not m:
            raise SipParseError(f"bad URI {uri[:80]!r}")
        scheme, rest = m.group(1).lower(), m.group(2)
        rest = rest.split("?", 1)[0]
        main, _, params = rest.partition(";")
        user, _, hostport = main.rpartition("@")
        if scheme == "tel":
            return cls(scheme, main, "", None, parse_params(params))
        user = user.split(":", 1)[0]
        if not hostport:
            raise SipParseError("URI without host")
        host, port = split_hostport(hostport)
        return cls(scheme, user, host, port, parse_params(params))


@dataclass
class SipMessage:
    headers: Headers
    body: bytes = b""

    # ---- typed helpers
    def header(self, name: str) -> str:
        v = self.headers.get(name)
        if v is None:
            raise SipParseError(f"missing {name}")
        return v

    @property
    def call_id(self) -> str:
        return self.header("Call-ID")

    @property
    def cseq(self) -> tuple[int, str]:
        parts = self.header("CSeq").split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SipParseError("bad CSeq")
        return int(parts[0]), parts[1].upper()

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    @property
    def from_(self) -> NameAddr:
        return NameAddr.parse(self.header("From"))

    @property
    def to(self) -> NameAddr:
        return NameAddr.parse(self.header("To"))

    @property
    def contact(self) -> NameAddr | None:
        v = self.headers.get("Contact")
        return NameAddr.parse(v) if v and v.strip() != "*" else None

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    def _head(self) -> str:
        raise NotImplementedError

    def serialize(self) -> bytes:
        lines = [self._head()]
        for k, v in self.headers.items:
            if k.lower() == "content-length":
                continue
            lines.append(f"{k}: {v}")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body

    def __bytes__(self) -> bytes:
        return self.serialize()


@dataclass
class SipRequest(SipMessage):
    method: str = ""
    uri: str = ""

    def _head(self) -> str:
        return f"{self.method} {self.uri} SIP/2.0"

    @property
    def request_uri(self) -> SipUri:
        return SipUri.parse(self.uri)

    def validate(self) -> None:
        """Parse every Via, From and To now (raises :class:`SipParseError`)."""
        for v in self.headers.get_all("Via"):
            Via.parse(v)
        NameAddr.parse(self.header("From"))
        NameAddr.parse(self.header("To"))


@dataclass
class SipResponse(SipMessage):
    status: int = 0
    reason: str = ""

    def _head(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason}"


REQUIRED = ("Via", "From", "To", "Call-ID", "CSeq")


def parse(data: bytes, *, stream: bool = False) -> SipRequest | SipResponse:
    """Parse one whole message. ``stream`` transports require Content-Length."""
    lines, body = _split_head(data)
    msg = _start_line(lines[0])
    for ln in lines[1:]:
        _add_header(msg, ln)
    for req in REQUIRED:
        if req not in msg.headers:
            raise SipParseError(f"missing {req}")
    _, cseq_method = msg.cseq  # validates CSeq
    if isinstance(msg, SipRequest) and cseq_method != msg.method:
        raise SipParseError("CSeq method differs from request method")
    msg.body = _body(msg, body, stream)
    return msg


def _split_head(data: bytes) -> tuple[list[str], bytes]:
    """The header lines (continuations unfolded, RFC 3261 7.3.1) and the raw body."""
    if len(data) > MAX_MESSAGE:
        raise SipParseError("message too large")
    sep = data.find(b"\r\n\r\n")
    if sep < 0:
        raise SipParseError("no end of headers")
    if sep > MAX_HEADER_BYTES:
        raise SipParseError("headers too large")
    try:
        head = data[:sep].decode("utf-8")
    except UnicodeDecodeError as e:
        raise SipParseError("headers are not UTF-8") from e
    if "\x00" in head:
        raise SipParseError("NUL in headers")
    lines: list[str] = []
    for ln in head.split("\r\n"):
        if ln[:1] in (" ", "\t") and lines:
            lines[-1] += " " + ln.strip()
        else:
            lines.append(ln)
    if len(lines) - 1 > MAX_HEADERS:
        raise SipParseError("too many headers")
    return lines, data[sep + 4 :]


def _start_line(start: str) -> SipRequest | SipResponse:
    if start.startswith("SIP/2.0 "):
        parts = start.split(" ", 2)
        if len(parts) < 2 or not (parts[1].isdigit() and len(parts[1]) == 3):
            raise SipParseError("bad status line")
        return SipResponse(Headers(), status=int(parts[1]), reason=parts[2] if len(parts) > 2 else "")
    parts = start.split(" ")
    if len(parts) != 3 or parts[2] != "SIP/2.0" or not TOKEN_RE.match(parts[0]) or not parts[1]:
        raise SipParseError("bad request line")
    if ":" not in parts[1]:
        raise SipParseError("bad request URI")
    return SipRequest(Headers(), method=parts[0].upper(), uri=parts[1])


def _add_header(msg: SipMessage, ln: str) -> None:
    if ":" not in ln:
        raise SipParseError(f"bad header line {ln[:40]!r}")
    name, value = ln.split(":", 1)
    name = name.strip()
    if not name or not TOKEN_RE.match(name):
        raise SipParseError("bad header name")
    cname = canonical_name(name)
    if cname.lower() in LIST_HEADERS:
        for v in split_list(value):
            msg.headers.add(cname, v)
    else:
        msg.headers.add(cname, value.strip())


def _body(msg: SipMessage, body: bytes, stream: bool) -> bytes:
    cl = msg.headers.get("Content-Length")
    if cl is None:
        if stream:
            raise SipParseError("Content-Length required on stream transports")
        return body
    if not cl.isdigit():
        raise SipParseError("bad Content-Length")
    n = int(cl)
    if n > len(body):
        raise SipParseError("body shorter than Content-Length")
    return body[:n]


class StreamFramer:
    """Cuts SIP messages out of a TCP byte stream using Content-Length.

    ``feed`` returns complete message byte strings; CRLF keep-alives are
    skipped. Raises :class:`SipParseError` when the stream cannot be framed
    (the connection should then be closed).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.keepalives = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while True:
            # leading CRLFs: keep-alive pings (RFC 5626 uses CRLFCRLF)
            stripped = 0
            while self._buf[stripped : stripped + 2] == b"\r\n":
                stripped += 2
            if stripped:
                self.keepalives += 1
                del self._buf[:stripped]
            sep = self._buf.find(b"\r\n\r\n")
            if sep < 0:
                if len(self._buf) > MAX_HEADER_BYTES:
                    raise SipParseError("headers too large")
                return out
            if sep > MAX_HEADER_BYTES:
                raise SipParseError("headers too large")
            head = bytes(self._buf[:sep])
            m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\S*)[ \t]*$", head)
            if not m or not m.group(1).isdigit():
                raise SipParseError("no usable Content-Length on stream")
            n = int(m.group(1))
            if n > MAX_MESSAGE:
                raise SipParseError("body too large")
            total = sep + 4 + n
            if len(self._buf) < total:
                return out
            out.append(bytes(self._buf[:total]))
            del self._buf[:total]


def make_response(req: SipRequest, status: int, reason: str | None = None, *,
                  to_tag: str | None = None, body: bytes = b"",
                  extra: list[tuple[str, str]] | None = None) -> SipResponse:
    """A response copying Via (all), From, To (+tag), Call-ID, CSeq from ``req``."""
    h = Headers()
    for v in req.headers.get_all("Via"):
        h.add("Via", v)
    for name in ("From", "To", "Call-ID", "CSeq"):
        val = req.header(name)
        if name == "To" and to_tag and NameAddr.parse(val).tag is None:
            val = f"{val};tag={to_tag}"
        h.add(name, val)
    for k, v in extra or []:
        h.add(k, v)
    return SipResponse(h, body, status=status, reason=reason or REASONS.get(status, "Unknown"))


_HDR = re.compile(r"(?im)^(via|v|from|f|to|t|call-id|i|cseq)[ \t]*:[ \t]*(.*?)[ \t]*$")


def salvage_bad_request(data: bytes) -> SipResponse | None:
    """Build a 400 for a request we could not parse, if it can be answered at all."""
    try:
        text = data[:8192].decode("utf-8", "strict")
    except UnicodeDecodeError:
        return None
    first = text.split("\r\n", 1)[0]
    if first.startswith("SIP/2.0") or not re.match(r"^[A-Z]+ \S+ SIP/2\.0$", first):
        return None
    if first.startswith("ACK "):
        return None
    found: dict[str, str] = {}
    vias: list[str] = []
    names = {"v": "via", "f": "from", "t": "to", "i": "call-id"}
    for m in _HDR.finditer(text.split("\r\n\r\n", 1)[0]):
        name = names.get(m.group(1).lower(), m.group(1).lower())
        if name == "via":
            vias.append(m.group(2))
        else:
            found.setdefault(name, m.group(2))
    if not vias or not all(k in found for k in ("from", "to", "call-id", "cseq")):
        return None
    try:
        Via.parse(vias[0].split(",")[0])
    except SipParseError:
        return None
    h = Headers()
    for v in vias:
        h.add("Via", v)
    for k, n in (("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq")):
        h.add(n, found[k])
    return SipResponse(h, b"", status=400, reason="Bad Request")
