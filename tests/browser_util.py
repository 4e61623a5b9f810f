"""Helpers for the real-browser tests: run `v2v serve`, launch Debian's chromium, read /metrics.

The server runs as a subprocess (the real CLI, the real signaling and worker);
chromium is Debian's binary driven by Playwright, fed a WAV through its fake
audio capture device.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"

CHROMIUM_ARGS = [
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

LAPTOP = {"width": 1366, "height": 800}
PHONE = {"width": 390, "height": 844}


def fake_audio_args(wav: Path) -> list[str]:
    """Chromium flags: a fake microphone playing `wav` (looped), permission granted without a prompt."""
    return [
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav.resolve()}",
        "--use-fake-ui-for-media-stream",
        *CHROMIUM_ARGS,
    ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


_ACTIVE = re.compile(r'^v2v_active_calls\{[^}]*transport="webrtc"[^}]*\}\s+(\S+)\s*$', re.M)


def active_webrtc_calls(base_url: str) -> float:
    status, text = http_get(base_url + "/metrics")
    assert status == 200, f"/metrics answered {status}"
    m = _ACTIVE.search(text)
    return float(m.group(1)) if m else 0.0


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll a condition (an external process's state) until it holds or the timeout passes."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what} (last: {last!r})")


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log_path: Path
    extra: dict = field(default_factory=dict)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""


def serve_command(port: int, model: str, *extra_args: str) -> list[str]:
    """The real CLI: `v2v serve` (run through the interpreter running the tests)."""
    return [
        sys.executable, "-m", "v2v.signaling.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--model", model, *extra_args,
    ]


@contextlib.contextmanager
def run_server(model: str, tmp_dir: Path, *extra_args: str) -> Iterator[Server]:
    """`v2v serve --model <model>` on a free port; yields once /readyz answers 200."""
    port = free_port()
    log_path = tmp_dir / f"v2v-serve-{model}-{port}.log"
    cmd = serve_command(port, model, *extra_args)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(url=f"http://127.0.0.1:{port}", proc=proc, log_path=log_path)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"v2v serve exited with {proc.returncode}:\n{server.log()}")
            try:
                return http_get(server.url + "/readyz", timeout=1.0)[0] == 200
            except OSError:
                return False

        wait_until(ready, 30.0, "v2v serve to answer /readyz")
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def speech_wav(tmp_dir: Path) -> Path:
    """The committed fake-microphone WAV (speech then silence); generated with espeak-ng if absent."""
    wav = FIXTURES / "browser_speech.wav"
    if wav.exists():
        return wav
    out = tmp_dir / "browser_speech.wav"
    raw = tmp_dir / "speech_raw.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), "Hello, what time is it?"], check=True)
    # pad: 300 ms lead, 3 s trailing silence, 16 kHz mono
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", str(out), "pad", "0.3", "3"], check=True)
    return out


def compose_wav(out: Path, parts: list[Path | str | float], rate: int = 16000) -> Path:
    """Concatenate WAVs (16-bit mono at `rate`; a str names a file in tests/fixtures) and
    silences (float seconds) into `out`."""
    import wave

    import numpy as np

    chunks: list[np.ndarray] = []
    for part in parts:
        if isinstance(part, (str, Path)):
            with wave.open(str(FIXTURES / part if isinstance(part, str) else part), "rb") as w:
                assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (rate, 1, 2), part
                chunks.append(np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"))
        else:
            chunks.append(np.zeros(int(round(part * rate)), dtype="<i2"))
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.concatenate(chunks).astype("<i2").tobytes())
    return out
