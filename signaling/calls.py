"""The calls of one worker process: :class:`Call` and :class:`CallManager`.

:class:`CallManager` owns the model factories, every live :class:`Call` of
every transport (each transport creates its calls with
:meth:`CallManager.create_call`), the ``--max-calls`` limit, metrics and logs,
and closes everything on shutdown. It knows no transport: the WebRTC and RTP
sides of :class:`v2v.signaling.host.CallHost` hand it an audio input and a
playout buffer.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from v2v.worker import events as ev
from v2v.worker.models.base import ModelFactory, SessionConfig
from v2v.worker.recording import CallRecorder, RecordingConfig, RecordingWriter
from v2v.worker.transfer import TransferOutcome, add_transfer_tool
from v2v.worker.transport import AudioInput

from .config import ServerConfig, call_aec
from .dispatch import DispatchError, Overloaded, UnknownCall
from .logs import CallLog
from .metrics import ServerMetrics
from .webhooks import WebhookConfig, Webhooks, public_call_id

log = logging.getLogger("v2v.calls")

# -----------------------------------------------------------------------------
# Model factories, imported lazily by name
# -----------------------------------------------------------------------------

MODEL_FACTORIES = {
    "echo": ("v2v.worker.models.echo", "EchoModelFactory"),
    "local": ("v2v.worker.models.local", "LocalModelFactory"),
    "openai": ("v2v.worker.models.openai_realtime", "OpenAIRealtimeFactory"),
    "gpt-live": ("v2v.worker.models.gpt_live", "GptLiveFactory"),
    "gemini": ("v2v.worker.models.gemini_live", "GeminiLiveFactory"),
}


def load_model_factory(name: str, config: ServerConfig) -> ModelFactory:
    """Import and build the factory of model ``name``; raises RuntimeError with the cause."""
    if name not in MODEL_FACTORIES:
        raise RuntimeError(f"unknown model {name!r}")
    module_name, cls_name = MODEL_FACTORIES[name]
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as e:
        raise RuntimeError(f"model {name!r} is not available: {e}") from e
    options: dict[str, Any] = {
        "api_key": os.environ.get("OPENAI_API_KEY"),
        # the flag wins; OPENAI_BASE_URL fills in when the setting was left at its default
        "base_url": (os.environ.get("OPENAI_BASE_URL") if config.openai_base_url == ServerConfig.openai_base_url
                     else None) or config.openai_base_url,
        "model": config.openai_model,
        "live_model": config.live_model,
        "gemini_api_key": os.environ.get("GEMINI_API_KEY"),
        "gemini_base_url": os.environ.get("GEMINI_BASE_URL"),
        "gemini_model": config.gemini_model,
        "turn_detection": config.turn_detection,
        "voice": config.voice or None,
        "instructions": config.instructions or None,
    }
    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in options.items() if v is not None}
    else:
        kwargs = {k: v for k, v in options.items() if k in params and v is not None}
    try:
        return cls(**kwargs)
    except Exception as e:  # a factory refusing its settings (no API key...)
        raise RuntimeError(f"model {name!r} cannot start: {e}") from e


# -----------------------------------------------------------------------------
# One call
# -----------------------------------------------------------------------------

EndCallback = Callable[[str], "Awaitable[None] | None"]


class Call:
    """A live call of any transport: the worker's CallSession plus bookkeeping.

    Made by :meth:`CallManager.create_call`. ``await call.end(reason)`` ends it
    (idempotent) and returns when everything is released; ``call.ended`` is
    set then. Transports register their own cleanup with :meth:`on_end`
    (called once, in reverse order of registration, with the end reason).
    """

    def __init__(
        self,
        manager: CallManager,
        call_id: str,
        transport: str,
        peer: str,
        profile: str | None,
        model_name: str,
        session: Any,
        playout: Any,
        audio_in: AudioInput,
    ) -> None:
        self.manager = manager
        self.call_id = call_id
        self.transport = transport
        self.peer = peer
        self.profile = profile
        self.model_name = model_name
        self.session = session
        self.playout = playout
        self.audio_in = audio_in
        self.log = CallLog(call_id, peer, transport)
        self.started_at = time.monotonic()
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        self._ending = False
        self._end_callbacks: list[EndCallback] = []
        self._runner: asyncio.Task | None = None
        self._end_task: asyncio.Task | None = None
        self._listeners: list[Callable[[object], None]] = []
        self.end_fields: list[Callable[[], dict[str, Any]]] = []  # transports' figures for the call-ended line

    @property
    def ending(self) -> bool:
        return self._ending

    def on_end(self, cb: EndCallback) -> None:
        self._end_callbacks.append(cb)

    def add_listener(self, cb: Callable[[object], None]) -> None:
        """Receive the call's :mod:`worker.events` (forwarded from the session)."""
        self._listeners.append(cb)

    def _on_event(self, e: object) -> None:
        self.manager.metrics.observe(e)
        self.log.observe(e)
        for cb in list(self._listeners):
            try:
                cb(e)
            except Exception:
                log.exception("call listener failed", extra={"call": self.call_id})
        if isinstance(e, ev.CallEnded) and not self._ending:
            # the session ended itself (disconnect-bot, fatal model error...)
            self.end_soon(e.reason or "other")

    def end_soon(self, reason: str) -> None:
        """Start ending the call without waiting (safe from callbacks)."""
        if self._ending:
            return
        self._mark_ending(reason)
        self._end_task = asyncio.get_running_loop().create_task(self._finish(reason))

    async def end(self, reason: str = "hangup") -> None:
        if not self._ending:
            self._mark_ending(reason)
            self._end_task = asyncio.get_running_loop().create_task(self._finish(reason))
        if self._end_task is not None and self._end_task is not asyncio.current_task():
            await asyncio.shield(self._end_task)

    def _mark_ending(self, reason: str) -> None:
        self._ending = True
        self.end_reason = reason
        # The caller is gone: the call leaves the active gauge at once.
        self.manager._call_ending(self)
        fields: dict[str, Any] = {}
        for more in self.end_fields:
            try:
                fields.update(more())
            except Exception:
                log.exception("call end fields failed", extra={"call": self.call_id})
        self.log.event("call-ended", reason=reason, duration_s=round(time.monotonic() - self.started_at, 3), **fields)

    async def _finish(self, reason: str) -> None:
        try:
            for cb in reversed(self._end_callbacks):
                try:
                    res = cb(reason)
                    if inspect.isawaitable(res):
                        await asyncio.wait_for(res, 5.0)
                except Exception:
                    log.exception("transport cleanup failed", extra={"call": self.call_id})
            try:
                await asyncio.wait_for(self.session.close(reason), 5.0)
            except Exception:
                log.exception("session close failed", extra={"call": self.call_id})
            end_input = getattr(self.audio_in, "end", None)
            if end_input is not None:
                end_input()
            if self._runner is not None and not self._runner.done():
                self._runner.cancel()
                try:
                    await asyncio.wait_for(asyncio.shield(self._runner), 5.0)
                except (TimeoutError, asyncio.CancelledError, Exception):
                    pass
        finally:
            self._listeners.clear()
            self.manager._call_gone(self)
            self.ended.set()

    async def _run(self) -> None:
        """Connect the model, then feed it the caller's audio until it ends."""
        reason = "hangup"
        try:
            await self.session.start()
            await self.session.run(self.audio_in)
            reason = getattr(self.session, "end_reason", None) or "hangup"
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("call failed", extra={"call": self.call_id})
            self.log.event("error", logging.ERROR, message=str(e), fatal=True)
            reason = "error"
        if not self._ending:
            self.end_soon(reason)


# -----------------------------------------------------------------------------
# The in-process dispatcher
# -----------------------------------------------------------------------------


class CallManager:
    """In-process worker pool: creates CallSessions and tracks every call.

    Transports create calls with :meth:`create_call`; :meth:`add_end_listener`
    tells who needs to know when a call ends (its id, transport and reason).
    """

    RETRY_AFTER_S = 5

    def __init__(
        self,
        config: ServerConfig,
        metrics: ServerMetrics | None = None,
        factories: dict[str, ModelFactory] | None = None,
    ) -> None:

        self.config = config
        self.metrics = metrics or ServerMetrics()
        self._factories: dict[str, ModelFactory] = dict(factories or {})
        self._factory_errors: dict[str, str] = {}
        self._calls: dict[str, Call] = {}  # every call not yet fully released
        self._live: set[str] = set()  # calls not ending (count against --max-calls)
        self._closing = False
        self._warmup: asyncio.Task | None = None
        self._app_tools = load_app(config.app) if config.app else None
        self._end_listeners: list[Callable[[Call, str], None]] = []
        # recordings (--record-dir) and webhooks (--webhook): shared/DESIGN.md section 7
        self.recordings = RecordingWriter(RecordingConfig(Path(config.record_dir), config.record_max_mb,
                                                          config.record_keep_days)) if config.record_dir else None
        self.webhooks = Webhooks(WebhookConfig(config.webhook, config.webhook_secret,
                                               config.webhook_turns)) if config.webhook else None
        self._recorders: dict[str, CallRecorder] = {}
        # who carries out a transfer (set by the call's host): (call, target, reason) -> outcome
        self.transferer: Callable[[Call, str, str], Awaitable[TransferOutcome]] | None = None

    # -- models ------------------------------------------------------------
    def model_for_profile(self, profile: str | None) -> str:
        """The request-URI user / profile picks a model: `echo`, `local`, `openai`;
        anything else gets the server's default."""
        profiles = self.config.profiles
        if profile and profile in profiles:
            return profiles[profile]
        if profile in ("echo",):
            return profile
        return self.config.model

    def factory(self, model: str) -> ModelFactory:
        f = self._factories.get(model)
        if f is None:
            try:
                f = load_model_factory(model, self.config)
            except RuntimeError as e:
                self._factory_errors[model] = str(e)
                raise Overloaded(str(e), retry_after=self.RETRY_AFTER_S) from e
            self._factories[model] = f
            self._factory_errors.pop(model, None)
        return f

    async def start(self) -> None:
        """Load the default model's factory now so /readyz tells the truth, and warm it up
        in the background (the local model loads its recognizer and voice)."""
        try:
            factory = self.factory(self.config.model)
        except DispatchError as e:
            log.error("default model unavailable", extra={"error": e.message})
            return
        warm = getattr(factory, "warm_up", None)
        if callable(warm):
            self._warmup = asyncio.get_running_loop().create_task(self._warm(warm))

    async def _warm(self, warm: Callable[[], Any]) -> None:
        t0 = time.monotonic()
        try:
            res = warm()
            if inspect.isawaitable(res):
                await res
            log.info("model ready", extra={"model": self.config.model, "warm_up_s": round(time.monotonic() - t0, 2)})
        except Exception as e:
            log.error("model warm-up failed", extra={"model": self.config.model, "error": str(e)})

    def not_ready_reason(self) -> str | None:
        if self._closing:
            return "shutting down"
        if self._warmup is not None and not self._warmup.done():
            return f"model {self.config.model!r} is warming up"
        if self.config.model not in self._factories:
            try:
                self.factory(self.config.model)
            except DispatchError as e:
                return e.message
        if len(self._live) >= self.config.max_calls:
            return f"at capacity ({self.config.max_calls} calls)"
        return None

    # -- calls -------------------------------------------------------------
    def active_calls(self, transport: str | None = None) -> int:
        return sum(1 for c in self._calls.values() if c.call_id in self._live and (transport is None or c.transport == transport))

    @property
    def calls(self) -> dict[str, Call]:
        """Every call not yet fully released, by call id (read only)."""
        return dict(self._calls)

    def get(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    def check_capacity(self, transport: str) -> None:
        """Raise :class:`Overloaded` when a new call would exceed --max-calls."""
        if self._closing:
            raise Overloaded("server is shutting down", retry_after=self.RETRY_AFTER_S)
        if len(self._live) >= self.config.max_calls:
            self.metrics.call_rejected(transport)
            # SIP: the dialog's refusal line (sip/refusals.py) is the one WARNING, with the caller and codecs
            (log.info if transport.startswith("sip") else log.warning)(
                "call-rejected", extra={"transport": transport, "reason": "max-calls", "max_calls": self.config.max_calls})
            raise Overloaded(
                f"too many calls (max {self.config.max_calls}); retry later", retry_after=self.RETRY_AFTER_S
            )

    async def create_call(
        self,
        transport: str,
        profile: str | None,
        audio_in: AudioInput,
        playout: Any,
        peer: str,
        *,
        call_id: str | None = None,
        session_config: SessionConfig | None = None,
        start: bool = True,
    ) -> Call:
        """Create a call on any transport and start its runtime.

        ``audio_in`` is the caller's audio (e.g. a QueueAudioInput the
        transport feeds), ``playout`` the PlayoutBuffer the transport's paced
        sender reads. Raises :class:`Overloaded` past --max-calls or when the
        model is unavailable. ``start=False`` lets the transport finish its own
        setup and call :meth:`start_call` later.
        """
        self.check_capacity(transport)
        model = self.model_for_profile(profile)
        factory = self.factory(model)
        call_id = call_id or f"{transport}-{uuid.uuid4().hex[:12]}"
        session = self._make_session(call_id, factory, playout, session_config, transport)
        call = Call(self, call_id, transport, peer, profile, model, session, playout, audio_in)
        session.add_listener(call._on_event)
        self._observe(call)
        self._calls[call_id] = call
        self._live.add(call_id)
        self.metrics.call_started(transport)
        call.log.event("call-started", model=model, profile=profile or "")
        if start:
            self.start_call(call)
        return call

    def start_call(self, call: Call) -> None:
        if call._runner is None and not call.ending:
            call._runner = asyncio.get_running_loop().create_task(call._run(), name=f"call-{call.call_id}")

    def _make_session(
        self, call_id: str, factory: ModelFactory, playout: Any, session_config: SessionConfig | None,
        transport: str = "webrtc",
    ) -> Any:
        from v2v.worker.call import CallConfig, CallSession

        sc = session_config or SessionConfig()
        if session_config is None:
            if self.config.instructions:
                sc.instructions = self.config.instructions
            if self.config.voice:
                sc.voice = self.config.voice
        caps = getattr(factory, "capabilities", None)
        turn: Literal["local", "server"] = (
            "server" if self.config.turn_detection == "server" and getattr(caps, "server_vad", False) else "local"
        )
        cc = CallConfig(turn_detection=turn, greeting=self.config.greeting, aec=call_aec(self.config.aec, transport),
                        turn_model=self.config.turn_model,  # type: ignore[arg-type]  # validated: off|smart-turn
                        turn_max_wait_ms=self.config.turn_max_wait_ms,
                        turn_threshold=self.config.turn_threshold)
        tools = _tools_for(factory)
        if self._app_tools is not None:
            from v2v.worker.tools import ToolRegistry

            tools = tools or ToolRegistry()
            self._app_tools(tools)
        if self.config.transfer_targets:
            from v2v.worker.tools import ToolRegistry

            tools = tools or ToolRegistry()
            add_transfer_tool(tools, functools.partial(self.transfer, call_id), self.config.transfer_targets)
        return CallSession(call_id, factory, cc, playout, tools, sc)

    async def transfer(self, call_id: str, target: str, reason: str) -> TransferOutcome:
        """Transfer the caller of ``call_id`` (the tool and the HTTP action): logged, then the host's
        :attr:`transferer` does it; no transferer or no live call: unavailable."""
        call = self._calls.get(call_id)
        if call is None or call.ending:
            return TransferOutcome(False, "the call is over")
        if self.transferer is None:
            return TransferOutcome(False, "transfer is unavailable for this caller")
        call.log.event("transfer-requested", target=target, reason=reason[:200])
        outcome = await self.transferer(call, target, reason)
        call.log.event("transfer-accepted" if outcome.ok else "transfer-failed", logging.INFO if outcome.ok
                       else logging.WARNING, target=target, sip_status=outcome.status, detail=outcome.detail)
        self.metrics.transfer(outcome.ok)
        return outcome

    def _observe(self, call: Call) -> None:
        """Start the call's recording and its webhooks (when configured)."""
        if self.recordings is not None:
            rec = self.recordings.open(public_call_id(call.call_id), call.playout.rate, {
                "transport": call.transport, "peer": call.peer, "profile": call.profile or "",
                "model": call.model_name})
            rec.attach(call.session)
            self._recorders[call.call_id] = rec
        if self.webhooks is not None:
            self.webhooks.call_started(call)

    def add_end_listener(self, cb: Callable[[Call, str], None]) -> None:
        """``cb(call, reason)`` when a call starts ending (it has left the active count)."""
        self._end_listeners.append(cb)

    def _call_ending(self, call: Call) -> None:
        if call.call_id in self._live:
            self._live.discard(call.call_id)
            self.metrics.call_ended(call.transport, call.end_reason or "other")
            if self.webhooks is not None:
                self.webhooks.call_ended(call, call.end_reason or "other")
            for cb in list(self._end_listeners):
                try:
                    cb(call, call.end_reason or "other")
                except Exception:
                    log.exception("call end listener failed", extra={"call": call.call_id})

    def _call_gone(self, call: Call) -> None:
        rec = self._recorders.pop(call.call_id, None)
        if rec is not None:
            rec.close(call.end_reason or "other")
        self._calls.pop(call.call_id, None)
        self._live.discard(call.call_id)

    async def hangup(self, call_id: str, reason: str = "hangup") -> None:
        call = self._calls.get(call_id)
        if call is None or call.ending:
            raise UnknownCall(f"unknown call {call_id!r}")
        await call.end(reason)

    # -- shutdown ----------------------------------------------------------
    async def close(self, reason: str = "shutdown") -> None:
        """End every call and wait until all are released."""
        self._closing = True
        if self._warmup is not None and not self._warmup.done():
            self._warmup.cancel()
            await asyncio.gather(self._warmup, return_exceptions=True)
        calls = list(self._calls.values())
        if calls:
            await asyncio.gather(*(c.end(reason) for c in calls), return_exceptions=True)
        if self.webhooks is not None:
            await self.webhooks.close()
        if self.recordings is not None:
            await asyncio.to_thread(self.recordings.close)


def load_app(spec: str) -> Callable[[Any], None] | None:
    """Import the application module of ``--app`` (a dotted name or a .py path).

    Importing it runs its registrations (e.g. RTVI client-message handlers);
    its ``register_tools(registry)``, if any, is returned to be called with
    every new call's :class:`worker.tools.ToolRegistry`.
    """
    import runpy

    try:
        if spec.endswith(".py"):
            namespace = runpy.run_path(spec, run_name="v2v_app")
            register = namespace.get("register_tools")
        else:
            register = getattr(importlib.import_module(spec), "register_tools", None)
    except Exception as exc:
        raise ValueError(f"--app {spec!r} could not be loaded: {exc}") from exc
    log.info("application module %s loaded%s", spec, " (tools)" if register else "")
    return register if callable(register) else None


def _tools_for(factory: ModelFactory) -> Any:
    """The tools a model ships (``factory.tools()`` -> [(ToolSpec, async func)]) in a ToolRegistry."""
    make = getattr(factory, "tools", None)
    if not callable(make):
        return None
    from v2v.worker.tools import ToolRegistry

    registry = ToolRegistry()
    try:
        pairs = make()
    except Exception:
        log.exception("model tools unavailable")
        return None
    for spec, func in pairs or []:
        registry.register(spec.name, spec.description, spec.parameters, func)
    return registry
