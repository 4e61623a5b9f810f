"""RTVI 2.1 over a text data channel: Pipecat's client SDKs talk to a call.

:class:`RTVIHandler` sits between one :class:`~worker.call.CallSession` and
one text channel (Pipecat's SmallWebRTC data channel, labelled ``chat``). The
transport calls :meth:`RTVIHandler.handle` with every incoming text frame and
gives the handler a ``send(text)`` callable for outgoing frames; the handler
subscribes to the call's events and translates each into RTVI. It knows
nothing about WebRTC: ``on_hangup(reason)`` is how the handler asks
the transport to end the call (``disconnect-bot``, ping timeout); without
one, the handler closes the call session itself (``call.close(reason)``).

Client messages (``client-message`` with ``t``/``d``) are served by handlers:
built in ``get-state`` and ``update-instructions``, plus any an application
registers with :func:`register_client_message_handler` (for every call) or
:meth:`RTVIHandler.register_client_message_handler` (for one call)::

    from v2v.worker.rtvi import ClientRequest, ClientMessageError, register_client_message_handler

    async def lookup_order(req: ClientRequest):
        if not isinstance(req.d, dict) or "order" not in req.d:
            raise ClientMessageError("d.order is required")   # -> error-response
        return {"status": "shipped"}                         # -> server-response d

    register_client_message_handler("lookup-order", lookup_order)

Built in: ``get-state`` answers ``{state}`` (initializing, listening,
thinking, speaking); ``update-instructions`` takes ``d: {instructions}`` (or
a string), changes the model's instructions for the rest of the call and
answers ``{ok: true}``. An unknown ``t`` answers ``error-response``.

Client-executed tools: a tool registered with ``client_side=True`` in the
call's :class:`~worker.tools.ToolRegistry` is announced with
``llm-function-call-in-progress``; the client's ``llm-function-call-result``
(same ``tool_call_id``) is handed to the call, which returns it to the model
(or a timeout error after the tool's timeout).

``server-message`` data: ``{type: "agent-state", state, previous}`` on every
state change (and right after ``bot-ready``), ``{type: "dtmf", digit}``,
``{type: "false-interruption", item_id}``. v2v adds ``item_id`` to speaking,
transcription and ``bot-output`` messages, and ``final``, ``interrupted``,
``spoken_text`` and ``unspoken`` to the last ``bot-output`` of an answer.

See :mod:`worker.rtvi_messages` for the wire format.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import events as ev
from . import rtvi_messages as m
from .rtvi_client import (
    BUILTIN_CLIENT_MESSAGES,
    ClientMessageError,
    ClientMessageHandler,
    ClientRequest,
    app_handler,
    register_client_message_handler,
    unregister_client_message_handler,
)
from .tasks import TaskSet

if TYPE_CHECKING:
    from .call import CallSession

__all__ = [
    "ClientMessageError", "ClientMessageHandler", "ClientRequest", "RTVIHandler",
    "register_client_message_handler", "unregister_client_message_handler",
]

log = logging.getLogger("v2v.rtvi")

PING_TIMEOUT_S = 3.0
READY_TIMEOUT_S = 10.0  # longest bot-ready waits for the model to connect
CLIENT_MESSAGE_TIMEOUT_S = 30.0
MAX_QUEUED_ACTIONS = 64
MAX_CONCURRENT_CLIENT_MESSAGES = 16
LOGGED_BAD_FRAMES = 20  # per call at INFO; the rest at DEBUG
PEER_LEFT_FLUSH_S = 0.05


@functools.lru_cache(maxsize=1)
def _version() -> str:
    try:
        from importlib.metadata import version

        return version("v2v")
    except Exception:
        return "0.1.0"


async def _wait(aw: Awaitable[Any]) -> Any:
    return await aw


def _about() -> dict[str, Any]:
    return {"library": "v2v", "library_version": _version()}


class RTVIHandler:
    """The RTVI side of one call. Create it, :meth:`start` it on the event
    loop, feed it frames with :meth:`handle`, :meth:`close` it at the end."""

    def __init__(
        self,
        call: CallSession,
        send: Callable[[str], None],
        on_hangup: Callable[[str], Awaitable[Any] | Any] | None = None,
        *,
        about: dict[str, Any] | None = None,
        ping_timeout: float = PING_TIMEOUT_S,
        ready_timeout: float = READY_TIMEOUT_S,
        max_frame_bytes: int = m.MAX_FRAME_BYTES,
    ) -> None:
        self.call = call
        self._send = send
        self._on_hangup = on_hangup
        self.about = about or _about()
        self.ping_timeout = ping_timeout
        self.ready_timeout = ready_timeout
        self.max_frame_bytes = max_frame_bytes
        self.client_major = 2
        self.client_minor = 1
        self.client_version: str | None = None
        self.client_about: dict[str, Any] = {}
        self.client_ready = False
        self.mic_enabled = True
        self.track_status: dict[int, bool] = {}
        self.last_ping_ms: int | None = None
        self._handlers: dict[str, ClientMessageHandler] = {}
        self._out = m.BotOutputTracker()
        self._client_tools: dict[str, str] = {}  # tool_call_id -> function name (awaiting a result)
        self._ready_id: str | None = None  # client-ready waiting for the model
        self._ready_timer: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._queue: asyncio.Queue[Callable[[], Awaitable[None]]] | None = None
        self._worker: asyncio.Task | None = None  # runs the queued actions
        self._background = TaskSet(f"rtvi {call.call_id}")  # holds the worker
        self._tasks = TaskSet(f"rtvi {call.call_id} client-messages")
        self._hangup_tasks = TaskSet(f"rtvi {call.call_id} hangup")  # not cancelled by close()
        self._started = False
        self._closed = False
        self._hung_up = False
        self._peer_left_sent = False
        self._bad_frames = 0
        call.add_listener(self._on_event)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the request worker (on the event loop; :meth:`handle` does it
        on the first frame). Call events are translated from construction on."""
        if self._started or self._closed:
            return
        self._started = True
        self._queue = asyncio.Queue(MAX_QUEUED_ACTIONS)
        self._worker = self._background.spawn(self._run_actions(), "rtvi-actions")

    async def close(self) -> None:
        """The call is over: tell the client (``peerLeft``, unless already
        sent), stop timers and tasks and unsubscribe; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.peer_left():
            # let the message leave before the transport closes the channel
            await asyncio.sleep(PEER_LEFT_FLUSH_S)
        remove = getattr(self.call, "remove_listener", None)
        if remove is not None:
            remove(self._on_event)
        for timer in (self._ping_timer, self._ready_timer):
            if timer is not None:
                timer.cancel()
        await self._background.cancel_all()
        await self._tasks.cancel_all()

    def register_client_message_handler(self, t: str, fn: ClientMessageHandler) -> None:
        """Serve ``client-message`` type ``t`` on this call only."""
        self._handlers[t] = fn

    # ---------------------------------------------------------------- output
    def send_raw(self, text: str) -> bool:
        try:
            self._send(text)
            return True
        except Exception as e:
            log.debug("call %s: send failed: %r", self.call.call_id, e)
            return False

    def send_message(self, type_: str, data: Any = None, id_: str | None = None) -> bool:
        """Send one RTVI message to the client."""
        try:
            text = m.rtvi_frame(type_, data, id_)
        except Exception as e:
            log.warning("call %s: cannot encode %s: %r", self.call.call_id, type_, e)
            return False
        return self.send_raw(text)

    def send_server_message(self, data: Any) -> bool:
        """An application's ``server-message`` (``onServerMessage`` on the client)."""
        return self.send_message("server-message", data)

    def send_error(self, message: str, fatal: bool = False) -> bool:
        return self.send_message("error", {"error": message, "fatal": fatal})

    def _error_response(self, id_: str, message: str) -> None:
        self.send_message("error-response", {"error": message}, id_)

    def peer_left(self) -> bool:
        """Tell the client the server left the call (sent once)."""
        if self._peer_left_sent:
            return False
        self._peer_left_sent = True
        return self.send_raw(m.signalling_frame("peerLeft"))

    # ----------------------------------------------------------------- input
    def handle(self, frame: str | bytes) -> None:
        """Serve one incoming frame. Never raises."""
        try:
            self._handle(frame)
        except Exception as e:
            log.exception("call %s: RTVI frame handling failed", self.call.call_id)
            self.send_error(f"internal error handling a message ({type(e).__name__})")

    def _handle(self, frame: str | bytes) -> None:
        if self._closed:
            return
        if not self._started:
            self.start()
        msg = m.parse_frame(frame, self.max_frame_bytes)
        if isinstance(msg, m.ProtocolError):
            self._bad_frames += 1
            log.log(logging.INFO if self._bad_frames <= LOGGED_BAD_FRAMES else logging.DEBUG,
                    "call %s: bad RTVI frame: %s", self.call.call_id, msg.message)
            if msg.id is not None:
                self._error_response(msg.id, msg.message)
            else:
                self.send_error(msg.message)
        elif isinstance(msg, m.Ping):
            self._on_ping(msg)
        elif isinstance(msg, m.TrackStatus):
            self.track_status[msg.receiver_index] = msg.enabled
            if msg.receiver_index == 0:
                self.mic_enabled = msg.enabled
        elif isinstance(msg, m.ClientReady):
            self._on_client_ready(msg)
        elif isinstance(msg, m.ClientMessage):
            if len(self._tasks) >= MAX_CONCURRENT_CLIENT_MESSAGES:
                self._error_response(msg.id, "too many requests in flight")
            else:
                self._tasks.spawn(self._serve_client_message(msg), f"client-message {msg.t[:64]}")
        elif isinstance(msg, m.SendText):
            self._enqueue(msg.id, lambda: self.call.send_text(
                msg.content, run_immediately=msg.run_immediately, audio_response=msg.audio_response))
        elif isinstance(msg, m.FunctionCallResult):
            self._on_function_result(msg)
        elif isinstance(msg, m.AppendToContext):
            self._enqueue(msg.id, lambda: self.call.append_context(
                msg.role, msg.content, run_immediately=msg.run_immediately))
        elif isinstance(msg, m.Dtmf):
            async def dtmf() -> None:
                for digit in msg.digits:
                    await self.call.dtmf(digit)
            self._enqueue(msg.id, dtmf)
        elif isinstance(msg, m.DisconnectBot):
            self.hangup("disconnect-bot")

    def _enqueue(self, id_: str | None, action: Callable[[], Awaitable[Any]]) -> None:
        """Run call actions one at a time, in arrival order."""
        assert self._queue is not None

        async def run() -> None:
            try:
                await action()
            except Exception as e:
                log.warning("call %s: RTVI action failed: %r", self.call.call_id, e)
                text = f"request failed: {type(e).__name__}: {e}"[:500]
                if id_ is not None:
                    self._error_response(id_, text)
                else:
                    self.send_error(text)

        try:
            self._queue.put_nowait(run)
        except asyncio.QueueFull:
            if id_ is not None:
                self._error_response(id_, "too many requests in flight")
            else:
                self.send_error("too many requests in flight")

    async def _run_actions(self) -> None:
        assert self._queue is not None
        while True:
            action = await self._queue.get()
            await action()

    def hangup(self, reason: str) -> None:
        """Ask the transport to end the call (once)."""
        if self._hung_up:
            return
        self._hung_up = True
        log.info("call %s: RTVI hangup (%s)", self.call.call_id, reason)
        try:
            res = self._on_hangup(reason) if self._on_hangup is not None else self.call.close(reason)
            if inspect.isawaitable(res):
                self._hangup_tasks.spawn(_wait(res), "rtvi-hangup")
        except Exception:
            log.exception("call %s: on_hangup failed", self.call.call_id)

    # -- ping watchdog -----------------------------------------------------
    def _on_ping(self, ping: m.Ping) -> None:
        self.last_ping_ms = ping.client_ms
        if self.ping_timeout <= 0:
            return
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        self._ping_timer = asyncio.get_running_loop().call_later(self.ping_timeout, self._ping_expired)

    def suspend_ping_watchdog(self) -> None:
        """Stop judging the client by its pings until it pings again (for a
        transport replacing the peer connection: pings pause meanwhile)."""
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None

    def _ping_expired(self) -> None:
        self._ping_timer = None
        if not self._closed:
            log.info("call %s: no ping for %.1f s", self.call.call_id, self.ping_timeout)
            self.hangup("ping-timeout")

    # -- client-ready ------------------------------------------------------
    def _on_client_ready(self, msg: m.ClientReady) -> None:
        self.client_major = msg.major
        self.client_minor = msg.minor
        self.client_version = msg.version
        self.client_about = msg.about
        self._out.legacy = msg.major < 2
        if msg.problem:
            log.info("call %s: client-ready: %s", self.call.call_id, msg.problem)
            self._error_response(msg.id, msg.problem + "; compatibility issues may occur")
        if self.call.state == "initializing":
            self._ready_id = msg.id
            if self._ready_timer is not None:
                self._ready_timer.cancel()
            self._ready_timer = asyncio.get_running_loop().call_later(self.ready_timeout, self._send_bot_ready)
        else:
            self._ready_id = msg.id
            self._send_bot_ready()

    def _send_bot_ready(self) -> None:
        if self._ready_timer is not None:
            self._ready_timer.cancel()
            self._ready_timer = None
        if self._ready_id is None or self._closed:
            return
        id_, self._ready_id = self._ready_id, None
        if self.client_major >= 2:
            data: dict[str, Any] = {"version": m.PROTOCOL_VERSION, "about": self.about}
        elif self.client_major == 1:
            data = {"version": m.LEGACY_PROTOCOL_VERSION, "about": self.about}
        else:  # RTVI 0.x: bot-ready carried the service config
            data = {"version": self.client_version or "0.3.0", "config": []}
        self.client_ready = True
        self.send_message("bot-ready", data, id_)
        self._send_state(self.call.state, None)

    def _send_state(self, state: str, previous: str | None) -> None:
        self.send_server_message({"type": "agent-state", "state": state, "previous": previous})

    # -- client-message ----------------------------------------------------
    async def _serve_client_message(self, msg: m.ClientMessage) -> None:
        fn = self._handlers.get(msg.t) or app_handler(msg.t) or BUILTIN_CLIENT_MESSAGES.get(msg.t)
        if fn is None:
            self._error_response(msg.id, f"unknown client message type {msg.t!r}")
            return
        req = ClientRequest(msg.t, msg.d, msg.id, self.call, self)
        try:
            res = fn(req)
            if inspect.isawaitable(res):
                res = await asyncio.wait_for(res, CLIENT_MESSAGE_TIMEOUT_S)
        except ClientMessageError as e:
            self._error_response(msg.id, str(e) or "request refused")
            return
        except TimeoutError:
            self._error_response(msg.id, f"{msg.t} timed out")
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("call %s: client-message handler %r failed", self.call.call_id, msg.t)
            self._error_response(msg.id, f"{msg.t} failed ({type(e).__name__})")
            return
        if not self.send_message("server-response", {"t": msg.t, "d": res}, msg.id):
            self._error_response(msg.id, f"{msg.t}: response could not be sent")

    # -- client-side tools -------------------------------------------------
    def _on_function_result(self, msg: m.FunctionCallResult) -> None:
        name = self._client_tools.get(msg.tool_call_id)
        if name is None:
            err = f"no client-side function call {msg.tool_call_id!r} is waiting for a result"
            if msg.id is not None:
                self._error_response(msg.id, err)
            else:
                self.send_error(err)
            return
        if msg.function_name is not None and msg.function_name != name:
            err = f"function_name {msg.function_name!r} does not match call {msg.tool_call_id!r} ({name})"
            if msg.id is not None:
                self._error_response(msg.id, err)
            else:
                self.send_error(err)
            return
        del self._client_tools[msg.tool_call_id]

        async def deliver() -> None:
            if not await self.call.client_function_result(msg.tool_call_id, msg.result):
                raise RuntimeError(f"function call {msg.tool_call_id!r} is no longer waiting")

        self._enqueue(msg.id, deliver)

    # ------------------------------------------------------- call -> client
    def _on_event(self, e: ev.CallEvent) -> None:
        if self._closed:
            return
        try:
            fn = _EVENTS.get(type(e))
            if fn is not None:
                fn(self, e)
        except Exception:
            log.exception("call %s: RTVI failed on %s", self.call.call_id, type(e).__name__)

    def _ev_state(self, e: ev.AgentStateChanged) -> None:
        if e.state == "ended":
            self._ready_id = None
        if self._ready_id is not None and e.state != "initializing":
            self._send_bot_ready()  # also sends the state
            return
        self._send_state(e.state, e.previous)

    def _ev_user_started(self, e: ev.UserStartedSpeaking) -> None:
        self.send_message("user-started-speaking")

    def _ev_user_stopped(self, e: ev.UserStoppedSpeaking) -> None:
        self.send_message("user-stopped-speaking")

    def _ev_bot_started(self, e: ev.BotStartedSpeaking) -> None:
        self.send_message("bot-started-speaking", {"item_id": e.item_id})

    def _ev_bot_stopped(self, e: ev.BotStoppedSpeaking) -> None:
        self.send_message("bot-stopped-speaking", {"item_id": e.item_id})

    def _ev_interrupted(self, e: ev.BotInterrupted) -> None:
        self.send_message("bot-interrupted", {"item_id": e.item_id, "played_ms": e.played_ms,
                                              "deleted": e.deleted})

    def _ev_false_interruption(self, e: ev.FalseInterruption) -> None:
        self.send_server_message({"type": "false-interruption", "item_id": e.item_id})

    def _ev_user_transcript(self, e: ev.UserTranscript) -> None:
        self.send_message("user-transcription", {
            "text": e.text, "final": e.final, "timestamp": m.iso_now(),
            "user_id": self.call.call_id, "item_id": e.item_id,
        })

    def _ev_bot_transcript(self, e: ev.BotTranscript) -> None:
        self.send_message("bot-transcription", {"text": e.text, "item_id": e.item_id})
        for data in self._out.produced(e.item_id, e.text):
            self.send_message("bot-output", data)

    def _ev_bot_output(self, e: ev.BotOutput) -> None:
        for data in self._out.heard(e.item_id, e.text, e.final, e.interrupted, e.spoken, e.unspoken):
            self.send_message("bot-output", data)
        if e.text.strip():
            self.send_message("bot-tts-text", {"text": e.text.strip()})

    def _ev_llm_started(self, e: ev.BotLLMStarted) -> None:
        self.send_message("bot-llm-started")

    def _ev_llm_stopped(self, e: ev.BotLLMStopped) -> None:
        self.send_message("bot-llm-stopped")

    def _ev_llm_text(self, e: ev.BotLLMText) -> None:
        self.send_message("bot-llm-text", {"text": e.text})

    def _ev_fc_started(self, e: ev.FunctionCallStarted) -> None:
        self.send_message("llm-function-call-started", {"function_name": e.name})

    def _ev_fc_in_progress(self, e: ev.FunctionCallInProgress) -> None:
        if e.client_side:
            self._client_tools[e.call_id] = e.name
        self.send_message("llm-function-call-in-progress", {
            "tool_call_id": e.call_id, "function_name": e.name, "arguments": e.arguments,
        })
        if e.client_side and (self.client_major, self.client_minor) < (1, 2):
            # RTVI before 1.2 runs client functions on the deprecated message only
            self.send_message("llm-function-call", {
                "function_name": e.name, "tool_call_id": e.call_id, "args": e.arguments,
            })

    def _ev_fc_stopped(self, e: ev.FunctionCallStopped) -> None:
        self._client_tools.pop(e.call_id, None)
        self.send_message("llm-function-call-stopped", {
            "tool_call_id": e.call_id, "function_name": e.name, "cancelled": e.cancelled,
            "result": e.result,
        })

    def _ev_metrics(self, e: ev.Metrics) -> None:
        data: dict[str, Any] = {}
        if e.ttfb_ms is not None:
            data["ttfb"] = [{"processor": e.processor, "value": round(e.ttfb_ms / 1000, 4)}]
        if e.barge_in_ms is not None:
            data["barge_in"] = [{"processor": e.processor, "value": round(e.barge_in_ms / 1000, 4)}]
        if data:
            self.send_message("metrics", data)

    def _ev_error(self, e: ev.CallError) -> None:
        self.send_error(e.message, e.fatal)

    def _ev_dtmf(self, e: ev.DtmfReceived) -> None:
        self.send_server_message({"type": "dtmf", "digit": e.digit})

    def _ev_ended(self, e: ev.CallEnded) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        self._ready_id = None
        self.peer_left()  # harmless when the client is already gone


_EVENTS: dict[type, Callable[[RTVIHandler, Any], None]] = {
    ev.AgentStateChanged: RTVIHandler._ev_state,
    ev.UserStartedSpeaking: RTVIHandler._ev_user_started,
    ev.UserStoppedSpeaking: RTVIHandler._ev_user_stopped,
    ev.BotStartedSpeaking: RTVIHandler._ev_bot_started,
    ev.BotStoppedSpeaking: RTVIHandler._ev_bot_stopped,
    ev.BotInterrupted: RTVIHandler._ev_interrupted,
    ev.FalseInterruption: RTVIHandler._ev_false_interruption,
    ev.UserTranscript: RTVIHandler._ev_user_transcript,
    ev.BotTranscript: RTVIHandler._ev_bot_transcript,
    ev.BotOutput: RTVIHandler._ev_bot_output,
    ev.BotLLMStarted: RTVIHandler._ev_llm_started,
    ev.BotLLMStopped: RTVIHandler._ev_llm_stopped,
    ev.BotLLMText: RTVIHandler._ev_llm_text,
    ev.FunctionCallStarted: RTVIHandler._ev_fc_started,
    ev.FunctionCallInProgress: RTVIHandler._ev_fc_in_progress,
    ev.FunctionCallStopped: RTVIHandler._ev_fc_stopped,
    ev.Metrics: RTVIHandler._ev_metrics,
    ev.CallError: RTVIHandler._ev_error,
    ev.DtmfReceived: RTVIHandler._ev_dtmf,
    ev.CallEnded: RTVIHandler._ev_ended,
}
