"""REGISTER: a small registrar (digest or allowlist admission as for INVITE, expiry, a cap on AORs)."""

from __future__ import annotations

from .dialog import Conn, new_tag
from .message import NameAddr, SipRequest
from .ua_base import SipCoreBase


class RegistrarMixin(SipCoreBase):
    """REGISTER handling for :class:`~.core.SipCore`; the bindings are ``self.registrations``."""

    def _purge_registrations(self) -> None:
        now = self.clock()
        for aor in [a for a, (_, until) in self.registrations.items() if until <= now]:
            del self.registrations[aor]

    def _on_register(self, req: SipRequest, conn: Conn) -> None:
        if not self._admitted(req, conn):
            return
        self._purge_registrations()
        extra: list[tuple[str, str]] = []
        default_exp = req.headers.get("Expires")
        aor = req.to.uri
        for raw in req.headers.get_all("Contact"):
            if raw.strip() == "*":
                self.registrations.pop(aor, None)
                continue
            c = NameAddr.parse(raw)
            exp_s = c.params.get("expires") or default_exp or "3600"
            exp = min(int(exp_s), 86400) if exp_s.isdigit() else 3600
            if exp == 0:
                self.registrations.pop(aor, None)
                continue
            c.params["expires"] = str(exp)
            self.registrations.pop(aor, None)  # a refresh makes it the newest
            self.registrations[aor] = (c.uri, self.clock() + exp)
            while len(self.registrations) > self.max_registrations:
                del self.registrations[next(iter(self.registrations))]
            extra.append(("Contact", str(c)))
            extra.append(("Expires", str(exp)))
        self._respond(req, conn, 200, to_tag=None if req.to.tag else new_tag(), extra=extra)
