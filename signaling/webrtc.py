"""The WebRTC transport: one aiortc RTCPeerConnection per call.

For each call: the caller's audio track is always consumed (each packet
decoded on arrival, down-mixed to mono int16 and put into a
:class:`worker.transport.QueueAudioInput`), a :class:`media.track.AssistantTrack`
reading the call's :class:`media.playout.PlayoutBuffer` is added before the
answer, and the data channel is wired to the RTVI handler. A known ``pc_id``
renegotiates; ``restart_pc`` replaces the peer connection under the same
``pc_id`` and call. The call ends on DTLS/data-channel close, connection
failure, a new call not connecting within ``--connect-timeout`` (a restarted
peer connection: ``--ice-timeout``), no inbound media for ``--media-timeout``,
no packet at all (RTP or RTCP) from a connected caller for ``--peer-gone-timeout``
(its client was killed or its network cut: ``peer-gone``), DELETE, ``disconnect-bot``, a drain's end or shutdown; the caller is told why
(RTVI ``server-message`` ``{type: "call-ended", reason}``) unless it left.

A call belongs to its creator: its ``pc_id`` is 128 random bits given only to
the creator (logs show 8 hex digits of it), and with tokens re-offers,
``restart_pc``, PATCH and DELETE must come with the creator's subject
(:class:`~v2v.signaling.dispatch.CallKey`), else 403. An offer is bounded before aiortc
sees it: at most :data:`MAX_SDP_BYTES` and :data:`MAX_MLINES` media sections.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from v2v.media.audio import frame_to_mono
from v2v.media.playout import PlayoutBuffer
from v2v.media.resample import Resampler
from v2v.media.track import AssistantTrack
from v2v.worker.rtvi import RTVIHandler
from v2v.worker.transport import QueueAudioInput

from .aiortc_tuning import last_packet_at, patch_receiver, receive_direct
from .auth import new_pc_id
from .calls import Call, CallManager
from .dispatch import BadRequest, CallKey, Forbidden, IceCandidateInit, OfferAnswer, OfferRequest, UnknownCall
from .ice import RemoteCandidates, parse_candidate, split_offer

log = logging.getLogger("v2v.webrtc")

INPUT_RATE = 48000  # what the caller's audio is handed to the worker at
WATCHDOG_S = 0.25
MAX_OUTBOX = 256  # data-channel messages kept while the channel is not open
# offers are bounded before aiortc parses them (an offer of 1000 m-lines blocked the loop 1.2-1.6 s):
# a browser or Pipecat offer is 3-10 KB with audio, video and a data channel (3 m-lines)
MAX_SDP_BYTES = 32 * 1024
MAX_MLINES = 8  # audio, video, screen, data and spares; 16 cost aiortc 51-145 ms of loop time here, 8: 11-24 ms
MAX_CANDIDATES = 64  # per PATCH
SILENT_ENDS = ("peer-closed", "hangup")  # the caller ended it: no call-ended message

# -----------------------------------------------------------------------------
# One call's WebRTC side
# -----------------------------------------------------------------------------


def _parse_offer(sdp: Any, type_: Any) -> RTCSessionDescription:
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadRequest("'sdp' must be a non-empty string")
    if type_ != "offer":
        raise BadRequest("'type' must be \"offer\"")
    if len(sdp) > MAX_SDP_BYTES:
        raise BadRequest(f"SDP too large (max {MAX_SDP_BYTES} bytes)")
    if not sdp.lstrip().startswith("v=0"):
        raise BadRequest("invalid SDP: must start with v=0")
    mlines = sdp.count("\nm=") + sdp.startswith("m=")
    if mlines > MAX_MLINES:
        raise BadRequest(f"too many media sections ({mlines}, max {MAX_MLINES})")
    if "m=audio" not in sdp:
        raise BadRequest("invalid SDP: the offer has no audio section")
    return RTCSessionDescription(sdp=sdp, type="offer")


class WebRTCCall:
    """The peer connection(s), tracks and data channel of one call."""

    def __init__(self, transport: WebRTCTransport, pc_id: str, key: CallKey | None = None) -> None:
        self.transport = transport
        self.pc_id = pc_id
        self.key = key or CallKey()
        self.call: Call | None = None
        self.audio_in = QueueAudioInput(INPUT_RATE)
        self.playout = PlayoutBuffer()
        self.pc: RTCPeerConnection | None = None
        self.track: AssistantTrack | None = None
        self.rtvi: Any = None
        self.channel: Any = None
        self._outbox: list[str] = []
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._watchdog: asyncio.Task | None = None
        self._remote: dict[RTCPeerConnection, RemoteCandidates] = {}  # the caller's candidates, per pc
        self._closed = False
        self._since = time.monotonic()  # when the current pc started connecting
        self._last_media: float | None = None
        self.packets_in = 0
        self.connected_at: float | None = None
        self.ever_connected = False  # a new call gets --connect-timeout, a restarted pc --ice-timeout

    # -- peer connection setup ------------------------------------------------
    def _new_pc(self) -> RTCPeerConnection:
        servers = [
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in self.transport.manager.config.ice_servers
        ]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.transport._pc_opened(pc)

        @pc.on("track")
        def on_track(track: Any) -> None:
            if pc is not self.pc and self.pc is not None:
                return
            self._spawn(self._consume(pc, track))

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            self._wire_channel(pc, channel)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            self._on_state(pc)

        return pc

    async def _negotiate(self, pc: RTCPeerConnection, offer: RTCSessionDescription, track: AssistantTrack) -> str:
        # answered without the caller's candidates (see signaling.ice), which are added after
        sdp, offered, end = split_offer(offer.sdp)
        remote = [parse_candidate(c) for c in offered] + ([None] if end else [])
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as e:  # aiortc raises many types on bad SDP
            raise BadRequest(f"invalid SDP offer: {e}") from e
        audio_ok = False
        for t in pc.getTransceivers():
            if t.kind == "audio":
                patch_receiver(t.receiver)
                if not audio_ok:
                    audio_ok = True
                    receive_direct(t.receiver, functools.partial(self._on_pcm, pc))
                    if t.sender.track is None and track not in [s.track for s in pc.getSenders()]:
                        t.sender.replaceTrack(track)
                    t.direction = "sendrecv"
                else:
                    t.direction = "inactive"  # one microphone per call
            else:
                t.direction = "inactive"  # a voice agent: no video either way
        if not audio_ok:
            raise BadRequest("invalid SDP offer: no audio section")
        try:
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as e:
            raise BadRequest(f"cannot answer this offer: {e}") from e
        await self._remote.setdefault(pc, RemoteCandidates(pc)).add(remote, from_offer=True)
        return pc.localDescription.sdp

    # -- inbound media ------------------------------------------------------
    def _on_pcm(self, pc: RTCPeerConnection, pcm: Any) -> None:
        """The caller's audio decoded in the RTP hook (aiortc_tuning.receive_direct): mono 48 kHz int16."""
        if pc is not self.pc or not len(pcm):
            return
        self._last_media = time.monotonic()
        self.packets_in += 1
        self.audio_in.put(pcm)

    async def _consume(self, pc: RTCPeerConnection, track: Any) -> None:
        """Always read the remote track (aiortc queues unread frames forever; with the direct receive path
        it only ends when the receiver stops)."""
        audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
        if track.kind != "audio" or not audio or track is not audio[0].receiver.track:
            while True:  # not the caller's microphone: drain and drop
                try:
                    await track.recv()
                except MediaStreamError:
                    return
        resampler: Resampler | None = None
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if pc is not self.pc or not isinstance(frame, AudioFrame):
                continue
            self._last_media = time.monotonic()
            self.packets_in += 1
            pcm = frame_to_mono(frame)
            if frame.sample_rate != INPUT_RATE:
                if resampler is None or resampler.in_rate != frame.sample_rate:
                    resampler = Resampler(frame.sample_rate, INPUT_RATE)
                pcm = resampler.process(pcm)
            if len(pcm):
                self.audio_in.put(pcm)

    # -- data channel -----------------------------------------------------------
    def _wire_channel(self, pc: RTCPeerConnection, channel: Any) -> None:
        if pc is not self.pc:
            return
        self.channel = channel

        @channel.on("message")
        def on_message(message: Any) -> None:
            if pc is not self.pc or self.rtvi is None:
                return
            if isinstance(message, bytes):
                message = message.decode("utf-8", "replace")
            try:
                self.rtvi.handle(message)
            except Exception:
                log.exception("RTVI handler failed", extra={"call": self.pc_id})

        @channel.on("close")
        def on_close() -> None:
            if pc is self.pc and channel is self.channel:
                self._end("peer-closed")

        if channel.readyState == "open":
            self._flush_outbox()
        else:
            channel.on("open", self._flush_outbox)

    def send(self, text: str) -> None:
        """Send one text message on the data channel (kept until it opens)."""
        ch = self.channel
        if ch is not None and ch.readyState == "open":
            try:
                ch.send(text)
            except Exception:
                log.debug("data channel send failed", exc_info=True)
            return
        if not self._closed and len(self._outbox) < MAX_OUTBOX:
            self._outbox.append(text)

    def _flush_outbox(self) -> None:
        pending, self._outbox = self._outbox, []
        for text in pending:
            self.send(text)

    # -- connection state ---------------------------------------------------------
    def _on_state(self, pc: RTCPeerConnection) -> None:
        if pc is not self.pc or self._closed:
            return
        state = pc.connectionState
        if self.call is not None:
            self.call.log.event("connection-state", logging.DEBUG, state=state)
        if state == "connected":
            now = time.monotonic()
            if self.connected_at is None:
                self.connected_at = now
                self.ever_connected = True
                if self.call is not None:
                    self.call.log.event("connected", setup_ms=round((now - self._since) * 1000))
            if self._last_media is None:
                self._last_media = now
        elif state == "failed":
            self._ice_failed("ice-failed")
        elif state == "closed":
            self._end("peer-closed")

    async def _watch(self) -> None:
        cfg = self.transport.manager.config
        while not self._closed:
            await asyncio.sleep(WATCHDOG_S)
            pc = self.pc
            if pc is None:
                continue
            now = time.monotonic()
            if pc.connectionState != "connected":
                limit = cfg.ice_timeout if self.ever_connected else min(cfg.connect_timeout, cfg.ice_timeout)
                if now - self._since > limit:
                    self._ice_failed("ice-timeout")
                    return
            elif self._peer_gone(pc, now, cfg.peer_gone_timeout):
                self._end("peer-gone")
                return
            elif self._last_media is not None and now - self._last_media > cfg.media_timeout:
                self._end("media-timeout")
                return

    @staticmethod
    def _peer_gone(pc: RTCPeerConnection, now: float, timeout: float) -> bool:
        """Connected, and no RTP or RTCP packet from a caller that has sent some for ``timeout`` seconds.

        A present client sends RTCP every few seconds even when muted (and a
        browser's Opus DTX keeps some RTP); a killed one or a cut network sends
        nothing. Without the packet clock (aiortc stock) only --media-timeout applies.
        """
        for t in pc.getTransceivers():
            if t.kind == "audio":
                last = last_packet_at(t.receiver.transport)
                return last is not None and now - last > timeout
        return False

    def _ice_failed(self, reason: str) -> None:
        """ICE did not connect: a warning saying what the caller's candidates were, then end."""
        remote = self._remote.get(self.pc) if self.pc is not None else None
        held = remote.summary() if remote is not None else "unknown"
        if self.call is not None and not self.call.ending:
            self.call.log.event("ice-failed", logging.WARNING, reason=reason, candidates=held)
        self._end(reason)

    def _end(self, reason: str) -> None:
        if self.call is not None and not self.call.ending:
            self.call.end_soon(reason)

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- lifecycle -----------------------------------------------------------------
    async def open(
        self,
        offer: RTCSessionDescription,
        peer: str,
        *,
        transport: str = "webrtc",
        profile: str | None = None,
        rtvi: bool = True,
        start: bool = True,
    ) -> str:
        """Answer ``offer`` and create the call; returns the answer SDP.

        With ``start=False`` nothing runs until :meth:`start` (e.g. SIP answers
        with 200 OK first).
        """
        mgr = self.transport.manager
        mgr.check_capacity(transport)
        self.pc = self._new_pc()
        self.track = AssistantTrack(self.playout)
        try:
            sdp = await self._negotiate(self.pc, offer, self.track)
            self.call = await mgr.create_call(
                transport, profile, self.audio_in, self.playout, peer, call_id=self.pc_id, start=False
            )
        except BaseException:
            await self._release()
            raise
        self.call.on_end(self._on_call_end)
        if rtvi:
            self.rtvi = RTVIHandler(self.call.session, self.send, on_hangup=self._end)
            self.rtvi.start()
        if start:
            self.start()
        return sdp

    def start(self) -> None:
        """Start the call's runtime and its ICE/media watchdog (idempotent)."""
        if self.call is None or self.call.ending or self._watchdog is not None:
            return
        self._since = time.monotonic()
        self._watchdog = self._spawn(self._watch())
        self.transport.manager.start_call(self.call)
        if self.pc is not None:
            self._on_state(self.pc)  # in case it connected during negotiation

    async def renegotiate(self, offer: RTCSessionDescription, restart_pc: bool) -> str:
        async with self._lock:
            if self._closed or self.call is None or self.call.ending:
                raise UnknownCall(f"unknown pc_id {self.pc_id!r}")
            if not restart_pc:
                assert self.pc is not None and self.track is not None
                try:
                    return await self._negotiate(self.pc, offer, self.track)
                except BadRequest:
                    raise
            # restart: a new peer connection under the same pc_id and call;
            # the client's pings pause while its data channel is replaced
            if self.rtvi is not None:
                self.rtvi.suspend_ping_watchdog()
            old_pc, old_track, old_channel = self.pc, self.track, self.channel
            new_pc = self._new_pc()
            new_track = AssistantTrack(self.playout)
            self.pc, self.track, self.channel = new_pc, new_track, None
            try:
                sdp = await self._negotiate(new_pc, offer, new_track)
            except BaseException:
                # the old peer connection and its data channel carry on
                self.pc, self.track, self.channel = old_pc, old_track, old_channel
                new_track.stop()
                await self._close_pc(new_pc)
                if old_channel is not None and old_channel.readyState == "open":
                    self._flush_outbox()  # what was queued meanwhile
                raise
            self._since = time.monotonic()
            self.connected_at = None
            self._last_media = None
            if old_track is not None:
                old_track.stop()
            if old_pc is not None:
                old_pc.remove_all_listeners()
                self._spawn(self._close_pc(old_pc))
            self.call.log.event("pc-restarted")
            self._on_state(new_pc)
            return sdp

    async def renegotiate_sdp(self, sdp: str) -> str:
        """A new offer (SDP text) on the same peer connection -> answer SDP."""
        return await self.renegotiate(_parse_offer(sdp, "offer"), False)

    async def add_candidates(self, candidates: list[IceCandidateInit]) -> None:
        pc = self.pc
        if pc is None or self._closed:
            raise UnknownCall(f"unknown pc_id {self.pc_id!r}")
        remote = self._remote.get(pc)
        if remote is None:
            raise UnknownCall(f"unknown pc_id {self.pc_id!r}")
        await remote.add([parse_candidate(c) for c in candidates], from_offer=False)

    async def _on_call_end(self, reason: str) -> None:
        if self.rtvi is not None:
            try:
                if reason not in SILENT_ENDS:
                    self.rtvi.send_server_message({"type": "call-ended", "reason": reason})
                if reason != "peer-closed":
                    self.rtvi.peer_left()
                await self.rtvi.close()
            except Exception:
                log.exception("RTVI close failed", extra={"call": self.pc_id})
        await self._release()

    async def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.transport._forget(self)
        if self.track is not None:
            self.track.stop()
        pc, self.pc = self.pc, None
        self.channel = None
        self._outbox.clear()
        if pc is not None:
            pc.remove_all_listeners()
            await self._close_pc(pc)
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.audio_in.end()
        self.rtvi = None

    async def _close_pc(self, pc: RTCPeerConnection) -> None:
        remote = self._remote.pop(pc, None)
        if remote is not None:
            remote.close()
        try:
            await asyncio.wait_for(pc.close(), 5.0)
        except Exception:
            log.debug("peer connection close failed", exc_info=True)
        finally:
            self.transport._pc_closed(pc)


class WebRTCTransport:
    """All WebRTC calls of one server, by ``pc_id``."""

    def __init__(self, manager: CallManager) -> None:
        self.manager = manager
        self._calls: dict[str, WebRTCCall] = {}
        self._open_pcs: set[RTCPeerConnection] = set()

    @property
    def open_peer_connections(self) -> int:
        return len(self._open_pcs)

    def get(self, pc_id: str) -> WebRTCCall | None:
        return self._calls.get(pc_id)

    def has_call(self, pc_id: str | None) -> bool:
        """Is ``pc_id`` a live call (an offer for it renegotiates)?"""
        wc = self._calls.get(pc_id) if pc_id else None
        return wc is not None and wc.call is not None and not wc.call.ending

    def _pc_opened(self, pc: RTCPeerConnection) -> None:
        self._open_pcs.add(pc)

    def _pc_closed(self, pc: RTCPeerConnection) -> None:
        self._open_pcs.discard(pc)

    def _forget(self, wc: WebRTCCall) -> None:
        if self._calls.get(wc.pc_id) is wc:
            del self._calls[wc.pc_id]

    def owned(self, pc_id: str, key: CallKey | None) -> WebRTCCall:
        """The live call ``pc_id`` if ``key`` is its creator's (None: an internal caller, no check).

        :class:`UnknownCall` when there is no such HTTP WebRTC call, :class:`Forbidden`
        when the key is not the creator's.
        """
        wc = self._calls.get(pc_id)
        if wc is None or wc.call is None or wc.call.ending:
            raise UnknownCall(f"unknown pc_id {pc_id!r}")
        if key is not None:
            if not hmac.compare_digest(wc.key.owner.encode(), key.owner.encode()):
                wc.call.log.event("call-key-refused", logging.WARNING)
                raise Forbidden("this call belongs to another caller")
        return wc

    async def offer(self, req: OfferRequest, peer: str) -> OfferAnswer:
        offer = _parse_offer(req.sdp, req.type)
        if req.pc_id is not None and self.has_call(req.pc_id):
            existing = self.owned(req.pc_id, req.key)
            sdp = await existing.renegotiate(offer, bool(req.restart_pc))
            return OfferAnswer(sdp, "answer", existing.pc_id)
        # unknown pc_id (e.g. the server restarted): a new call, as Pipecat does
        profile = req.profile
        if profile is None and isinstance(req.request_data, dict) and isinstance(req.request_data.get("profile"), str):
            profile = req.request_data["profile"]
        wc, sdp = await self.answer(offer, peer, profile=profile, register=True, key=req.key)
        return OfferAnswer(sdp, "answer", wc.pc_id)

    async def answer(
        self,
        offer: RTCSessionDescription | str,
        peer: str,
        *,
        transport: str = "webrtc",
        profile: str | None = None,
        call_id: str | None = None,
        register: bool = False,
        rtvi: bool = True,
        start: bool = True,
        key: CallKey | None = None,
    ) -> tuple[WebRTCCall, str]:
        """A new call answering a WebRTC offer (SDP text or description).

        ``register`` makes it reachable by ``pc_id`` (PATCH/DELETE/renegotiation
        of /api/offer). Returns the call's transport side and the answer SDP.
        Raises :class:`~signaling.calls.BadRequest` (bad SDP) or
        :class:`~signaling.calls.Overloaded` (max calls, model unavailable).
        """
        if isinstance(offer, str):
            offer = _parse_offer(offer, "offer")
        wc = WebRTCCall(self, call_id or new_pc_id(), key)
        if register:
            self._calls[wc.pc_id] = wc
        try:
            sdp = await wc.open(offer, peer, transport=transport, profile=profile, rtvi=rtvi, start=start)
        except BaseException:
            self._forget(wc)
            raise
        return wc, sdp

    async def add_candidates(self, pc_id: str, candidates: list[IceCandidateInit], key: CallKey | None = None) -> None:
        if len(candidates) > MAX_CANDIDATES:
            raise BadRequest(f"too many candidates in one request (max {MAX_CANDIDATES})")
        await self.owned(pc_id, key).add_candidates(candidates)

    async def close(self) -> None:
        for wc in list(self._calls.values()):
            await wc._release()
