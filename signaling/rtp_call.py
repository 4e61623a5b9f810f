"""The media of a SIP call on plain RTP (G.711, G.722, Opus), held by the worker process.

Made from a :class:`~v2v.signaling.dispatch.MediaRequest` (the INVITE's SDP
offer, or none for a delayed offer): binds an RTP port, creates the call
through the :class:`~v2v.signaling.calls.CallManager` with the transport label
(``sip_udp``/``sip_tcp``) and the request-URI user as profile, and answers
with the worker's media address and the best common codec by ``--sip-codecs``
(a delayed offer gets our offer of that list). The caller's audio reaches the
worker at the codec's decoded rate (8, 16 or 48 kHz). The SIP dialog itself
stays with signaling.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from v2v.media.playout import PlayoutBuffer
from v2v.media.rtp_codecs import DEFAULT_PREFERENCE, OPUS_BITRATE, RtpCodec, codec_info, make_codec
from v2v.worker.tasks import TaskSet
from v2v.worker.transport import QueueAudioInput

from .calls import Call, CallManager
from .dispatch import BadRequest, MediaRequest
from .sip.addr import AddressMismatch, MediaAddresses, sdp_address_for
from .sip.rtcp import RtcpSession
from .sip.rtp_session import PortAllocator, RtpSession
from .sip.sdp import DTMF48_PT, DTMF_PT, OPUS_PT, AudioOffer, SdpError, SdpSession, check_address, parse_offer
from .sip.srtp import CallSrtp

log = logging.getLogger("v2v.sip")


@dataclass
class RtpMediaConfig:
    """Where a worker's RTP lives: bind host, advertised host, port range, timeout; codecs, SRTP policy."""

    rtp_host: str
    public_host: str
    ports: PortAllocator
    media_timeout: float
    srtp: str = "allow"  # --sip-srtp: off | allow | require (sip/srtp.py)
    codecs: tuple[str, ...] = DEFAULT_PREFERENCE  # --sip-codecs, as media.rtp_codecs keys
    addresses: MediaAddresses | None = None  # bind/SDP address per offer family (sip/addr.py)

    def media_host(self, remote: str | None) -> tuple[str, str]:
        """(RTP bind address, SDP address) toward ``remote``; BadRequest (488) if no address has its family."""
        if self.addresses is None:
            return self.rtp_host, self.public_host
        try:
            return self.addresses.choose(remote)
        except AddressMismatch as e:
            raise BadRequest(str(e)) from e


def offer_codec(desc: AudioOffer) -> RtpCodec:
    """The codec an offer or answer chose; Opus (RFC 7587): FEC out when the peer asks for it
    (useinbandfec=1), never above its maxaveragebitrate."""
    params = desc.fmtp_params()
    limit = params.get("maxaveragebitrate", "")
    bitrate = int(limit) if limit.isascii() and limit.isdigit() and len(limit) <= 7 else OPUS_BITRATE
    return make_codec(desc.codec, fec=params.get("useinbandfec") == "1", bitrate=bitrate)


def initial_media(offer: AudioOffer | None, codecs: tuple[str, ...]) -> tuple[RtpCodec, int, int | None,
                                                                              tuple[str, int]]:
    """A new call's codec, payload type, telephone-event type and remote address. No offer (we offer
    ``codecs``, the ACK or 2xx answers): our first preference until the answer says otherwise."""
    if offer is not None:
        return offer_codec(offer), offer.payload_type, offer.dtmf_pt, (offer.address, offer.port)
    first = codec_info(codecs[0])
    pt = first.static_pt if first.static_pt is not None else OPUS_PT
    return make_codec(first.key), pt, DTMF_PT if first.clock_rate == 8000 else DTMF48_PT, ("0.0.0.0", 0)


class RtpCall:
    """One SIP call's RTP session and its :class:`Call`."""

    def __init__(self, call: Call, rtp: RtpSession, sdp: SdpSession, answer_sdp: str, awaiting_answer: bool,
                 codecs: tuple[str, ...] = DEFAULT_PREFERENCE) -> None:
        self.call = call
        self.codecs = codecs
        self.audio_in: QueueAudioInput | None = None
        self.rtcp: RtcpSession | None = None  # sender/receiver reports (sip/rtcp.py)
        self.started = False
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
                offer = parse_offer(req.offer_sdp, cfg.codecs)
                srtp.on_offer(offer)  # the --sip-srtp policy: 488 with its reason
            except SdpError as e:
                raise BadRequest(str(e)[:80]) from e
        manager.check_capacity(req.transport)
        bind_host, sdp_host = cfg.media_host(offer.address if offer is not None else req.peer.rpartition(":")[0])
        sock = cfg.ports.bind(bind_host)
        if offer is not None:
            try:
                check_reachable(sock, offer.address)
            except BadRequest:
                sock.close()
                raise
        codec, pt, dtmf_pt, remote = initial_media(offer, cfg.codecs)
        audio_in = QueueAudioInput(codec.info.audio_rate)
        playout = PlayoutBuffer()
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
        call.log.event("sip-call", sip_call_id=req.sip_call_id, codec=codec.name, rtp_port=rtp.local_port,
                       user=req.user, from_uri=req.from_uri, delayed_offer=offer is None)
        if srtp.plan is not None:  # SDES-SRTP negotiated (sip/srtp.py)
            call.log.event("sip-srtp", suite=srtp.suite)
        sdp = SdpSession(sdp_host)
        answer = (sdp.build_answer(offer, rtp.local_port) if offer is not None
                  else sdp.build_offer(rtp.local_port, codecs=cfg.codecs))
        answer = srtp.sdp(answer, rtp.local_port, offer)
        rtcp, answer = RtcpSession.for_call(rtp, call, req.offer_sdp, answer)  # RTCP: port+1 or a=rtcp-mux
        self = cls(call, rtp, sdp, answer, offer is None, cfg.codecs)
        self.audio_in = audio_in
        self.rtcp = rtcp
        holder.append(self)
        return self

    async def start(self) -> None:
        if self.call.ending:
            return
        self.started = True
        await self.rtp.start()
        if self.rtcp is not None:
            await self.rtcp.start()
        self.call.manager.start_call(self.call)

    def _apply(self, desc: AudioOffer) -> None:
        check_reachable(self.rtp.sock, desc.address)
        if desc.codec != self.rtp.codec.name:
            self.call.log.event("sip-codec", codec=desc.codec, was=self.rtp.codec.name)
            codec = offer_codec(desc)
            if not self.started and self.audio_in is not None:  # the worker has not taken the input's rate yet
                self.audio_in.sample_rate = self.rtp.input_rate = codec.info.audio_rate
            self.rtp.set_codec(codec, desc.payload_type)
        self.rtp.payload_type = desc.payload_type
        self.rtp.dtmf_pt = desc.dtmf_pt
        self.rtp.update_remote((desc.address, desc.port), not desc.on_hold, desc.direction in ("sendrecv", "sendonly"))

    async def reoffer(self, sdp: str) -> str:
        try:
            offer = parse_offer(sdp, self.codecs)
            self.srtp.on_offer(offer)
        except SdpError as e:
            raise BadRequest(str(e)[:80]) from e
        self._apply(offer)
        self.sdp.address = sdp_address_for(self.sdp.address, offer.address)  # dual-stack: the family may change
        self.call.log.event("sip-hold" if offer.on_hold else "sip-unhold", direction=offer.direction)
        self.answer_sdp = self.srtp.sdp(self.sdp.build_answer(offer, self.rtp.local_port), self.rtp.local_port, offer)
        if self.rtcp is not None:
            self.answer_sdp = self.rtcp.answer(self.answer_sdp)
        return self.answer_sdp

    async def set_answer(self, sdp: str) -> None:
        self.awaiting_answer = False
        try:
            answer = parse_offer(sdp, self.codecs)
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
        if self.rtcp is not None:
            await self.rtcp.close()  # the last report and a BYE, before the RTP socket closes (muxed)
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
