"""CPU per call-second of SDES-SRTP on a plain-RTP call (issue 12): protect out, unprotect in.

Single thread, ``time.process_time``, best of ``--repeat`` runs over ``--seconds`` of a
call: 50 RTP packets a second each way (20 ms), as an ``RtpSession`` with an SRTP
protector handles them (:class:`v2v.signaling.sip.srtp.CallSrtp`, pylibsrtp/libsrtp):

- out: protect one packet (the payload size of the codec: PCMU 160 bytes, G.722 160,
  Opus ~80 at 32 kbit/s);
- in: unprotect one packet of the caller's (made by the peer's protector, outside the timing);
- plus one SRTCP report each way every 5 s (RTCP's interval).

Reported per suite and payload size: CPU ms per call-second for both directions, and the
per-packet cost in microseconds; for comparison the plain path's cost is 0 (the hook is
skipped). Writes ``bench/results/srtp.json``.

    python3 bench/srtp_bench.py [--seconds 60] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from v2v.signaling.sip.srtp import SUITES, CallSrtp, SrtpPlan  # noqa: E402  # after the sys.path line

PAYLOADS = {"PCMU": 160, "G722": 160, "OPUS": 80}


def packet(seq: int, size: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, 0x1234) + bytes(size)


def rtcp_rr() -> bytes:
    return struct.pack("!BBHIIIIIII", 0x81, 201, 7, 0x1234, 0x5678, 0, 0, 0, 0, 0)


def pair(suite: str) -> tuple[CallSrtp, SrtpPlan]:
    """Our call's SRTP (as RtpSession holds it) and the caller's plan."""
    ours = SrtpPlan(1, suite)
    theirs = SrtpPlan(1, suite, remote_key=ours.local_key)
    ours.remote_key = theirs.local_key
    call = CallSrtp("allow")
    call.plan, call.current = ours, ours.protector()
    return call, theirs


def run(suite: str, size: int, seconds: int) -> float:
    """CPU seconds of one call's SRTP for ``seconds`` of call."""
    call, theirs = pair(suite)
    peer = theirs.protector()
    n = seconds * 50
    inbound = [peer.protect(packet(i, size)) for i in range(n)]
    inbound_rtcp = [peer.protect(rtcp_rr()) for _ in range(seconds // 5)]
    outbound = [packet(i, size) for i in range(n)]
    t0 = time.process_time()
    for i in range(n):
        call.protect(outbound[i])
        call.unprotect(inbound[i] or b"")
        if i % 250 == 0 and i // 250 < len(inbound_rtcp):
            call.protect(rtcp_rr())
            call.unprotect(inbound_rtcp[i // 250] or b"")
    dt = time.process_time() - t0
    assert call.current is not None and call.current.stats.unprotected >= n, call.current.stats if call.current else None
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for suite in SUITES:
        for codec, size in PAYLOADS.items():
            best = min(run(suite, size, args.seconds) for _ in range(args.repeat))
            rows.append({"suite": suite, "codec": codec, "payload_bytes": size,
                         "cpu_ms_per_call_s": round(best * 1000 / args.seconds, 3),
                         "us_per_packet": round(best * 1e6 / (args.seconds * 100), 2)})
            print(f"{suite:26s} {codec:5s} {size:4d} B: {rows[-1]['cpu_ms_per_call_s']:.3f} ms per call-second "
                  f"({rows[-1]['us_per_packet']:.2f} us per packet, protect or unprotect)")
    out = ROOT / "bench" / "results" / "srtp.json"
    out.write_text(json.dumps({"seconds": args.seconds, "repeat": args.repeat, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
