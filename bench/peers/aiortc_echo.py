"""A plain aiortc echo server, written like aiortc's ``examples/server``: the peer for the load bench.

The remote audio track is relayed back (``MediaRelay``) as the outgoing track;
nothing is tuned (stock jitter buffer, stock ``compute_audio_level_dbov``, the
stereo 48 kHz frames the Opus decoder yields go straight to the encoder).
Same signaling contract as v2v and Pipecat's SmallWebRTC example:
``POST /api/offer`` ``{sdp, type, pc_id?}`` -> ``{sdp, type, pc_id}``,
``DELETE /api/offer/{pc_id}``.

    python bench/peers/aiortc_echo.py --port 8081 [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import uuid

from aiohttp import web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

pcs: dict[str, RTCPeerConnection] = {}
relay = MediaRelay()


async def offer(request: web.Request) -> web.Response:
    try:
        params = await request.json()
        desc = RTCSessionDescription(sdp=params["sdp"], type=params["type"])
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": "bad offer"}, status=400)
    pc_id = params.get("pc_id") or f"pc-{uuid.uuid4().hex[:12]}"
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pcs[pc_id] = pc

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            await pc.close()
            if pcs.get(pc_id) is pc:
                del pcs[pc_id]

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            pc.addTrack(relay.subscribe(track))

    @pc.on("datachannel")
    def on_datachannel(channel: RTCDataChannel) -> None:
        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            if isinstance(message, str) and message.startswith("ping"):
                channel.send("pong" + message[4:])

    try:
        await pc.setRemoteDescription(desc)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
    except Exception as e:  # bad SDP
        await pc.close()
        pcs.pop(pc_id, None)
        return web.json_response({"error": f"bad offer: {e}"}, status=400)
    return web.Response(
        content_type="application/json",
        text=json.dumps({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "pc_id": pc_id}),
    )


async def hangup(request: web.Request) -> web.Response:
    pc = pcs.pop(request.match_info["pc_id"], None)
    if pc is None:
        return web.json_response({"error": "unknown pc_id"}, status=404)
    await pc.close()
    return web.json_response({"status": "success"})


async def on_shutdown(app: web.Application) -> None:
    await asyncio.gather(*(pc.close() for pc in pcs.values()), return_exceptions=True)
    pcs.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio's loop")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    app = web.Application()
    app.on_shutdown.append(on_shutdown)
    app.router.add_post("/api/offer", offer)
    app.router.add_delete("/api/offer/{pc_id}", hangup)
    if args.uvloop:
        import uvloop

        uvloop.install()
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
