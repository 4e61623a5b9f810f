"""Agent profiles for SIP: the request-URI user picks one.

``sip:echo@host`` -> the ``echo`` profile; any other user (``assistant``,
a phone number, empty) -> the server's default profile. Profiles beyond
``echo`` can be added in configuration (``extra["sip_profiles"]``: a mapping
of request-URI user -> profile name).
"""

from __future__ import annotations

from typing import Mapping

BUILTIN = {"echo": "echo"}
DEFAULT = "default"


def pick_profile(user: str, extra: Mapping[str, str] | None = None, default: str = DEFAULT) -> str:
    user = (user or "").strip().lower()
    table = {**BUILTIN, **{k.lower(): v for k, v in (extra or {}).items()}}
    return table.get(user, default)
