"""Smart Turn v3: an end-of-turn model (ONNX, BSD-2) run with onnxruntime on a thread of its own.

The weights are not downloaded: they ship inside the ``pipecat-ai`` wheel on
PyPI (``pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx``), which
v2v's optional extra ``v2v[turn]`` installs together with ``onnxruntime``.
:func:`smart_turn_weights` finds that file through the installed
distribution's file list, without importing pipecat (so ``pip install
--no-deps pipecat-ai`` is enough for v2v).

The model takes :func:`~media.logmel.log_mel` features of the last 8 s of
16 kHz audio, shape ``(1, 80, 800)``, and returns the probability that the
utterance is complete. :class:`SmartTurn` runs it on a one-thread executor
(never the event loop); one instance per process (:func:`shared_smart_turn`):
inferences of all calls queue on that thread.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from v2v.media.logmel import RATE, log_mel

from .models.local_engine import Shared, ThreadedEngine

log = logging.getLogger("v2v.turn")

WEIGHTS_DIST = "pipecat-ai"
WEIGHTS_FILE = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
MODEL_RATE = RATE  # 16 kHz


def smart_turn_weights() -> Path | None:
    """The installed Smart Turn v3.2 ONNX file, or None (pipecat-ai not installed)."""
    try:
        dist = importlib.metadata.distribution(WEIGHTS_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(WEIGHTS_FILE)))
    return path if path.is_file() else None


def smart_turn_missing() -> str | None:
    """Why Smart Turn cannot run here (None: it can)."""
    try:
        import onnxruntime  # noqa: F401 (only checking it is installed)
    except ImportError:
        return "onnxruntime is not installed (pip install 'v2v[turn]')"
    if smart_turn_weights() is None:
        return "pipecat-ai (which ships the Smart Turn weights) is not installed (pip install 'v2v[turn]')"
    return None


@dataclass(frozen=True)
class TurnPrediction:
    probability: float  # that the utterance is complete
    cpu_ms: float  # thread CPU time of features + inference
    wall_ms: float


class SmartTurn(ThreadedEngine):
    """The ONNX session on a dedicated thread; :meth:`predict` from any event loop."""

    thread_name = "v2v-turn"

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._session: Any = None
        super().__init__()

    def _load(self) -> None:
        import onnxruntime as ort

        path = self.path or smart_turn_weights()
        if path is None:
            raise RuntimeError(smart_turn_missing() or "no Smart Turn weights")
        so = ort.SessionOptions()
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        so.intra_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        self.predict_blocking(np.zeros(MODEL_RATE, np.float32))  # warm-up: the first run costs several times more
        log.debug("Smart Turn loaded from %s", path)

    def predict_blocking(self, audio: np.ndarray) -> TurnPrediction:
        """Probability of a complete utterance for 16 kHz float32 audio (runs on the calling thread)."""
        t0, c0 = time.perf_counter(), time.thread_time()
        feats = log_mel(audio)[None]
        out = self._session.run(None, {"input_features": feats})
        p = float(np.asarray(out[0]).reshape(-1)[0])
        return TurnPrediction(p, (time.thread_time() - c0) * 1000, (time.perf_counter() - t0) * 1000)

    async def predict(self, audio: np.ndarray) -> TurnPrediction:
        """:meth:`predict_blocking` on the model's thread."""
        await self.ready()
        return await self.run(self.predict_blocking, audio)


_shared = Shared(SmartTurn)


def shared_smart_turn() -> SmartTurn:
    """The process-wide Smart Turn instance (loaded on first use)."""
    return _shared.get()
