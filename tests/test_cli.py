"""The ``v2v`` command line: complete --help, V2V_<FLAG> variables, ``serve`` and ``call`` as processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import fixture_path
from v2v.signaling.cli import build_parser, config_from_args, env_name

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
V2V = [sys.executable, "-m", "v2v.signaling.cli"]

TRUNK_FLAGS = ["--sip-trunk", "--sip-trunk-user", "--sip-trunk-password", "--sip-caller-id", "--sip-register",
               "--sip-dial-timeout"]  # outbound calls (signaling/sip/outbound.py)
SERVE_FLAGS = [
    "--host", "--port", "--model", "--openai-model", "--live-model", "--gemini-model", "--openai-base-url", "--turn-detection",
    "--aec", "--instructions", "--voice", "--greeting", "--app", "--max-calls", "--media-timeout", "--peer-gone-timeout", "--ice-timeout",
    "--ice-server", "--max-body", "--log-format", "--log-level", "--sip-port", "--sip-ring-ms",
    "--sip-user", "--sip-public-address", "--rtp-ports", "--sip-realm", "--sip-allow", "--sip-rate", "--profiles",
    "--redis", "--workers", "--name", "--capacity", "--drain-timeout",
    "--connect-timeout", "--auth-secret", "--cors-origin", "--media-address", "--max-conns-per-source",
    "--record-dir", "--record-max-mb", "--record-keep-days", "--webhook", "--webhook-secret", "--webhook-turns",
    "--transfer-targets", "--turn-model", "--turn-max-wait-ms", "--turn-threshold",
    "--sip-tls-port", "--sip-tls-cert", "--sip-tls-key", "--sip-srtp",
    "--sip-codecs", *TRUNK_FLAGS,
]
SIP_SIGNALING_FLAGS = ["--sip-port", "--sip-ring-ms", "--sip-user", "--sip-realm", "--sip-allow", "--sip-rate",
                       "--sip-tls-port", "--sip-tls-cert", "--sip-tls-key", *TRUNK_FLAGS]
HTTP_ACCESS_FLAGS = ["--auth-secret", "--cors-origin", "--max-conns-per-source"]  # signaling's HTTP only
WORKER_FLAGS = [f for f in SERVE_FLAGS if f not in SIP_SIGNALING_FLAGS + HTTP_ACCESS_FLAGS and f != "--workers"] + [
    "--advertise"]
CALL_FLAGS = ["--play", "--record", "--seconds", "--profile", "--trickle", "--token"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("V2V_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(V2V + args, capture_output=True, text=True, timeout=60, env=_env(**env), cwd=ROOT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_lists_every_flag_and_its_variable():
    top = _run(["--help"])
    assert top.returncode == 0
    assert "serve" in top.stdout and "call" in top.stdout and "V2V_" in top.stdout
    serve = _run(["serve", "--help"])
    assert serve.returncode == 0
    text = " ".join(serve.stdout.split())  # argparse wraps lines
    for flag in SERVE_FLAGS:
        assert flag in text, flag
        assert env_name(flag) in text.replace(" ", ""), env_name(flag)
    # nothing in the parser is left out of this list
    sub = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]  # argparse keeps the subcommands there
    declared = {o for a in sub["serve"]._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
    assert declared == set(SERVE_FLAGS)
    worker = _run(["worker", "--help"])
    assert worker.returncode == 0
    text = " ".join(worker.stdout.split())
    for flag in WORKER_FLAGS:
        assert flag in text and env_name(flag) in text.replace(" ", ""), flag
    declared = {o for a in sub["worker"]._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
    assert declared == set(WORKER_FLAGS)
    call = _run(["call", "--help"])
    assert call.returncode == 0
    for flag in CALL_FLAGS:
        assert flag in call.stdout, flag
    assert "url" in call.stdout


def test_flags_read_environment_variables(monkeypatch):
    for k in list(os.environ):
        if k.startswith("V2V_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("V2V_PORT", "9123")
    monkeypatch.setenv("V2V_MAX_CALLS", "7")
    monkeypatch.setenv("V2V_MODEL", "echo")
    monkeypatch.setenv("V2V_ICE_SERVER", "stun:127.0.0.1:3478")
    monkeypatch.setenv("V2V_SIP_USER", "alice:pw,bob:pw2")
    cfg = config_from_args(build_parser().parse_args(["serve"]))
    assert (cfg.port, cfg.max_calls, cfg.model) == (9123, 7, "echo")
    assert [s.urls for s in cfg.ice_servers] == ["stun:127.0.0.1:3478"]
    assert cfg.sip_users == ["alice:pw", "bob:pw2"]
    # the command line wins over the environment
    cfg = config_from_args(build_parser().parse_args(["serve", "--port", "9200", "--sip-port"]))
    assert cfg.port == 9200 and cfg.sip_port == 5060


def test_every_setting_is_a_flag_and_the_defaults_are_the_settings(monkeypatch):
    """The parser is generated from ServerConfig: no field without a flag, no default that differs."""
    import dataclasses

    from v2v.signaling.config import ServerConfig

    for k in list(os.environ):
        if k.startswith("V2V_") or k == "OPENAI_BASE_URL":
            monkeypatch.delenv(k)
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]  # argparse keeps the subcommands there
    dests = {a.dest for cmd in ("serve", "worker") for a in sub[cmd]._actions}
    assert {f.name for f in dataclasses.fields(ServerConfig)} <= dests
    assert config_from_args(parser.parse_args(["serve"]), "serve") == ServerConfig()
    assert config_from_args(parser.parse_args(["worker"]), "worker") == ServerConfig()


def test_pool_flags_and_profiles_from_flags_and_environment(monkeypatch):
    for k in list(os.environ):
        if k.startswith("V2V_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("V2V_REDIS", "redis://127.0.0.1:6390/0")
    monkeypatch.setenv("V2V_CAPACITY", "12")
    monkeypatch.setenv("V2V_DRAIN_TIMEOUT", "5")
    monkeypatch.setenv("V2V_ADVERTISE", "10.0.0.7")
    monkeypatch.setenv("V2V_PROFILES", "Support=openai, bot=echo")
    cfg = config_from_args(build_parser().parse_args(["worker", "--name", "w7", "--port", "0"]), "worker")
    assert (cfg.redis, cfg.capacity, cfg.drain_timeout, cfg.advertise, cfg.name, cfg.port) == (
        "redis://127.0.0.1:6390/0", 12, 5.0, "10.0.0.7", "w7", 0)
    assert cfg.profiles == {"support": "openai", "bot": "echo"}
    cfg = config_from_args(build_parser().parse_args(["serve", "--workers", "3", "--sip-realm", "corp"]), "serve")
    assert (cfg.workers, cfg.sip_realm, cfg.redis) == (3, "corp", "redis://127.0.0.1:6390/0")
    assert cfg.advertise == ""  # a worker flag only


def test_bad_values_are_clear_errors():
    r = _run(["serve", "--model", "gpt-9"])
    assert r.returncode == 2 and "--model" in r.stderr
    r = _run(["serve"], V2V_MAX_CALLS="many")
    assert r.returncode == 2 and "V2V_MAX_CALLS" in r.stderr
    r = _run(["serve", "--ice-server", "http://x"])
    assert r.returncode == 2 and "ICE" in r.stderr
    r = _run(["serve", "--workers", "-1"])
    assert r.returncode == 2 and "--workers" in r.stderr
    r = _run(["worker", "--profiles", "support"])
    assert r.returncode == 2 and "--profiles" in r.stderr
    r = _run(["serve", "--profiles", "support=gpt-9"])
    assert r.returncode == 2 and "--profiles" in r.stderr
    r = _run([])
    assert r.returncode == 2


def test_a_missing_pool_module_is_a_clear_error():
    from v2v.signaling.cli import _pool_entry

    msg = _pool_entry("no_such_module", "run_worker")
    assert isinstance(msg, str) and "not available" in msg and "no_such_module" in msg
    msg = _pool_entry("worker_main", "no_such_function")
    assert isinstance(msg, str) and "no_such_function" in msg
    assert callable(_pool_entry("worker_main", "run_worker"))


def _wait_line(proc: subprocess.Popen, needle: str) -> str:
    """The first stdout line holding ``needle`` (blocks until it is printed or the process ends)."""
    for line in proc.stdout:
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} never printed: {proc.stderr.read()}")


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    return rc, err


def test_worker_subcommand_runs_a_headless_worker():
    port = free_port()
    proc = subprocess.Popen(
        V2V + ["worker", "--model", "echo", "--port", str(port), "--name", "w-cli"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT,
    )
    try:
        line = _wait_line(proc, f"http://127.0.0.1:{port}/")
        assert "w-cli" in line
        status, body = _get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and json.loads(body)["worker"] == "w-cli"
        status, body = _get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200 and json.loads(body)["status"] == "ready"
    finally:
        rc, err = _stop(proc)
    assert rc == 0, err


def test_serve_with_workers_runs_a_local_pool():
    port = free_port()
    proc = subprocess.Popen(
        V2V + ["serve", "--model", "echo", "--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT,
    )
    try:
        _wait_line(proc, f"http://127.0.0.1:{port}/")
        status, body = _get(f"http://127.0.0.1:{port}/api/workers")
        workers = json.loads(body)["workers"]
        assert status == 200 and len(workers) == 1 and workers[0]["state"] == "ready"
    finally:
        rc, err = _stop(proc)
    assert rc == 0, err


def _start_server(*args: str, **env: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        V2V + ["serve", "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(**env), cwd=ROOT,
    )
    line = proc.stdout.readline()  # blocks until the URL is printed (or the process dies)
    m = re.search(r"(http://\S+/)", line)
    assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
    assert m.group(1) == f"http://127.0.0.1:{port}/"
    return proc, m.group(1)


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


def test_serve_prints_url_answers_and_a_call_works_then_sigterm_ends_it(tmp_path):
    proc, url = _start_server("--model", "echo", "--log-format", "json", V2V_MAX_CALLS="3")
    try:
        assert _get(url + "healthz") == (200, b'{"status": "ok"}')
        status, body = _get(url + "readyz")
        assert status == 200 and json.loads(body)["status"] == "ready"
        status, metrics = _get(url + "metrics")
        assert b"v2v_active_calls" in metrics
        # the headless caller, as a process: plays a phrase, hears the echo, hangs up
        out = tmp_path / "reply.wav"
        r = _run(["call", url, "--play", str(fixture_path("hello_48k.wav")), "--record", str(out)])
        assert r.returncode == 0, r.stdout + r.stderr
        summary = json.loads(r.stdout)
        assert summary["connected_s"] is not None and summary["connected_s"] < 5
        assert summary["first_reply_audio_s"] is not None
        assert 1.0 < summary["reply_duration_s"] < 2.0
        assert summary["hangup_status"] == 200
        assert out.stat().st_size > 48000 * 2
        # an unreachable server is a JSON error and exit 1
        r = _run(["call", f"http://127.0.0.1:{free_port()}", "--play", str(fixture_path("hello_48k.wav"))])
        assert r.returncode == 1 and "error" in json.loads(r.stdout)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert rc == 0, err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    ended = [e for e in events if e.get("event") == "call-ended"]
    assert ended and ended[0]["reason"] == "hangup"


def test_sigint_ends_live_calls_gracefully():
    proc, url = _start_server("--model", "echo", "--log-format", "json")
    caller = subprocess.Popen(
        V2V + ["call", url, "--play", str(fixture_path("hello_48k.wav")), "--seconds", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:  # wait until the server reports the call as active
            _, metrics = _get(url + "metrics")
            if b'v2v_active_calls{transport="webrtc"} 1.0' in metrics:
                break
            assert time.monotonic() < deadline, "the call never became active"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=15)
        err = proc.stderr.read()
        assert rc == 0, err
        events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert any(e.get("event") == "call-ended" and e.get("reason") == "shutdown" for e in events), err
    finally:
        for p in (proc, caller):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
            p.stdout.close()
            p.stderr.close()


def test_app_module_adds_tools_to_every_call(tmp_path):
    from v2v.signaling.calls import load_app
    from v2v.worker.tools import ToolRegistry

    mod = tmp_path / "myapp.py"
    mod.write_text(
        "async def lookup(order: int) -> dict:\n"
        "    return {'order': order, 'status': 'shipped'}\n"
        "def register_tools(registry):\n"
        "    registry.register('lookup', 'look up an order', None, lookup)\n"
        "    registry.register('gps', 'device location', None, client_side=True)\n"
    )
    register = load_app(str(mod))
    first, second = ToolRegistry(), ToolRegistry()
    register(first)
    register(second)
    assert "lookup" in first and "lookup" in second
    assert first.get("gps").client_side
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('nope')\n")
    import pytest

    with pytest.raises(ValueError, match="could not be loaded"):
        load_app(str(broken))
    with pytest.raises(ValueError, match="could not be loaded"):
        load_app("no.such.module")
