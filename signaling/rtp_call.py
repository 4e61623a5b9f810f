"""The media of a SIP call on plain RTP (G.711), held by the worker process.

Made from a :class:`~v2v.signaling.dispatch.MediaRequest` (the INVITE's SDP
offer, or none for a delayed offer): binds an RTP port, creates the call
through the :class:`~v2v.signaling.calls.CallManager` with the transport label
(``sip_udp``/``sip_tcp``) and the request-URI user as profile, and answers
with the worker's media address. The SIP dialog itself stays with signaling.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from v2v.media.g711 import G711Codec
from v2v.media.playout import PlayoutBuffer
from v2v.worker.tasks import TaskSet
from v2v.worker.transport import QueueAudioInput

from .calls import Call, CallManager
from .dispatch import BadRequest, MediaRequest
from .sip.rtp_session import PortAllocator, RtpSession
from .sip.sdp import AudioOffer, SdpError, SdpSession, check_address, parse_offer
from .sip.srtp import CallSrtp

log = logging.getLogger("v2v.sip")


@dataclass
class RtpMediaConfig:
    """Where a worker's RTP lives: bind host, advertised host, port range, timeout."""

    rtp_host: str
    public_host: str
    ports: PortAllocator
    media_timeout: float
    srtp: str = "allow"  # --sip-srtp: off | allow | require (sip/srtp.py)


class RtpCall:
    """One SIP call's RTP session and its :class:`Call`."""

    def __init__(self, call: Call, rtp: RtpSession, sdp: SdpSession, answer_sdp: str, awaiting_answer: bool) -> None:
        self.call = call
        self.rtp = rtp
        self.sdp = sdp
        self.answer_sdp = answer_sdp
        self.awaiting_answer = awaiting_answer
        self.srtp = rtp.srtp or CallSrtp("off")
        self._tasks = TaskSet()
        call.on_end(self._on_call_end)

    @classmethod
    async def create(cls, manager: CallManager, cfg: RtpMediaConfig, req: MediaRequest) -> RtpCall:
        """Bind RTP and create the call (not started); raises BadRequest or Overloaded."""
        offer = None
        srtp = CallSrtp(cfg.srtp, lambda reason: manager.metrics.srtp_dropped.labels(reason=reason).inc())
        if req.offer_sdp.strip():
            try:
                offer = parse_offer(req.offer_sdp)
                srtp.on_offer(offer)  # the --sip-srtp policy: 488 with its reason
            except SdpError as e:
                raise BadRequest(str(e)[:80]) from e
        manager.check_capacity(req.transport)
        sock = cfg.ports.bind(cfg.rtp_host)
        if offer is not None:
            try:
                check_reachable(sock, offer.address)
            except BadRequest:
                sock.close()
                raise
        audio_in = QueueAudioInput(8000)
        playout = PlayoutBuffer()
        if offer is not None:
            codec, pt, dtmf_pt, remote = offer.codec, offer.payload_type, offer.dtmf_pt, (offer.address, offer.port)
        else:  # delayed offer: we offer PCMU/PCMA/telephone-event, the ACK answers
            codec, pt, dtmf_pt, remote = "PCMU", 0, 101, ("0.0.0.0", 0)
        holder: list[RtpCall] = []
        rtp = RtpSession(
            sock, codec, pt, dtmf_pt, remote, playout,
            audio_in.put, lambda d: holder[0]._on_dtmf(d) if holder else None,
            lambda: holder[0]._on_timeout() if holder else None, timeout=cfg.media_timeout,
            signaling_ip=req.peer.rpartition(":")[0].strip("[]") or None,
        )
        if offer is not None:
            rtp.update_remote(remote, not offer.on_hold, offer.direction in ("sendrecv", "sendonly"))
        else:
            srtp.our_offer()
        rtp.srtp = srtp
        try:
            call = await manager.create_call(
                req.transport, req.profile, audio_in, playout, req.peer, call_id=req.call_id, start=False
            )
        except BaseException:
            sock.close()
            raise
        call.log.event("sip-call", sip_call_id=req.sip_call_id, codec=codec, rtp_port=rtp.local_port,
                       user=req.user, from_uri=req.from_uri, delayed_offer=offer is None)
        sdp = SdpSession(cfg.public_host)
        answer = sdp.build_answer(offer, rtp.local_port) if offer is not None else sdp.build_offer(rtp.local_port)
        answer = srtp.sdp(answer, rtp.local_port, offer)
        self = cls(call, rtp, sdp, answer, offer is None)
        holder.append(self)
        return self

    async def start(self) -> None:
        if self.call.ending:
            return
        await self.rtp.start()
        self.call.manager.start_call(self.call)

    def _apply(self, desc: AudioOffer) -> None:
        check_reachable(self.rtp.sock, desc.address)
        if desc.codec != self.rtp.codec.name or desc.payload_type != self.rtp.payload_type:
            self.rtp.codec = G711Codec(desc.codec)
            self.rtp.payload_type = desc.payload_type
        self.rtp.dtmf_pt = desc.dtmf_pt
        self.rtp.update_remote((desc.address, desc.port), not desc.on_hold, desc.direction in ("sendrecv", "sendonly"))

    async def reoffer(self, sdp: str) -> str:
        try:
            offer = parse_offer(sdp)
            self.srtp.on_offer(offer)
        except SdpError as e:
            raise BadRequest(str(e)[:80]) from e
        self._apply(offer)
        self.call.log.event("sip-hold" if offer.on_hold else "sip-unhold", direction=offer.direction)
        self.answer_sdp = self.srtp.sdp(self.sdp.build_answer(offer, self.rtp.local_port), self.rtp.local_port, offer)
        return self.answer_sdp

    async def set_answer(self, sdp: str) -> None:
        self.awaiting_answer = False
        try:
            answer = parse_offer(sdp)
            self.srtp.on_answer(answer)
            self._apply(answer)
        except SdpError as e:
            raise BadRequest(str(e)[:80]) from e

    async def dtmf(self, digit: str) -> None:
        if not self.call.ending:
            await self.call.session.dtmf(digit)

    def _on_dtmf(self, digit: str) -> None:
        if not self.call.ending:
            self._tasks.spawn(self.dtmf(digit), f"sip-dtmf-{digit}")

    def _on_timeout(self) -> None:
        if self.rtp.timeout_reason:
            self.call.log.event("sip-media-timeout", why=self.rtp.timeout_reason)
        self.call.end_soon("media-timeout")

    async def _on_call_end(self, reason: str) -> None:
        await self._tasks.cancel_all()
        await self.rtp.close()


def check_reachable(sock: socket.socket, address: str) -> None:
    """Raise BadRequest (488) when the RTP socket cannot send to the SDP's address.

    An IPv6 address needs an IPv6 socket; an IPv4 one an IPv4 socket or a
    dual-stack IPv6 socket (bound to ``::``). Hold (0.0.0.0 / ::) is fine.
    """
    try:
        ip = check_address(address)
    except SdpError as e:
        raise BadRequest(str(e)[:80]) from e
    if ip.is_unspecified:
        return
    if ip.version == 6 and sock.family != socket.AF_INET6:
        raise BadRequest("IPv6 media address, but RTP is bound to IPv4 (--host)")
    if ip.version == 4 and sock.family == socket.AF_INET6:
        v6only = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        if v6only or sock.getsockname()[0] not in ("::", "::0"):
            raise BadRequest("IPv4 media address, but RTP is bound to an IPv6 address (--host)")
