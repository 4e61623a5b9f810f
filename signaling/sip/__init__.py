"""SIP for v2v: SIP over WebSocket (WebRTC media) and SIP over UDP/TCP (plain RTP).

The server's plugin hook is :func:`setup_app`; :func:`start_sip` starts the
UDP/TCP side for a manager outside an aiohttp app.
"""

from __future__ import annotations

from typing import Any


def setup_app(app: Any, manager: Any, config: Any) -> None:
    from .server import setup_app as _setup

    _setup(app, manager, config)


async def start_sip(app_or_manager: Any, config: Any) -> Any:
    from .server import start_sip as _start

    return await _start(app_or_manager, config)


__all__ = ["setup_app", "start_sip"]
