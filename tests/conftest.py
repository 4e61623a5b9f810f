"""Shared pytest fixtures: fixture audio paths and leak checks."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_path(name: str) -> Path:
    return FIXTURES / name


def load_wav(name: str) -> tuple[np.ndarray, int]:
    from v2v.worker.wavcall import read_wav

    return read_wav(FIXTURES / name)


def manifest() -> dict:
    return json.loads((FIXTURES / "manifest.json").read_text())["files"]


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(autouse=True, scope="session")
def _aiortc_tuned() -> None:
    """In-process test servers run aiortc tuned, as ``v2v serve`` / ``v2v worker`` do at start."""
    from v2v.signaling import aiortc_tuning

    aiortc_tuning.install()


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A test that calls ``setup_logging`` (as the CLI does) must not take the ``v2v`` records away
    from the next tests' caplog: each test leaves the loggers as it found them."""
    names = ("v2v", "aiohttp.server", "aiohttp.web")
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate, logging.getLogger(n).level)
             for n in names}
    yield
    for n, (handlers, propagate, level) in saved.items():
        lg = logging.getLogger(n)
        lg.handlers[:] = handlers
        lg.propagate = propagate
        lg.setLevel(level)


@pytest.fixture(autouse=True)
def _aioice_mdns_per_loop() -> Iterator[None]:
    """aioice keeps one mDNS resolver and its ``asyncio.Lock`` per thread for the life of the process
    (one event loop in ``v2v serve``). Every test here runs its own loop: a test whose loop ended while
    an mDNS task held that lock would leave it locked and bound to the dead loop, and the next test's
    first ``.local`` candidate would fail with "bound to a different event loop". Each test starts
    with aioice's per-thread mDNS state empty (nothing is done if aioice stops keeping it there)."""
    yield
    from aioice import ice

    state = getattr(ice, "_mdns", None)
    for name in ("lock", "protocol", "subscribers"):
        if state is not None and hasattr(state, name):
            delattr(state, name)
