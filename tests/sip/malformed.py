"""A corpus of malformed SIP messages and what the server must do with each.

``expect`` is "400" (answered Bad Request: the message names enough of a
transaction to answer) or "drop" (silently ignored). Nothing else is allowed:
no other response, no crash, no effect on calls in progress. ``{port}`` and
``{transport}`` are filled in per transport.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Case:
    name: str
    data: bytes
    expect: str  # "400" | "drop"
    stream_expect: str | None = None  # a different outcome on TCP (framing), if any


def _req(method: str = "OPTIONS", *, uri: str = "sip:echo@127.0.0.1", via: str | None = None,
         call_id: str | None = "bad-{n}", cseq: str | None = "1 {method}", extra: list[str] | None = None,
         body: bytes = b"", content_length: str | None = None, start: str | None = None) -> bytes:
    lines = [start or f"{method} {uri} SIP/2.0"]
    lines.append(via if via is not None else "Via: SIP/2.0/{transport} 127.0.0.1:{port};branch=z9hG4bKbad{n};rport")
    lines.append("From: <sip:fuzz@127.0.0.1>;tag=f{n}")
    lines.append("To: <sip:echo@127.0.0.1>")
    if call_id is not None:
        lines.append(f"Call-ID: {call_id}")
    if cseq is not None:
        lines.append(f"CSeq: {cseq.format(method=method)}")
    lines.append("Max-Forwards: 70")
    lines += extra or []
    lines.append(f"Content-Length: {content_length if content_length is not None else len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def corpus() -> list[Case]:
    rnd = os.urandom  # binary garbage differs per run; the outcome must not
    return [
        Case("binary garbage", rnd(300).replace(b"\r\n\r\n", b"xxxx"), "drop"),
        Case("binary garbage with CRLFCRLF", rnd(200) + b"\r\nContent-Length: 0\r\n\r\n", "drop"),
        Case("truncated in the headers", _req()[:60] + b"\r\n\r\n", "drop"),
        Case("truncated body (Content-Length too big)", _req("INVITE", body=b"v=0\r\n", content_length="400",
                                                             extra=["Content-Type: application/sdp"]), "400",
             stream_expect="drop"),  # on a stream it waits for the rest of the body
        Case("non-numeric Content-Length", _req(content_length="ten"), "400"),
        Case("negative Content-Length", _req(content_length="-5"), "400"),
        Case("missing Call-ID", _req(call_id=None), "drop"),
        Case("missing CSeq", _req(cseq=None), "drop"),
        Case("CSeq method differs", _req("OPTIONS", cseq="1 INVITE"), "400"),
        Case("CSeq not a number", _req(cseq="abc {method}"), "400"),
        Case("bad request line", _req(start="OPTIONS  sip:echo@127.0.0.1 SIP/2.0"), "drop"),
        Case("bad SIP version", _req(start="OPTIONS sip:echo@127.0.0.1 SIP/7.0"), "drop"),
        Case("request-URI without scheme", _req(start="OPTIONS nonsense SIP/2.0"), "400"),
        Case("bad Via port", _req(via="Via: SIP/2.0/{transport} 127.0.0.1:99999;branch=z9hG4bKx{n}"), "drop"),
        Case("header line without colon", _req(extra=["This is not a header"]), "400"),
        Case("huge header", _req(extra=["X-Filler: " + "a" * 20000]), "400"),
        Case("too many headers", _req(extra=[f"X-H{i}: {i}" for i in range(200)]), "400"),
        Case("NUL in a header", _req(extra=["Subject: a\x00b"]), "400"),
        Case("invalid UTF-8 in headers", _req(extra=["Subject: \xff\xfe"]).replace(b"\xc3\xbf\xc3\xbe", b"\xff\xfe"), "drop"),
        Case("stray response", b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKnone\r\n"
             b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: stray-{n}\r\nCSeq: 1 BYE\r\n"
             b"Content-Length: 0\r\n\r\n", "drop"),
        Case("INVITE with garbage SDP", _req("INVITE", body=b"this is not sdp\r\n",
                                             extra=["Content-Type: application/sdp", "Contact: <sip:fuzz@127.0.0.1>"]),
             "488"),
    ]


def render(case: Case, transport: str, port: int, n: int) -> bytes:
    return (case.data.replace(b"{transport}", transport.encode()).replace(b"{port}", str(port).encode())
            .replace(b"{n}", str(n).encode()))
