"""``v2v dial``: place an outbound call through a running server's trunk and print the outcome.

``v2v dial sip:+15551234567@trunk.example --profile NAME [--server URL] [--token T]``
posts to the server's ``POST /api/calls/dial`` (see :mod:`.sip.outbound`), waits
for the outcome and prints its JSON. The exit status says how it went:
0 answered, 3 busy, 4 no answer, 5 rejected, 1 failed or refused by the server.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

__all__ = ["EXIT", "add_dial_parser", "dial", "main_dial"]

EXIT = {"answered": 0, "busy": 3, "no-answer": 4, "rejected": 5, "failed": 1}
DEFAULT_SERVER = "http://127.0.0.1:8080"


def add_dial_parser(sub: Any, add: Callable[..., None]) -> None:
    """The ``dial`` subcommand; ``add`` is the CLI's flag helper (environment variables V2V_<FLAG>)."""
    d = sub.add_parser(
        "dial",
        help="place an outbound call through a running server's SIP trunk",
        description="Ask a running `v2v serve --sip-trunk ...` to call a number or SIP URI; the answered call is "
        "handled by the agent profile like an inbound one. Prints the outcome as JSON (answered with its call_id, "
        "busy, no-answer, rejected with the SIP status, failed); exit status 0 answered, 3 busy, 4 no answer, "
        "5 rejected, 1 failed.",
    )
    d.add_argument("to", help="whom to call: sip:+15551234567@trunk.example, tel:+15551234567 or +15551234567")
    add(d, "--profile", default=None, help="agent profile that talks to the callee (default: the server's)")
    add(d, "--server", default=DEFAULT_SERVER, help="the server's URL")
    add(d, "--token", default=None, help="access token (Authorization: Bearer) for a server with --auth-secret")
    add(d, "--timeout", type=float, default=None, help="seconds to let it ring (default: the server's "
        "--sip-dial-timeout)")


async def dial(server: str, to: str, profile: str | None = None, token: str | None = None,
               timeout: float | None = None) -> tuple[int, dict[str, Any]]:
    """POST the dial request; -> (HTTP status, JSON body)."""
    import aiohttp

    body: dict[str, Any] = {"to": to}
    if profile:
        body["profile"] = profile
    if timeout:
        body["timeout"] = timeout
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # the server answers once the call is answered or over: ringing time plus SIP's 32 s at most
    limit = aiohttp.ClientTimeout(total=(timeout or 300.0) + 60.0)
    async with aiohttp.ClientSession(timeout=limit) as s, s.post(
            server.rstrip("/") + "/api/calls/dial", json=body, headers=headers) as r:
        try:
            data = await r.json(content_type=None)
        except ValueError:
            data = {"error": (await r.text())[:200]}
        return r.status, data if isinstance(data, dict) else {"error": str(data)[:200]}


def main_dial(parser: argparse.ArgumentParser, args: argparse.Namespace, run: Callable[[Any], Any]) -> int:
    """Run ``v2v dial`` with ``run`` (the CLI's event-loop runner); print the JSON; the exit status."""
    if args.timeout is not None and args.timeout <= 0:
        parser.error("dial: --timeout must be > 0")
    try:
        status, out = run(dial(args.server, args.to, args.profile, args.token, args.timeout))
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # the server is unreachable, or its answer is not HTTP
        print(json.dumps({"outcome": "failed", "error": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps({"http_status": status, **out}, indent=2))
    return EXIT.get(str(out.get("outcome")), 1)
