"""Tool running: the model's function calls, executed for one call.

:class:`ToolRunner` runs each :class:`~worker.models.base.FunctionCall` on
its own task: a server tool's coroutine (with a timeout), or a client-side tool
whose result the caller's application returns (:meth:`ToolRunner.client_result`).
The output goes back to the model; once every call of the asking response is
done, the last one asks the model for a new response (one per batch).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from . import events as ev
from .models import base as mb
from .responses import ResponseLedger
from .tools import Tool, ToolRegistry

if TYPE_CHECKING:
    from .call import CallConfig

log = logging.getLogger("v2v.call")


class ToolRunner:
    def __init__(
        self,
        call_id: str,
        tools: ToolRegistry,
        config: CallConfig,
        model: mb.ModelSession,
        ledger: ResponseLedger,
        publish: Callable[[ev.CallEvent], None],
        spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task],
        create_response: Callable[[], Awaitable[None]],
    ) -> None:
        self.call_id = call_id
        self.tools = tools
        self.config = config
        self.model = model
        self.ledger = ledger
        self.publish = publish
        self._spawn = spawn
        self._create_response = create_response
        self.running = 0  # calls started and not finished
        self._batches: dict[str, int] = {}  # response id -> its tool calls still running
        self._client_calls: dict[str, asyncio.Future] = {}

    def start(self, call: mb.FunctionCall) -> None:
        # counted from the FunctionCall event on, so the response that carried
        # the call ending does not read as "idle"
        self.running += 1
        self._batches[call.response_id] = self._batches.get(call.response_id, 0) + 1
        self._spawn(self._run(call), f"tool-{call.name}")

    def client_result(self, call_id: str, result: Any) -> bool:
        """The application's result of a client-side tool; False if none waits."""
        fut = self._client_calls.get(call_id)
        if fut is None or fut.done():
            return False
        fut.set_result(result)
        return True

    def cancel_client_calls(self) -> None:
        for fut in self._client_calls.values():
            if not fut.done():
                fut.cancel()

    async def _run(self, call: mb.FunctionCall) -> None:
        try:
            await self._run_inner(call)
        finally:
            self.running -= 1

    async def _run_inner(self, call: mb.FunctionCall) -> None:
        tool = self.tools.get(call.name)
        self.publish(ev.FunctionCallStarted(call.call_id, call.name))
        try:
            args = json.loads(call.arguments) if call.arguments.strip() else {}
            if not isinstance(args, dict):
                raise ValueError("arguments are not a JSON object")
        except ValueError as exc:
            args = {}
            result: Any = {"error": f"invalid arguments: {exc}"}
            tool = None
        else:
            result = {"error": f"unknown tool {call.name!r}"}
        self.publish(ev.FunctionCallInProgress(call.call_id, call.name, args, bool(tool and tool.client_side)))
        if tool is not None and tool.client_side:
            result = await self._client_call(call, tool)
        elif tool is not None and tool.func is not None:
            result = await self._server_call(call, tool, args)
        output = result if isinstance(result, str) else json.dumps(result, default=str)
        self.publish(ev.FunctionCallStopped(call.call_id, call.name, result))
        await self.model.function_output(call.call_id, output)
        await self._batch_done(call)

    async def _client_call(self, call: mb.FunctionCall, tool: Tool) -> Any:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._client_calls[call.call_id] = fut
        timeout = tool.timeout or self.config.client_tool_timeout_s
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return {"error": f"client did not answer within {timeout:g} s"}
        finally:
            self._client_calls.pop(call.call_id, None)

    async def _server_call(self, call: mb.FunctionCall, tool: Tool, args: dict[str, Any]) -> Any:
        assert tool.func is not None
        timeout = tool.timeout or self.config.tool_timeout_s
        try:
            return await asyncio.wait_for(tool.func(**args), timeout)
        except TimeoutError:
            return {"error": f"tool {call.name!r} timed out after {timeout:g} s"}
        except asyncio.CancelledError:
            self.publish(ev.FunctionCallStopped(call.call_id, call.name, None, cancelled=True))
            raise
        except Exception as exc:
            log.warning("call %s: tool %s raised %r", self.call_id, call.name, exc)
            return {"error": f"{type(exc).__name__}: {exc}"}

    async def _batch_done(self, call: mb.FunctionCall) -> None:
        """One new response per batch: once the asking response is over, all
        its calls are known; the last one to finish asks for the answer."""
        if self.ledger.current is not None and self.ledger.current == call.response_id:
            await self.ledger.wait_idle(self.config.response_wait_s)
        left = self._batches.get(call.response_id, 1) - 1
        if left > 0:
            self._batches[call.response_id] = left
            return
        self._batches.pop(call.response_id, None)
        await self._create_response()
