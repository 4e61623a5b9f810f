"""Registration to the trunk's registrar (``--sip-register``): REGISTER, refresh, unREGISTER.

:class:`Registration` registers our Contact (the ``--sip-port`` UDP address) for
the account's address of record ``sip:<user>@<trunk>``, answers a 401/407 with
the account's digest credentials, honours ``423 Interval Too Brief``
(Min-Expires), refreshes at half the granted time, retries a failure after
:data:`RETRY_S`, and on shutdown removes the binding (``Expires: 0``). One log
line per change of state (registered, refused, no response); inbound calls the
registrar then sends us arrive like any INVITE.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

from .dialog import new_tag
from .message import NameAddr, SipRequest, SipResponse
from .trunk import AuthCache, TrunkLink

__all__ = ["Registration"]

log = logging.getLogger("v2v.sip.register")

REQUESTED_S = 3600  # what we ask for; the registrar may grant less
RETRY_S = 30.0  # after a refusal or no response
MIN_REFRESH_S = 5.0
UNREGISTER_WAIT_S = 2.0  # shutdown does not wait longer for the registrar


class Registration:
    """One binding at the trunk's registrar, kept fresh until :meth:`close`."""

    def __init__(self, link: TrunkLink, expires: int = REQUESTED_S) -> None:
        self.link = link
        self.expires = expires
        aor = f"sip:{link.trunk.user or 'v2v'}@{link.trunk.hostport}"
        self.aor = aor
        self.from_ = f"<{aor}>;tag={new_tag()}"
        self.call_id = f"{secrets.token_hex(12)}@v2v"
        self.cseq = 0
        self.registered = False
        self.granted = 0  # seconds the registrar granted last
        self.last_status = 0  # the last final status (0: none yet / no response)
        self.successes = 0  # REGISTERs the registrar accepted (the first and each refresh)
        self.auth = AuthCache()  # refreshes answer the registrar's last challenge up front
        self.changed = asyncio.Event()  # set after every attempt (tests wait on it)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sip-register")

    def _make(self, expires: int) -> Callable[[int], SipRequest]:
        def make(cseq: int) -> SipRequest:
            contact = self.link.contact(self.link.trunk.user or "v2v")
            return self.link.request(
                "REGISTER", f"sip:{self.link.trunk.hostport}", self.from_, f"<{self.aor}>", self.call_id, cseq,
                extra=[("Contact", contact), ("Expires", str(expires))])
        return make

    async def register_once(self, expires: int | None = None) -> SipResponse | None:
        """One REGISTER transaction (digest retry included); updates the state and logs a change."""
        expires = self.expires if expires is None else expires
        addr = await self.link.resolve()
        await self.link.connect(addr)  # our address toward it (Via, Contact); TCP/TLS: the connection
        resp, self.cseq = await self.link.request_authed(self._make(expires), addr, self.cseq + 1, self.auth)
        if resp is not None and resp.status == 423 and expires:
            floor = (resp.headers.get("Min-Expires") or "").strip()
            if floor.isdigit() and int(floor) > expires:
                self.expires = int(floor)
                return await self.register_once(int(floor))
        was = self.registered
        self.last_status = resp.status if resp is not None else 0
        self.registered = resp is not None and 200 <= resp.status < 300 and expires > 0
        if self.registered and resp is not None:
            self.granted = _granted(resp, expires)
            self.successes += 1
        if expires == 0:
            log.info("sip: unregistered from %s (%s)", self.link.trunk.hostport, _status(resp))
        elif self.registered and not was:
            log.info("sip: registered %s at %s for %d s", self.aor, self.link.trunk.hostport, self.granted)
        elif not self.registered:
            log.warning("sip: registration of %s at %s failed (%s)", self.aor, self.link.trunk.hostport,
                        _status(resp))
        self.changed.set()
        return resp

    async def _run(self) -> None:
        while True:
            self.changed.clear()
            try:
                await self.register_once()
            except OSError as e:
                log.warning("sip: registration of %s failed: %s", self.aor, e)
                self.registered = False
                self.changed.set()
            wait = max(self.granted / 2, MIN_REFRESH_S) if self.registered else RETRY_S
            await asyncio.sleep(wait)

    async def close(self) -> None:
        """Stop refreshing; remove the binding if we hold one (waiting at most a moment)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.registered:
            try:
                await asyncio.wait_for(self.register_once(0), UNREGISTER_WAIT_S)
            except (TimeoutError, OSError):
                log.info("sip: no answer to our unREGISTER at %s", self.link.trunk.hostport)
            self.registered = False


def _granted(resp: SipResponse, asked: int) -> int:
    """The expiry the registrar gave our binding: its Contact's ;expires, else Expires, else ours."""
    for raw in resp.headers.get_all("Contact"):
        try:
            c = NameAddr.parse(raw)
        except ValueError:
            continue
        exp = c.params.get("expires")
        if exp and exp.isdigit():
            return int(exp)
    exp_h = (resp.headers.get("Expires") or "").strip()
    return int(exp_h) if exp_h.isdigit() else asked


def _status(resp: SipResponse | None) -> str:
    return f"{resp.status} {resp.reason}" if resp is not None else "no response"
