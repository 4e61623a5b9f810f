"""The ``v2v`` command: ``v2v serve`` (the server), ``v2v worker`` (a headless pool worker)
and ``v2v call`` (a headless caller).

The ``serve`` and ``worker`` flags are generated from :class:`~v2v.signaling.config.ServerConfig`'s
fields (flag, type, default, help and group from each field's metadata), so a
flag cannot drift from its setting. Every flag also reads an environment
variable ``V2V_<FLAG>`` (``--max-calls`` -> ``V2V_MAX_CALLS``); a flag given on
the command line wins. ``--help`` lists each flag with its variable and default.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .config import ServerConfig
from .dial_cli import add_dial_parser, main_dial


class EnvError(Exception):
    pass


class _Adds(Protocol):
    def add_argument(self, *args: Any, **kwargs: Any) -> Any: ...


def env_name(flag: str) -> str:
    return "V2V_" + flag.lstrip("-").replace("-", "_").upper()


def _shown(default: Any) -> Any:
    if default is None or default == "":
        return "off"
    if default in ([], {}):
        return "none"
    return default


def _add(
    parser: _Adds,
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
        kw.pop("metavar", None)  # a switch takes no value
        parser.add_argument(flag, action="store_true", default=on or bool(default),
                            help=f"{help} [env {env}=1]", **kw)
        return
    if raw is not None and raw != "":
        try:
            value = type(raw)
        except (TypeError, ValueError) as e:
            raise EnvError(f"{env}={raw!r}: {e}") from e
        if choices is not None and value not in choices:
            raise EnvError(f"{env}={raw!r}: must be one of {', '.join(choices)}")
    parser.add_argument(
        flag, type=type, default=value, choices=choices, help=f"{help} [env {env}; default: {_shown(default)}]", **kw
    )


# -- flags generated from ServerConfig ------------------------------------------------

_HINTS = typing.get_type_hints(ServerConfig)
GROUP_ORDER = ("network", "access", "model", "calls", "logs", "SIP", "pool")
_ENV_FALLBACK = {"openai_base_url": "OPENAI_BASE_URL"}  # a non-V2V variable read when the V2V_ one is not set


def _scalar_type(hint: Any) -> Any:
    """``int | None`` -> int; str, int, float, bool as they are."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def config_fields(command: str) -> list[dataclasses.Field]:
    """The ServerConfig fields that ``v2v <command>`` takes as flags, in ``--help`` order."""
    out = [f for f in dataclasses.fields(ServerConfig) if command in f.metadata.get("commands", ())]
    def rank(f: dataclasses.Field) -> int:
        group = f.metadata["group"]
        return GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER)

    return sorted(out, key=rank)


def flag_of(f: dataclasses.Field) -> str:
    return str(f.metadata.get("flag") or "--" + f.name.replace("_", "-"))


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def add_config_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """One flag per ServerConfig field that ``command`` takes, grouped as in --help."""
    groups: dict[str, Any] = {}
    for f in config_fields(command):
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        default = _field_default(f)
        fallback = _ENV_FALLBACK.get(f.name)
        if fallback and os.environ.get(fallback):
            default = os.environ[fallback]
        parse = meta.get("parse") or _scalar_type(_HINTS[f.name])
        kw = {"metavar": None if meta.get("choices") else flag_of(f).lstrip("-").replace("-", "_").upper(),
              **meta.get("argparse", {})}
        _add(group, flag_of(f), type=parse, default=default, help=meta["help"], choices=meta.get("choices"),
             dest=f.name, **kw)


def config_from_args(a: argparse.Namespace, command: str = "serve") -> ServerConfig:
    """The ServerConfig of parsed ``serve``/``worker`` flags; ValueError on an impossible setting."""
    values: dict[str, Any] = {}
    for f in config_fields(command):
        value = getattr(a, f.name)
        convert = f.metadata.get("convert")
        values[f.name] = convert(value) if convert is not None else value
    cfg = ServerConfig(**values)
    cfg.validate()
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="v2v",
        description="v2v: a self-hosted real-time voice-to-voice media server.",
        epilog="Every flag can also be set with an environment variable V2V_<FLAG>, "
        "e.g. V2V_PORT=9000 or V2V_MODEL=echo. OpenAI: OPENAI_API_KEY, OPENAI_BASE_URL.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{serve,worker,call,token,dial}")

    s = sub.add_parser(
        "serve",
        help="run the server (calls in this process, or a pool with --workers / --redis)",
        description="Run the server: demo page at /, WebRTC offer/answer at /api/offer, "
        "/healthz, /readyz, /metrics. Prints the page's URL. With --workers N it supervises N local "
        "worker processes; with --redis URL it is a signaling node of a Redis pool.",
    )
    add_config_flags(s, "serve")
    w = sub.add_parser(
        "worker",
        help="run a headless pool worker (holds calls; registers in Redis with --redis)",
        description="A headless worker: holds calls (WebRTC peer connections, SIP RTP media, the call "
        "pipeline, model sessions) handed to it by signaling nodes; /healthz, /readyz, /metrics on --port. "
        "SIGTERM drains: no new calls, the current ones finish (at most --drain-timeout).",
    )
    add_config_flags(w, "worker")
    _add_call_parser(sub)
    _add_token_parser(sub)
    add_dial_parser(sub, _add)
    return parser


def _add_token_parser(sub: Any) -> None:
    t = sub.add_parser(
        "token",
        help="print an access token for a server started with --auth-secret",
        description="Print a signed access token (JWT HS256) for `v2v serve --auth-secret SECRET`. An "
        "application's backend mints these for its users (PyJWT or any JWT library), so the secret never "
        "reaches a browser.",
    )
    _add(t, "--secret", default=None, help="the server's --auth-secret", required=not os.environ.get("V2V_SECRET"))
    _add(t, "--ttl", type=_positive_float, default=600.0, help="seconds the token is valid")
    _add(t, "--profile", default=None, help="pin the calls made with it to this agent profile")
    _add(t, "--sub", default=None, help="the subject (caller id); a call belongs to its token's subject")


def _add_call_parser(sub: Any) -> None:
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
    _add(c, "--token", default=None, help="access token (sent as Authorization: Bearer) for a server with "
         "--auth-secret")


def _positive_float(value: str) -> float:
    f = float(value)
    if f <= 0:
        raise ValueError("must be > 0")
    return f


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


async def _drain(app: Any, timeout: float, stop: asyncio.Event) -> None:
    """SIGTERM: no new calls, ``/readyz`` 503, the calls in progress finish (at most ``timeout``
    seconds, or until ``stop``: a second SIGTERM or SIGINT); what is left ends with reason
    ``drain-timeout`` (or ``shutdown``), which its caller is told."""
    from .app import HOST

    host = app[HOST]
    print(f"v2v: draining: no new calls; {host.active_calls()} call(s) in progress may take up to "
          f"{timeout:g} s (SIGTERM again: end them now)", file=sys.stderr, flush=True)
    drained = asyncio.ensure_future(host.drain(timeout))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({drained, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for task in (drained, stopped):
        task.cancel()
    await asyncio.gather(drained, stopped, return_exceptions=True)
    if host.active_calls():
        await host.close("shutdown" if stop.is_set() else "drain-timeout")


async def serve(cfg: ServerConfig, ready: Callable[[str], None] | None = None) -> None:
    """Run the server until SIGINT (end every call now) or SIGTERM (drain first: :func:`_drain`)."""
    from aiohttp import web

    from . import aiortc_tuning
    from .app import METRICS, create_app
    from .conn_limit import CappedTCPSite, SourceLimit

    aiortc_tuning.install()  # before the first peer connection; stock aiortc (one warning) if it cannot
    aiortc_tuning.restrict_host_addresses(cfg.media_address)
    app = create_app(cfg)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    stop, draining = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_sigterm() -> None:
        (stop if draining.is_set() else draining).set()

    for sig, handler in ((signal.SIGINT, stop.set), (signal.SIGTERM, on_sigterm)):
        try:
            loop.add_signal_handler(sig, handler)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        site = CappedTCPSite(runner, cfg.host, cfg.port,
                             SourceLimit(cfg.max_conns_per_source, "http", app[METRICS]))
        await site.start()
        url = page_url(cfg.host, bound_port(runner, cfg.port))
        print(f"v2v serving on {url}  (model: {cfg.model}) - open it in a browser and talk", flush=True)
        if not cfg.auth_secret and cfg.host not in ("127.0.0.1", "::1", "localhost"):
            print(f"v2v: warning: listening on {cfg.host} without --auth-secret: whoever reaches it can start "
                  "calls (see README, Running it in production)", file=sys.stderr, flush=True)
        if ready is not None:
            ready(url)
        stopped, drain = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(draining.wait())
        await asyncio.wait({stopped, drain}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        drain.cancel()
        if draining.is_set() and not stop.is_set():
            await _drain(app, cfg.drain_timeout, stop)
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


def _pool_entry(module: str, func: str) -> Callable[[ServerConfig], int] | str:
    """``v2v.signaling.pool.<module>.<func>``, imported only when asked for; a message when absent."""
    import importlib

    name = f"v2v.signaling.pool.{module}"
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and name.startswith(e.name):
            return f"the worker pool is not available in this installation ({name} is missing)"
        return f"the worker pool cannot start: {e}"
    except ImportError as e:
        return f"the worker pool cannot start: {e}"
    entry = getattr(mod, func, None)
    if entry is None:
        return f"the worker pool is not available in this installation ({name}.{func} is missing)"
    return typing.cast(Callable[[ServerConfig], int], entry)


def _run_pool(parser: argparse.ArgumentParser, command: str, cfg: ServerConfig, module: str, func: str) -> int:
    entry = _pool_entry(module, func)
    if isinstance(entry, str):
        print(f"v2v {command}: error: {entry}", file=sys.stderr)
        return 1
    return int(entry(cfg))


def _main_serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args, "serve")
    except ValueError as e:
        parser.error(str(e))
    if cfg.redis or cfg.workers > 0:  # a pool: the calls run in worker processes
        return _run_pool(parser, "serve", cfg, "serve_main", "run_pool_serve")
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


def _main_worker(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args, "worker")
    except ValueError as e:
        parser.error(str(e))
    from . import aiortc_tuning
    from .logs import setup_logging

    setup_logging(cfg.log_format, cfg.log_level)
    aiortc_tuning.install()  # before the worker's first peer connection
    return _run_pool(parser, "worker", cfg, "worker_main", "run_worker")


def _main_call(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .client import run_call

    if not args.url:
        parser.error("call: the server URL is required")
    request_data = {"profile": args.profile} if args.profile else None
    try:
        summary = _run(run_call(args.url, args.play, args.record, args.seconds, request_data, bool(args.trickle),
                                token=args.token))
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a refused offer, an unreachable server, a bad WAV
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps(summary, indent=2))
    return 0


def _main_token(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .auth import mint_token

    if not args.secret:
        parser.error("token: --secret is required")
    print(mint_token(args.secret, args.ttl, subject=args.sub or "", profile=args.profile))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except EnvError as e:
        print(f"v2v: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    commands = {"serve": _main_serve, "worker": _main_worker, "call": _main_call, "token": _main_token,
                "dial": lambda p, a: main_dial(p, a, _run)}
    run = commands.get(args.command or "")
    if run is None:
        parser.print_help()
        return 2
    return run(parser, args)


if __name__ == "__main__":
    sys.exit(main())
