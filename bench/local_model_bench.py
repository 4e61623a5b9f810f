"""Benchmark of the offline ``local`` model: recognition, synthesis, turn latency.

Measures on this machine (all real: pocketsphinx, espeak-ng):

- start-up: building the recognizer (language model + dictionary) and
  initialising espeak-ng;
- recognition per turn: wall time of the pocketsphinx decode of each espeak-ng
  fixture (24 kHz in, as the worker sends it), and whether the text was right;
- synthesis per reply: total time, time to the first audio chunk, audio
  length and real-time factor, for the replies the assistant gives;
- the model's turn latency: from ``commit_input`` (the worker commits on the
  VAD's end of speech) to the first reply audio delta, tool round trip
  included;
- the same through a whole call (the worker's WAV transport): the call's
  ``ttfb_ms`` metric, end of speech decided by the VAD -> first reply sample
  handed to the transport (the VAD's end-of-speech hangover, 500 ms by
  default, comes on top).

Writes bench/results/local_model.json.

    python bench/local_model_bench.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import write_result
from v2v.media.resample import Resampler
from v2v.worker import events as ev
from v2v.worker.models import base as mb
from v2v.worker.models import local_brain as brain
from v2v.worker.models.local import LocalModelFactory
from v2v.worker.models.local_stt import Recognizer
from v2v.worker.models.local_tts import EspeakTTS
from v2v.worker.tools import ToolRegistry
from v2v.worker.wavcall import read_wav, run_wav_call

LOCAL = ROOT / "tests" / "fixtures" / "local"
TURNS = {
    "what_time_is_it": "what time is it",
    "tell_me_a_story": "tell me a story",
    "what_can_you_do": "what can you do",
    "hello_there": "hello there",
    "please_open_the_door": "please open the door",
}


def ms(x: float) -> float:
    return round(x * 1000, 2)


def summary(values: list[float]) -> dict[str, float]:
    return {"median_ms": ms(statistics.median(values)), "max_ms": ms(max(values)), "min_ms": ms(min(values))}


def fixture_24k(name: str) -> np.ndarray:
    pcm, rate = read_wav(LOCAL / f"{name}.wav")
    rs = Resampler(rate, 24000)
    return np.concatenate([rs.process(pcm), rs.flush()])


async def bench_recognition(rec: Recognizer, repeats: int) -> dict:
    out = {}
    for name, ref in TURNS.items():
        pcm = fixture_24k(name)
        times, texts = [], set()
        for _ in range(repeats):
            r = await asyncio.to_thread(rec.recognize, pcm, 24000)
            times.append(r.seconds)
            texts.add(r.text)
        out[name] = {"audio_s": round(len(pcm) / 24000, 3), "text": sorted(texts), "correct": texts == {ref},
                     **summary(times)}
    return out


async def bench_synthesis(tts: EspeakTTS, repeats: int) -> dict:
    replies = {"time": brain.time_text(), "greeting": brain.GREETING, "capabilities": brain.CAPABILITIES,
               "story": brain.STORY}
    out = {}
    for name, text in replies.items():
        total, first = [], []
        audio = 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            t_first = None
            n = 0
            async for chunk in tts.stream(text):
                if t_first is None and len(chunk.pcm):
                    t_first = time.perf_counter() - t0
                n += len(chunk.pcm)
            total.append(time.perf_counter() - t0)
            first.append(t_first or 0.0)
            audio = n
        out[name] = {
            "audio_s": round(audio / 24000, 3),
            "total": summary(total),
            "first_audio": summary(first),
            "realtime_factor": round((audio / 24000) / statistics.median(total), 1),
        }
    return out


async def bench_turns(factory: LocalModelFactory, repeats: int) -> dict:
    """commit_input -> first reply AudioDelta, the tool round trip done as the worker does."""
    funcs = {spec.name: fn for spec, fn in factory.tools()}
    out = {}
    for name in TURNS:
        pcm = fixture_24k(name)
        lat = []
        for _ in range(repeats):
            s = factory.open(mb.SessionConfig(tools=[spec for spec, _ in factory.tools()]))
            await s.connect()
            for i in range(0, len(pcm), 2400):
                await s.push_audio(pcm[i : i + 2400])
            t0 = time.perf_counter()
            await s.commit_input()
            await s.create_response()
            t_first = None
            async for e in s.events():
                if isinstance(e, mb.FunctionCall):
                    await s.function_output(e.call_id, await funcs[e.name](**json.loads(e.arguments)))
                elif isinstance(e, mb.ResponseDone) and t_first is None:
                    await s.create_response()
                elif isinstance(e, mb.AudioDelta):
                    t_first = time.perf_counter() - t0
                    break
            await s.cancel_response()
            await s.close()
            lat.append(t_first or float("nan"))
        out[name] = summary(lat)
    return out


async def bench_call(factory: LocalModelFactory, repeats: int) -> dict:
    tools = ToolRegistry()
    for spec, fn in factory.tools():
        tools.register(spec.name, spec.description, spec.parameters, fn)
    out = {}
    for name in ("what_time_is_it", "hello_there"):
        pcm, rate = read_wav(LOCAL / f"{name}.wav")
        audio = np.concatenate([pcm, np.zeros(rate * 2, np.int16)])
        ttfb = []
        for _ in range(repeats):
            res = await run_wav_call(factory, audio, rate, tools=tools, tail_s=3.0, realtime=True,
                                     stop_when_idle=True)
            ttfb += [t.event.ttfb_ms for t in res.of_type(ev.Metrics) if t.event.ttfb_ms is not None]
        out[name] = {"median_ms": round(statistics.median(ttfb), 1), "max_ms": round(max(ttfb), 1),
                     "samples": len(ttfb)} if ttfb else {"samples": 0}
    return out


async def main(repeats: int) -> None:
    t0 = time.perf_counter()
    rec = Recognizer()
    t_rec = time.perf_counter() - t0
    t0 = time.perf_counter()
    tts = EspeakTTS()
    await tts.ready()
    t_tts = time.perf_counter() - t0
    factory = LocalModelFactory(tts=tts, recognizer=rec)
    result = {
        "repeats": repeats,
        "startup_ms": {"recognizer": ms(t_rec), "espeak": ms(t_tts)},
        "recognition": await bench_recognition(rec, repeats),
        "synthesis": await bench_synthesis(tts, repeats),
        "commit_to_first_audio": await bench_turns(factory, repeats),
        "call_ttfb_after_vad_end": await bench_call(factory, max(1, repeats // 2)),
        "notes": "recognition/synthesis: wall time on a shared 2-core machine; commit_to_first_audio includes "
                 "recognition, the brain, the tool round trip and the first synthesized chunk; "
                 "call_ttfb_after_vad_end is the call's ttfb metric (real-time WAV call) and excludes the VAD "
                 "end-of-speech hangover (500 ms by default).",
    }
    tts.close()
    path = write_result("local_model", result)
    print(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    asyncio.run(main(ap.parse_args().repeats))
