"""The tool registry: async Python functions (or client-executed tools) with JSON schemas."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .models.base import ToolSpec

ToolFunc = Callable[..., Awaitable[Any]]


@dataclass
class Tool:
    spec: ToolSpec
    func: ToolFunc | None  # None for client-executed tools
    client_side: bool = False
    timeout: float | None = None  # seconds; None: the call's default


class ToolRegistry:
    """Name -> :class:`Tool`. Server tools are coroutine functions called with
    the model's JSON arguments as keyword arguments; client tools are executed
    by the caller's application (RTVI ``llm-function-call-result``)."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(
        self,
        name: str,
        description: str,
        parameters: dict[str, Any] | None = None,
        func: ToolFunc | None = None,
        *,
        client_side: bool = False,
        timeout: float | None = None,
    ) -> Tool:
        if func is None and not client_side:
            raise ValueError(f"tool {name!r} needs a function unless it is client-side")
        if func is not None and not inspect.iscoroutinefunction(func):
            raise TypeError(f"tool {name!r} must be an async function")
        spec = ToolSpec(name, description, parameters or {"type": "object", "properties": {}})
        tool = Tool(spec, func, client_side, timeout)
        self._tools[name] = tool
        return tool

    def tool(
        self, name: str | None = None, description: str = "", parameters: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Callable[[ToolFunc], ToolFunc]:
        """Decorator form of :meth:`register`."""

        def deco(func: ToolFunc) -> ToolFunc:
            self.register(name or func.__name__, description or (func.__doc__ or "").strip(),
                          parameters, func, timeout=timeout)
            return func

        return deco

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def specs(self) -> list[ToolSpec]:
        return [t.spec for t in self._tools.values()]

    def copy(self) -> ToolRegistry:
        other = ToolRegistry()
        other._tools = dict(self._tools)
        return other

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)
