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

SERVE_FLAGS = [
    "--host", "--port", "--model", "--openai-model", "--openai-base-url", "--turn-detection",
    "--instructions", "--voice", "--greeting", "--app", "--max-calls", "--media-timeout", "--ice-timeout",
    "--ice-server", "--max-body", "--log-format", "--log-level", "--sip-port", "--sip-ring-ms",
    "--sip-user", "--sip-public-address", "--rtp-ports",
]
CALL_FLAGS = ["--play", "--record", "--seconds", "--profile", "--trickle"]


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
    sub = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    declared = {o for a in sub["serve"]._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
    assert declared == set(SERVE_FLAGS)
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


def test_bad_values_are_clear_errors():
    r = _run(["serve", "--model", "gpt-9"])
    assert r.returncode == 2 and "--model" in r.stderr
    r = _run(["serve"], V2V_MAX_CALLS="many")
    assert r.returncode == 2 and "V2V_MAX_CALLS" in r.stderr
    r = _run(["serve", "--ice-server", "http://x"])
    assert r.returncode == 2 and "ICE" in r.stderr
    r = _run([])
    assert r.returncode == 2


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
    events = [json.loads(l) for l in err.splitlines() if l.startswith("{")]
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
        events = [json.loads(l) for l in err.splitlines() if l.startswith("{")]
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
