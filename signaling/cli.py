"""The ``v2v`` command: ``v2v serve`` (the server) and ``v2v call`` (a headless caller).

Every flag also reads an environment variable ``V2V_<FLAG>`` (``--max-calls``
-> ``V2V_MAX_CALLS``); a flag given on the command line wins. ``--help``
lists each flag with its variable and default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .config import LOG_FORMATS, MODELS, TURN_DETECTION, ServerConfig, parse_ice_servers


class EnvError(Exception):
    pass


def env_name(flag: str) -> str:
    return "V2V_" + flag.lstrip("-").replace("-", "_").upper()


def _add(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    type: Callable[[str], Any] = str,
    default: Any = None,
    help: str,
    choices: Sequence[str] | None = None,
    **kw: Any,
) -> None:
    """A flag whose default comes from V2V_<FLAG> when set."""
    env = env_name(flag)
    raw = os.environ.get(env)
    value = default
    if type is bool:  # a switch: --flag, or V2V_FLAG=1/true/yes/on
        on = raw is not None and raw.strip().lower() in ("1", "true", "yes", "on")
        parser.add_argument(flag, action="store_true", default=on or bool(default),
                            help=f"{help} [env {env}=1]")
        return
    if raw is not None and raw != "":
        try:
            value = type(raw)
        except (TypeError, ValueError) as e:
            raise EnvError(f"{env}={raw!r}: {e}") from e
        if choices is not None and value not in choices:
            raise EnvError(f"{env}={raw!r}: must be one of {', '.join(choices)}")
    shown = "off" if default is None or default == "" else ("none" if default == [] else default)
    parser.add_argument(
        flag, type=type, default=value, choices=choices, help=f"{help} [env {env}; default: {shown}]", **kw
    )


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _positive_float(value: str) -> float:
    f = float(value)
    if f <= 0:
        raise ValueError("must be > 0")
    return f


def _port(value: str) -> int:
    p = int(value)
    if not 0 <= p <= 65535:
        raise ValueError("port out of range")
    return p


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    parser = argparse.ArgumentParser(
        prog="v2v",
        description="v2v: a self-hosted real-time voice-to-voice media server.",
        epilog="Every flag can also be set with an environment variable V2V_<FLAG>, "
        "e.g. V2V_PORT=9000 or V2V_MODEL=echo. OpenAI: OPENAI_API_KEY, OPENAI_BASE_URL.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{serve,call}")

    s = sub.add_parser(
        "serve",
        help="run the signaling server with an in-process worker",
        description="Run the server: demo page at /, WebRTC offer/answer at /api/offer, "
        "/healthz, /readyz, /metrics. Prints the page's URL.",
    )
    g = s.add_argument_group("network")
    _add(g, "--host", default=d.host, help="address to listen on")
    _add(g, "--port", type=_port, default=d.port, help="HTTP port (0 picks a free one)")
    _add(g, "--max-body", type=int, default=d.max_body, help="largest HTTP request body in bytes (413 above)")
    _add(g, "--ice-server", type=_list, default=[], help="ICE servers, comma separated: stun:host:port, "
         "turn:user:pass@host:port (none: host candidates only)")
    g = s.add_argument_group("model")
    _add(g, "--model", default=d.model, choices=MODELS, help="model behind the assistant")
    _add(g, "--openai-model", default=d.openai_model, help="OpenAI Realtime model")
    _add(g, "--openai-base-url", default=os.environ.get("OPENAI_BASE_URL") or d.openai_base_url,
         help="OpenAI API base URL (also OPENAI_BASE_URL); the realtime WebSocket URL is derived from it")
    _add(g, "--turn-detection", default=d.turn_detection, choices=TURN_DETECTION,
         help="who ends the caller's turn: the model's server VAD or the local VAD (models without "
         "server VAD always use local)")
    _add(g, "--instructions", default=d.instructions or None, help="system instructions for the model")
    _add(g, "--voice", default=d.voice or None, help="model voice name")
    _add(g, "--greeting", default=d.greeting or None, help="what the assistant is asked to say when a caller joins")
    _add(g, "--app", default=d.app or None,
         help="application module (import path or .py file) imported at start: it may register RTVI "
              "client-message handlers, and its register_tools(registry) adds tools to every call")
    g = s.add_argument_group("calls")
    _add(g, "--max-calls", type=int, default=d.max_calls, help="concurrent calls; past it offers get 503 + Retry-After")
    _add(g, "--media-timeout", type=_positive_float, default=d.media_timeout,
         help="seconds without inbound media before a call is ended")
    _add(g, "--ice-timeout", type=_positive_float, default=d.ice_timeout,
         help="seconds for a peer connection to connect before the call is ended")
    g = s.add_argument_group("logs")
    _add(g, "--log-format", default=d.log_format, choices=LOG_FORMATS, help="log line format")
    _add(g, "--log-level", default=d.log_level, choices=("debug", "info", "warning", "error"), help="log level")
    g = s.add_argument_group("SIP")
    _add(g, "--sip-port", type=_port, default=None, nargs="?", const=5060,
         help="enable SIP over UDP and TCP on this port at --host (--sip-port alone: 5060)")
    _add(g, "--sip-ring-ms", type=int, default=d.sip_ring_ms, help="send 180 Ringing and wait this long before answering")
    _add(g, "--sip-user", type=_list, default=[], help="SIP users user:password, comma separated "
         "(REGISTER/INVITE need digest auth when set)")
    _add(g, "--sip-public-address", default=None, help="address written in SDP/Contact behind NAT")
    _add(g, "--rtp-ports", default=d.rtp_ports, help="UDP port range for SIP RTP media")

    c = sub.add_parser(
        "call",
        help="call a v2v server over WebRTC from the command line",
        description="A headless WebRTC caller: plays a WAV as the microphone, records the reply, and "
        "prints a JSON summary (connected time, time to first reply audio, reply duration, barge-in "
        "cut time when the WAV talks over the reply).",
    )
    c.add_argument("url", nargs="?" if os.environ.get("V2V_URL") else None,
                   default=os.environ.get("V2V_URL"),
                   help="server URL, e.g. http://127.0.0.1:8080 [env V2V_URL]")
    _add(c, "--play", default=None, help="WAV file (16-bit PCM) sent as the caller's microphone", required=
         not os.environ.get("V2V_PLAY"))
    _add(c, "--record", default=None, help="write the received audio to this WAV (48 kHz mono)")
    _add(c, "--seconds", type=_positive_float, default=None,
         help="stay this long after connecting (default: until the reply has ended)")
    _add(c, "--profile", default=None, help="agent profile sent as requestData.profile (e.g. echo)")
    _add(c, "--trickle", type=bool, default=False, help="send ICE candidates with PATCH instead of inside the offer")
    return parser


def config_from_args(a: argparse.Namespace) -> ServerConfig:
    cfg = ServerConfig(
        host=a.host,
        port=a.port,
        model=a.model,
        openai_model=a.openai_model,
        openai_base_url=a.openai_base_url,
        turn_detection=a.turn_detection,
        instructions=a.instructions or "",
        voice=a.voice or "",
        greeting=a.greeting or "",
        app=a.app or "",
        max_calls=a.max_calls,
        media_timeout=a.media_timeout,
        ice_timeout=a.ice_timeout,
        ice_servers=parse_ice_servers(a.ice_server),
        max_body=a.max_body,
        log_format=a.log_format,
        log_level=a.log_level,
        sip_port=a.sip_port,
        sip_ring_ms=a.sip_ring_ms,
        sip_users=a.sip_user,
        sip_public_address=a.sip_public_address,
        rtp_ports=a.rtp_ports,
    )
    cfg.validate()
    return cfg


def page_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def bound_port(runner: Any, default: int) -> int:
    """The TCP port the runner listens on (the real one when ``--port 0``), from aiohttp's public API."""
    for addr in runner.addresses:  # (host, port) for IPv4, (host, port, flow, scope) for IPv6
        if isinstance(addr, tuple) and len(addr) >= 2 and isinstance(addr[1], int):
            return addr[1]
    return default


async def serve(cfg: ServerConfig, ready: Callable[[str], None] | None = None) -> None:
    """Run the server until SIGINT/SIGTERM, then end every call gracefully."""
    from aiohttp import web

    from . import aiortc_tuning
    from .app import create_app

    aiortc_tuning.install()  # before the first peer connection; stock aiortc (one warning) if it cannot
    app = create_app(cfg)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        site = web.TCPSite(runner, cfg.host, cfg.port)
        await site.start()
        url = page_url(cfg.host, bound_port(runner, cfg.port))
        print(f"v2v serving on {url}  (model: {cfg.model}) - open it in a browser and talk", flush=True)
        if ready is not None:
            ready(url)
        await stop.wait()
        print("v2v: shutting down, ending all calls", file=sys.stderr, flush=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass
        await runner.cleanup()


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except EnvError as e:
        print(f"v2v: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command == "serve":
        try:
            cfg = config_from_args(args)
        except ValueError as e:
            parser.error(str(e))
        from .logs import setup_logging

        setup_logging(cfg.log_format, cfg.log_level)
        try:
            _run(serve(cfg))
        except OSError as e:
            print(f"v2v: cannot listen on {cfg.host}:{cfg.port}: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            pass
        return 0
    if args.command == "call":
        from .client import run_call

        if not args.url:
            parser.error("call: the server URL is required")
        request_data = {"profile": args.profile} if args.profile else None
        try:
            summary = _run(run_call(args.url, args.play, args.record, args.seconds, request_data, bool(args.trickle)))
        except KeyboardInterrupt:
            return 130
        except Exception as e:  # a refused offer, an unreachable server, a bad WAV
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
            return 1
        print(json.dumps(summary, indent=2))
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
