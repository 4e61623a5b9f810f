"""One real ``v2v serve --model M`` process and one real WebRTC call through it (the models' end-to-end tests)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from v2v.signaling.client import run_call


async def serve_and_call(
    model: str, env: dict[str, str], wav: Path, after_call: Callable[[], Awaitable[Any]]
) -> tuple[dict[str, Any], str]:
    """Start ``v2v serve --model model`` (``env`` added, no ``V2V_*`` from outside), make one call
    playing ``wav``, await ``after_call()`` (e.g. the fake model's socket closed), stop the server
    with SIGTERM; the call's summary and the server's whole log."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("V2V_")}
    full_env.update(env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "v2v.signaling.cli", "serve", "--model", model, "--host", "127.0.0.1",
        "--port", "0", "--log-level", "debug",
        env=full_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stderr_chunks: list[bytes] = []

    async def drain_stderr() -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.read(65536):
            stderr_chunks.append(chunk)

    drain = asyncio.create_task(drain_stderr())
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        found = re.search(r"(http://\S+)", line)
        assert found is not None, line
        summary = await run_call(found.group(1), wav)
        await after_call()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        await asyncio.wait_for(drain, 5)
    return summary, b"".join(stderr_chunks).decode(errors="replace")
