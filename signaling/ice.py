"""The caller's ICE candidates: taken out of the offer, fed to the peer connection after the answer.

aioice drops every component for which the remote side gave no usable
candidate once it sees end-of-candidates, and it does so before gathering its
own: an offer whose candidates are all unresolvable mDNS ``.local`` names (or
that has none) plus ``a=end-of-candidates`` got an answer with zero
candidates. It also resolves mDNS names inside ``setRemoteDescription``, which
held the answer back ~1 s per offer.

So v2v answers a candidate-free copy of the offer (its own candidates are
always gathered, independently of the remote ones) and then feeds the offer's
candidates, and later those sent by PATCH, to the peer connection through its
public ``addIceCandidate``: plain addresses at once, mDNS names in the
background, first by the system resolver (``getaddrinfo`` in a small thread
pool, off the event loop, bounded by :data:`SYSTEM_TIMEOUT_S`; it answers where
nss-mdns/avahi or /etc/hosts know the name), else by aioice's own multicast
resolver (bounded by :data:`MDNS_TIMEOUT_S`). At most :data:`MAX_MDNS` per peer
connection.
End-of-candidates only reaches aioice once at least one remote candidate is
usable; until then the caller's checks can still arrive (they make a
peer-reflexive candidate) and the call's ICE timeout bounds the wait.
:meth:`RemoteCandidates.summary` says what the caller sent, for the warning
logged when ICE fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCIceCandidate, RTCPeerConnection
from aiortc.sdp import candidate_from_sdp

from .dispatch import BadRequest, IceCandidateInit

log = logging.getLogger("v2v.webrtc")

MDNS_TIMEOUT_S = 3.0  # aioice's resolver gives up after 1 s; this bounds it whatever the version
SYSTEM_TIMEOUT_S = 2.0
MAX_MDNS = 16  # per peer connection (browsers send one or two per interface)
_executor: ThreadPoolExecutor | None = None  # created on first use


def _lookup(host: str) -> str | None:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except OSError:
        return None
    return str(infos[0][4][0]) if infos else None


async def resolve_system(host: str, timeout: float = SYSTEM_TIMEOUT_S) -> str | None:
    """``host`` by the system resolver, in a two-thread pool (a hung lookup blocks no one else); None if not."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(2, thread_name_prefix="v2v-mdns")
    fut = asyncio.get_running_loop().run_in_executor(_executor, _lookup, host)
    try:
        return await asyncio.wait_for(fut, timeout)
    except TimeoutError:
        return None


def is_mdns(cand: RTCIceCandidate) -> bool:
    return cand.ip.lower().rstrip(".").endswith(".local")


def split_offer(sdp: str) -> tuple[str, list[IceCandidateInit], bool]:
    """The offer without its ``a=candidate``/``a=end-of-candidates`` lines, those candidates, and end seen."""
    lines: list[str] = []
    cands: list[IceCandidateInit] = []
    end = False
    mline = -1
    mid: str | None = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            mline += 1
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[6:].strip()
        if line.startswith("a=candidate:"):
            cands.append(IceCandidateInit(line[2:], mid, max(mline, 0)))
            continue
        if line.startswith("a=end-of-candidates"):
            end = True
            continue
        lines.append(line)
    # mids appear after the m= line's candidates only in unusual SDP: fill them in per m-line
    mids: dict[int, str] = {}
    mline = -1
    for line in lines:
        if line.startswith("m="):
            mline += 1
        elif line.startswith("a=mid:"):
            mids[mline] = line[6:].strip()
    for c in cands:
        if c.sdp_mid is None and c.sdp_mline_index is not None:
            c.sdp_mid = mids.get(c.sdp_mline_index)
    return "\r\n".join(lines) + "\r\n", cands, end


def parse_candidate(c: IceCandidateInit) -> RTCIceCandidate | None:
    """One candidate as aiortc takes it (None: end of candidates); BadRequest when malformed."""
    text = (c.candidate or "").strip()
    if not text:
        return None
    if text.startswith("a="):
        text = text[2:]
    if text.startswith("candidate:"):
        text = text[len("candidate:"):]
    try:
        cand = candidate_from_sdp(text)
    except Exception as e:  # aiortc raises several types on a bad line
        raise BadRequest(f"invalid ICE candidate {c.candidate!r}: {e}") from e
    cand.sdpMid = c.sdp_mid
    cand.sdpMLineIndex = c.sdp_mline_index
    if cand.sdpMid is None and cand.sdpMLineIndex is None:
        cand.sdpMLineIndex = 0
    return cand


@dataclass
class CandidateCounts:
    """What the caller sent by one route (the offer or PATCH)."""

    total: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    mdns: int = 0
    end: bool = False

    def text(self) -> str:
        if not self.total:
            return "no candidate" + (", end-of-candidates" if self.end else "")
        kinds = ", ".join(f"{n} {t}" for t, n in sorted(self.by_type.items()))
        mdns = f", {self.mdns} mDNS .local" if self.mdns else ""
        return f"{self.total} candidates ({kinds}{mdns})" + (", end-of-candidates" if self.end else "")


class RemoteCandidates:
    """Feeds one peer connection the caller's candidates, from the offer and from PATCH."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.pc = pc
        self.offer = CandidateCounts()
        self.patched = CandidateCounts()
        self.mdns_resolved = 0
        self.mdns_failed = 0
        self._resolving: set[asyncio.Task] = set()
        self._end = False  # the caller said end-of-candidates
        self._end_sent = False

    def _remote_count(self) -> int:
        return sum(len(t.getRemoteCandidates()) for t in self._ice_transports())

    def _ice_transports(self) -> list[Any]:
        seen: dict[int, Any] = {}
        for t in self.pc.getTransceivers():
            ice = t.receiver.transport.transport
            seen[id(ice)] = ice
        sctp = self.pc.sctp
        if sctp is not None:
            seen[id(sctp.transport.transport)] = sctp.transport.transport
        return list(seen.values())

    async def add(self, items: list[RTCIceCandidate | None], *, from_offer: bool) -> None:
        """Add parsed candidates (None: end of candidates); mDNS names resolve in the background."""
        counts = self.offer if from_offer else self.patched
        for cand in items:
            if cand is None:
                counts.end = True
                self._end = True
                continue
            counts.total += 1
            counts.by_type[cand.type] = counts.by_type.get(cand.type, 0) + 1
            if is_mdns(cand):
                counts.mdns += 1
                if counts.mdns > MAX_MDNS:
                    continue
                task = asyncio.get_running_loop().create_task(self._add_mdns(cand))
                self._resolving.add(task)
                task.add_done_callback(self._resolving.discard)
            else:
                await self._add_one(cand)
        await self._maybe_end()

    async def _add_one(self, cand: RTCIceCandidate) -> None:
        try:
            await self.pc.addIceCandidate(cand)
        except Exception as e:  # aiortc/aioice raise ValueError and others
            raise BadRequest(f"cannot add ICE candidate: {e}") from e

    async def _add_mdns(self, cand: RTCIceCandidate) -> None:
        before = self._remote_count()
        ip = await resolve_system(cand.ip)
        try:
            if ip is not None:
                await self.pc.addIceCandidate(dataclasses.replace(cand, ip=ip))
            else:
                await asyncio.wait_for(self.pc.addIceCandidate(cand), MDNS_TIMEOUT_S)
        except Exception as e:  # aioice's resolver: timeouts, socket errors, its lock bound to another loop
            log.debug("mDNS candidate %s not added: %s", cand.ip, e)
        if self._remote_count() > before:
            self.mdns_resolved += 1
        else:
            self.mdns_failed += 1
            log.info("mDNS candidate %s did not resolve from here", cand.ip)
        await self._maybe_end()

    async def _maybe_end(self) -> None:
        """Pass end-of-candidates on once nothing is resolving and some candidate is usable."""
        if not self._end or self._end_sent or self._resolving - {asyncio.current_task()}:
            return
        if self._remote_count() == 0:
            return  # aioice would drop the component now: keep waiting (checks, PATCH, timeout)
        self._end_sent = True
        await self.pc.addIceCandidate(None)

    def summary(self) -> str:
        mdns = ""
        if self.offer.mdns or self.patched.mdns:
            mdns = f"; mDNS resolved {self.mdns_resolved}, unresolved {self.mdns_failed}"
        return f"offer: {self.offer.text()}; PATCH: {self.patched.text()}{mdns}; usable remote {self._remote_count()}"

    def close(self) -> None:
        for t in list(self._resolving):
            t.cancel()
