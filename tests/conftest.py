"""Shared pytest fixtures: fixture audio paths and leak checks."""

from __future__ import annotations

import json
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
