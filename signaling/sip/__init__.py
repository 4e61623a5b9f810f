"""SIP for v2v: SIP over WebSocket (WebRTC media) and SIP over UDP/TCP (plain RTP).

The dialogs live here, on the signaling node; each call's media is opened
through the dispatcher seam. :func:`v2v.signaling.sip.server.setup_app` adds
SIP to a signaling app.
"""

__all__ = ["core", "dialog", "digest", "message", "profiles", "rtp_session", "sdp", "server", "udp_tcp", "ws"]
