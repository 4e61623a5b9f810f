"""Agent profiles for SIP: the request-URI user picks one.

``sip:echo@host`` -> the ``echo`` profile (echo model); a user naming a
configured profile (``ServerConfig.profiles``: profile -> model) ->
that profile; any other user (``assistant``, a phone number, empty) -> None,
the server's default profile. The CallManager maps a profile to its model.
"""

from __future__ import annotations

from collections.abc import Mapping

BUILTIN = ("echo",)


def pick_profile(user: str, configured: Mapping[str, str] | None = None) -> str | None:
    name = (user or "").strip().lower()
    if name in BUILTIN or name in {k.lower() for k in (configured or {})}:
        return name
    return None
