"""`pip install .` (a real wheel, not an editable install) serves the demo page."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_installed_wheel_serves_the_demo_page(tmp_path: Path) -> None:
    wheels, target, src = tmp_path / "wheels", tmp_path / "site", tmp_path / "src"
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("media", "worker", "signaling", "static", "v2v"):
        shutil.copytree(ROOT / pkg, src / pkg, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src), "-w", str(wheels)],
        check=True, cwd=tmp_path, timeout=300,
    )
    (wheel,) = wheels.glob("v2v-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True, cwd=tmp_path, timeout=300,
    )
    with zipfile.ZipFile(wheel) as zf:
        top = {name.split("/", 1)[0] for name in zf.namelist() if not name.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"v2v"}, top  # nothing but v2v at the top level of site-packages
    assert (target / "v2v" / "static" / "index.html").is_file() and (target / "v2v" / "static" / "app.js").is_file()
    assert not any((target / name).exists() for name in ("media", "worker", "signaling", "static"))
    env = dict(os.environ, PYTHONPATH=str(target))
    where = subprocess.run(
        [sys.executable, "-c", "import v2v.signaling, v2v.static; print(v2v.signaling.__file__); print(v2v.static.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()
    assert all(p.startswith(str(target)) for p in where), where  # the installed copy, not the checkout
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "v2v.signaling.cli", "serve", "--model", "echo", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        page = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    page = (r.status, r.read().decode())
                break
            except OSError:
                time.sleep(0.2)  # polling the server's start-up, not synchronising with it
        assert page is not None, proc.stdout.read() if proc.poll() is not None else "no answer"
        assert page[0] == 200 and "<html" in page[1].lower() and "app.js" in page[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/static/app.js", timeout=5) as r:
            assert r.status == 200 and b"api/offer" in r.read()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
