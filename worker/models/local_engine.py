"""What the local recognizer and synthesizer share: a thread of their own, and one instance per process.

:class:`ThreadedEngine` loads a blocking engine on a dedicated one-thread
executor (never the event loop's default executor, which aiohttp's DNS
resolution uses) and runs every later call to it on that same thread.
:class:`Shared` builds a process-wide instance on first use.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Generic, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")
E = TypeVar("E")


class ThreadedEngine(abc.ABC):
    """A blocking engine living on one thread of its own (named ``thread_name``)."""

    thread_name = "v2v-engine"

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self.thread_name)
        self._loaded = self._executor.submit(self._load)

    @abc.abstractmethod
    def _load(self) -> None:
        """Load the engine (runs on the engine's thread, first thing)."""

    def wait_loaded(self) -> None:
        """Block until loaded (re-raises a load failure); for callers off the loop."""
        self._loaded.result()

    async def ready(self) -> None:
        """Wait until loaded (re-raises a load failure)."""
        await asyncio.wrap_future(self._loaded)

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """``fn(*args, **kwargs)`` on the engine's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Shared(Generic[E]):
    """One instance per process of what ``build`` makes, built on first :meth:`get`."""

    def __init__(self, build: Callable[[], E]) -> None:
        self._build = build
        self._instance: E | None = None
        self._lock = threading.Lock()

    def get(self) -> E:
        with self._lock:
            if self._instance is None:
                self._instance = self._build()
            return self._instance
