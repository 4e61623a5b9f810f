"""SIP over TLS on a pool's signaling node, SRTP on the worker that holds the media (--sip-srtp is the worker's)."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from tests import pool_util
from tests.pool_util import RedisServer, running_node, running_worker
from tests.signaling_util import wait_until
from tests.sip.harness import rtp_range
from tests.sip.uac import SipClient, offer_sdp
from tests.test_sip_tls_srtp import SrtpPeer, make_certs
from v2v.signaling.pool.registry import RedisRegistry
from v2v.signaling.sip.message import StreamFramer
from v2v.signaling.sip.server import SIP_APP_KEY
from v2v.signaling.sip.srtp import SrtpPlan, parse_crypto

pytestmark = pytest.mark.timeout(90)
redis_server = pool_util.redis_server  # the fixture


class TlsSipClient(SipClient):
    """tests/sip/uac.SipClient over TLS (Via SIP/2.0/TLS, Contact ;transport=tls)."""

    def __init__(self, server: tuple[str, int], ctx: ssl.SSLContext) -> None:
        super().__init__("TLS", server)
        self.ctx = ctx

    async def connect(self) -> TlsSipClient:
        reader, self._writer = await asyncio.open_connection(*self.server, ssl=self.ctx, server_hostname="127.0.0.1")
        self.local_port = self._writer.get_extra_info("sockname")[1]
        self._reader_task = asyncio.create_task(self._read(reader))
        return self

    async def _read(self, reader: asyncio.StreamReader) -> None:
        framer = StreamFramer()
        while data := await reader.read(65536):
            for m in framer.feed(data):
                self.inbox.put_nowait(m)


async def test_tls_call_through_the_pool_has_srtp_on_the_worker(redis_server: RedisServer) -> None:
    ca, cert, key = await make_certs()
    async with (
        running_worker(redis_server.url, name="wa", rtp_ports=rtp_range(), sip_srtp="require") as wa,
        running_node(RedisRegistry(redis_server.url), sip=True, sip_tls_port=0, sip_tls_cert=str(cert),
                     sip_tls_key=str(key)) as node,
    ):
        servers = node.runner.app[SIP_APP_KEY]
        assert servers.tls is not None
        sip = await TlsSipClient(("127.0.0.1", servers.tls.port), ssl.create_default_context(cafile=str(ca))).connect()
        loop = asyncio.get_running_loop()
        tr, peer = await loop.create_datagram_endpoint(SrtpPeer, local_addr=("127.0.0.1", 0))
        try:
            # the worker's policy: a plain offer is refused, the reason crosses the pool
            sip.send(sip.request("INVITE", "sip:echo@127.0.0.1", "pool-plain", from_tag="p", body=offer_sdp(40000)))
            refused = await sip.recv_final("pool-plain", "INVITE")
            assert refused.status == 488 and "SRTP required" in refused.reason, refused.reason
            sip.send(sip.request("ACK", "sip:echo@127.0.0.1", "pool-plain", from_tag="p", to_tag=refused.to.tag,
                                 cseq=refused.cseq[0]))
            # an SRTP offer: answered with the worker's key, media encrypted both ways
            mine = SrtpPlan(1, "AES_CM_128_HMAC_SHA1_80")
            offer = (offer_sdp(tr.get_extra_info("sockname")[1], codecs="0 101").replace("RTP/AVP", "RTP/SAVP")
                     + f"a={mine.local_attr.line()}\r\n")
            sip.send(sip.request("INVITE", "sip:echo@127.0.0.1", "pool-srtp", from_tag="s", cseq=1, body=offer))
            ok = await sip.recv_final("pool-srtp", "INVITE")
            answer = ok.body.decode()
            assert ok.status == 200 and "RTP/SAVP " in answer, answer
            sip.send(sip.request("ACK", "sip:echo@127.0.0.1", "pool-srtp", from_tag="s", to_tag=ok.to.tag, cseq=1))
            theirs = parse_crypto(next(x for x in answer.split("\r\n") if x.startswith("a=crypto:"))[2:])
            mine.remote_key = theirs.key
            peer.protector = mine.protector()
            assert wa.host.active_calls("sip_tls") == 1 and node.dispatcher.active_calls("sip_tls") == 1
            await peer.stream(("127.0.0.1", int(answer.split("m=audio ", 1)[1].split()[0])), 40)
            await wait_until(lambda: len(peer.got) >= 10, 3, "SRTP from the worker")
            assert peer.failed == 0
            (media,) = wa.host._media.values()  # the worker's RtpCall: it decrypted the caller's packets
            assert media.srtp.current.stats.unprotected >= 35 and media.rtp.stats.packets_in >= 35
            sip.send(sip.request("BYE", "sip:echo@127.0.0.1", "pool-srtp", from_tag="s", to_tag=ok.to.tag, cseq=2))
            assert (await sip.recv_final("pool-srtp", "BYE")).status == 200
            await wait_until(lambda: wa.host.active_calls() == 0 and node.dispatcher.active_calls() == 0, 2,
                             "the call to end on the worker and the node")
        finally:
            tr.close()
            await sip.close()
