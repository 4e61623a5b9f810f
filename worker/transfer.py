"""Call transfer as the worker sees it: the ``transfer_call`` tool and its outcome.

The worker does not know the call's transport. Whoever holds the call hands
:func:`add_transfer_tool` a :data:`TransferFunc`: it asks for a blind transfer
of the caller to ``target`` and returns a :class:`TransferOutcome` (for a SIP
caller, after the REFER was accepted or refused; for a caller that cannot be
transferred, at once, ``ok=False``). On success the call ends on our side
(reason ``transferred``); on failure it goes on and the model hears why.

Targets are checked against the server's allowlist (:func:`target_allowed`,
shell-style patterns such as ``sip:*@pbx.example.com``): a model talked into
dialling an arbitrary number must not be able to.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .tools import ToolRegistry

__all__ = ["TRANSFER_TOOL", "TransferFunc", "TransferOutcome", "add_transfer_tool", "target_allowed"]

TRANSFER_TOOL = "transfer_call"
TRANSFER_TIMEOUT_S = 45.0  # REFER answered, then the transferee's INVITE to the target answered (ringing)


@dataclass
class TransferOutcome:
    """How a transfer went: ``ok`` (accepted, the call ends), ``status`` the SIP status that decided
    (the REFER's refusal or the NOTIFY sipfrag's; 0 when none), ``detail`` in words."""

    ok: bool
    detail: str
    status: int = 0

    def as_tool_result(self, target: str) -> dict[str, Any]:
        if self.ok:
            return {"transferred": True, "target": target, "detail": self.detail}
        return {"transferred": False, "target": target, "error": self.detail, "sip_status": self.status}


TransferFunc = Callable[[str, str], Awaitable[TransferOutcome]]  # (target, reason) -> outcome


def target_allowed(target: str, patterns: list[str]) -> bool:
    """Is ``target`` one of ``patterns`` (shell-style, case-insensitive)? No pattern: nothing is."""
    t = target.strip().lower()
    return bool(t) and any(fnmatch.fnmatchcase(t, p.strip().lower()) for p in patterns if p.strip())


def _description(patterns: list[str]) -> str:
    exact = [p for p in patterns if not any(c in p for c in "*?[")]
    text = ("Transfer the caller to another party (a human agent, a department) and leave the call. "
            "Use only when the caller asks for it or when you cannot help. Say goodbye first.")
    if exact:
        text += " Allowed targets: " + ", ".join(exact) + "."
    if len(exact) < len(patterns):
        text += " Targets must match: " + ", ".join(p for p in patterns if p not in exact) + "."
    return text


def add_transfer_tool(registry: ToolRegistry, transfer: TransferFunc, patterns: list[str]) -> None:
    """Register ``transfer_call(target, reason)`` calling ``transfer`` for an allowed target."""

    async def transfer_call(target: str = "", reason: str = "") -> dict[str, Any]:
        if not target_allowed(target, patterns):
            return TransferOutcome(False, f"target {target!r} is not an allowed transfer target").as_tool_result(target)
        return (await transfer(target.strip(), reason)).as_tool_result(target.strip())

    registry.register(
        TRANSFER_TOOL, _description(patterns),
        {"type": "object",
         "properties": {"target": {"type": "string", "description": "where to: a SIP URI or a number"},
                        "reason": {"type": "string", "description": "why, in a few words (logged)"}},
         "required": ["target"]},
        transfer_call, timeout=TRANSFER_TIMEOUT_S,
    )
