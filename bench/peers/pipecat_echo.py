"""Pipecat SmallWebRTC echo server: the Pipecat peer of the load bench (runs in bench/.venv-pipecat).

Written like Pipecat's SmallWebRTC examples: ``POST /api/offer`` goes to a
``SmallWebRTCRequestHandler``; each new connection gets a
``SmallWebRTCTransport`` and a pipeline ``transport.input() -> Echo ->
transport.output()`` where ``Echo`` turns each ``InputAudioRawFrame`` into an
``OutputAudioRawFrame`` (Pipecat's default rates: 16 kHz in, 24 kHz out).
``DELETE /api/offer/{pc_id}`` hangs up.

    bench/.venv-pipecat/bin/python bench/peers/pipecat_echo.py --port 8082
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiohttp import web
from loguru import logger
from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.request_handler import SmallWebRTCRequest, SmallWebRTCRequestHandler
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

handler = SmallWebRTCRequestHandler()
tasks: dict[str, PipelineTask] = {}
runners: set[asyncio.Task] = set()


class Echo(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self.push_frame(
                OutputAudioRawFrame(audio=frame.audio, sample_rate=frame.sample_rate, num_channels=frame.num_channels)
            )
        else:
            await self.push_frame(frame, direction)


async def run_bot(connection: SmallWebRTCConnection) -> None:
    transport = SmallWebRTCTransport(
        webrtc_connection=connection,
        params=TransportParams(audio_in_enabled=True, audio_out_enabled=True),
    )
    task = PipelineTask(Pipeline([transport.input(), Echo(), transport.output()]), params=PipelineParams())
    tasks[connection.pc_id] = task

    @transport.event_handler("on_client_disconnected")
    async def on_disconnected(transport: SmallWebRTCTransport, client: object) -> None:
        await task.cancel()

    try:
        await PipelineRunner(handle_sigint=False).run(task)
    finally:
        tasks.pop(connection.pc_id, None)


async def offer(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        req = SmallWebRTCRequest.from_dict(
            {k: body[k] for k in ("sdp", "type", "pc_id", "restart_pc", "requestData") if k in body}
        )
    except (ValueError, TypeError, KeyError):
        return web.json_response({"error": "bad offer"}, status=400)

    async def on_connection(connection: SmallWebRTCConnection) -> None:
        t = asyncio.create_task(run_bot(connection))
        runners.add(t)
        t.add_done_callback(runners.discard)

    try:
        answer = await handler.handle_web_request(req, on_connection)
    except Exception as e:
        return web.json_response({"error": str(e)}, status=400)
    return web.json_response(answer)


async def hangup(request: web.Request) -> web.Response:
    pc_id = request.match_info["pc_id"]
    conn = handler._pcs_map.get(pc_id)
    if conn is None:
        return web.json_response({"error": "unknown pc_id"}, status=404)
    await conn.disconnect()
    return web.json_response({"status": "success"})


async def on_shutdown(app: web.Application) -> None:
    for t in list(tasks.values()):
        await t.cancel()
    await handler.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8082)
    ap.add_argument("--uvloop", action="store_true")
    args = ap.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
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
