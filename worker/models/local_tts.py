"""Offline speech synthesis: espeak-ng (from the ``espeakng-loader`` wheel) via ctypes.

espeak-ng keeps global C state, so every call into it runs on one dedicated
thread (:class:`EspeakTTS` is a :class:`~.local_engine.ThreadedEngine`; one
process-wide instance from :func:`shared_tts`). Synthesis uses the synchronous retrieval mode: a synth
callback receives 22050 Hz audio buffers and ``espeakEVENT_WORD`` events (the
exact sample position of each word). Audio is resampled to 24 kHz with a
stateful soxr stream and handed to the event loop chunk by chunk as espeak
produces it (:meth:`EspeakTTS.stream`), with each word's sample offset at
24 kHz in the utterance.
"""

from __future__ import annotations

import asyncio
import ctypes as C
import logging
import re
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

import numpy as np
import soxr

from .local_engine import Shared, ThreadedEngine

log = logging.getLogger("v2v.model.local")

OUT_RATE = 24000

# espeak_AUDIO_OUTPUT / events / flags (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_SAMPLERATE = 8
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_INITIALIZE_DONT_EXIT = 0x8000
_PARAM_RATE = 1
_PARAM_PITCH = 3


class _Event(C.Structure):
    _fields_ = [
        ("type", C.c_int),
        ("unique_identifier", C.c_uint),
        ("text_position", C.c_int),  # 1-based character position in the text
        ("length", C.c_int),
        ("audio_position", C.c_int),  # ms
        ("sample", C.c_int),  # sample index (at the voice rate) in this synth call
        ("user_data", C.c_void_p),
        ("id", C.c_void_p),  # union {int number; const char *name; char string[8]}
    ]


_Callback = C.CFUNCTYPE(C.c_int, C.POINTER(C.c_short), C.c_int, C.POINTER(_Event))


@dataclass
class Word:
    """A word of the utterance: its character span in the text and its start at 24 kHz."""

    start: int  # character index in the utterance text
    end: int
    offset: int  # sample offset at 24 kHz from the start of the utterance's audio


@dataclass
class SynthChunk:
    pcm: np.ndarray  # int16 mono at 24 kHz
    words: list[Word] = field(default_factory=list)  # words starting in or before this chunk


_SENTENCE_RE = re.compile(r"[^.!?;]+(?:[.!?;]+|$)\s*")


def split_sentences(text: str) -> list[tuple[int, str]]:
    """Split ``text`` into (start index, sentence) pieces that cover it exactly."""
    out = [(m.start(), m.group(0)) for m in _SENTENCE_RE.finditer(text) if m.group(0)]
    return out or [(0, text)]


class _Job:
    """One utterance being synthesized; state shared between the espeak thread and the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, voice_rate: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[SynthChunk | BaseException | None] = asyncio.Queue()
        self.cancelled = threading.Event()  # set when the consumer is gone or asked to stop
        self.external: threading.Event | None = None  # the caller's cancel flag
        self.resampler = soxr.ResampleStream(voice_rate, OUT_RATE, 1, dtype="int16", quality="HQ")
        self.voice_rate = voice_rate
        self.base_in = 0  # voice-rate samples produced by earlier sentences
        self.text_base = 0  # character offset of the current sentence in the utterance
        self.sentence_text = ""
        self.sentence_in = 0  # voice-rate samples of the current sentence so far
        self.pending_words: list[Word] = []

    def stopped(self) -> bool:
        return self.cancelled.is_set() or (self.external is not None and self.external.is_set())

    def put(self, item: SynthChunk | BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled.set()


class EspeakTTS(ThreadedEngine):
    """espeak-ng on a dedicated thread; thread-safe and usable from any event loop."""

    thread_name = "v2v-espeak"

    def __init__(self, voice: str = "en-us", rate_wpm: int = 175) -> None:
        self.voice = voice
        self.rate_wpm = rate_wpm
        self._lib: C.CDLL | None = None
        self._cb = _Callback(self._on_synth)  # keep a reference for the C side
        self._job: _Job | None = None  # the job the callback feeds (espeak thread only)
        self.voice_rate = 0
        self._current_voice = voice
        self._bad_voices: set[str] = set()
        super().__init__()  # espeak_Initialize on the engine's thread

    # -- espeak thread ------------------------------------------------------
    def _load(self) -> None:
        import espeakng_loader

        lib = C.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [C.c_int, C.c_int, C.c_char_p, C.c_int]
        lib.espeak_Initialize.restype = C.c_int
        lib.espeak_SetVoiceByName.argtypes = [C.c_char_p]
        lib.espeak_SetParameter.argtypes = [C.c_int, C.c_int, C.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_Callback]
        lib.espeak_Synth.argtypes = [
            C.c_void_p, C.c_size_t, C.c_uint, C.c_int, C.c_uint, C.c_uint, C.c_void_p, C.c_void_p,
        ]
        lib.espeak_Synth.restype = C.c_int
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 100, espeakng_loader.get_data_path().encode(), _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate})")
        if lib.espeak_SetVoiceByName(self.voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {self.voice!r}")
        lib.espeak_SetParameter(_PARAM_RATE, self.rate_wpm, 0)
        lib.espeak_SetSynthCallback(self._cb)
        self._lib = lib
        self.voice_rate = rate

    def _on_synth(self, wav: C._Pointer[C.c_short], n: int, events: C._Pointer[_Event]) -> int:
        """espeak's synth callback (``short *wav, int n, espeak_EVENT *events``); 1 aborts."""
        job = self._job
        if job is None:
            return 1
        try:
            i = 0
            while events[i].type != _EVENT_LIST_TERMINATED:
                ev = events[i]
                if ev.type == _EVENT_WORD and ev.length > 0:
                    start = job.text_base + _char_index(job.sentence_text, ev.text_position - 1)
                    end = job.text_base + _char_index(job.sentence_text, ev.text_position - 1 + ev.length)
                    pos_in = job.base_in + ev.sample
                    job.pending_words.append(Word(start, end, pos_in * OUT_RATE // job.voice_rate))
                i += 1
            if n > 0 and wav:
                pcm = np.ctypeslib.as_array(wav, (n,)).copy()
                job.sentence_in += n
                out = job.resampler.resample_chunk(pcm)
                job.put(SynthChunk(out, job.pending_words))
                job.pending_words = []
        except BaseException as exc:  # never let an exception cross into C
            job.put(exc)
            return 1
        return 1 if job.stopped() else 0

    def _select_voice(self, voice: str | None) -> bool:
        """Switch espeak to ``voice`` (espeak thread); an unknown voice selects the default."""
        self.wait_loaded()
        assert self._lib is not None
        voice = voice or self.voice
        known = voice not in self._bad_voices
        if known and voice != self._current_voice:
            if self._lib.espeak_SetVoiceByName(voice.encode()) == 0:
                self._lib.espeak_SetParameter(_PARAM_RATE, self.rate_wpm, 0)
                self._current_voice = voice
            else:
                known = False
                self._bad_voices.add(voice)
                log.warning("espeak-ng has no voice %r; speaking with %r", voice, self.voice)
        if not known and self._current_voice != self.voice:  # the default voice always exists
            self._lib.espeak_SetVoiceByName(self.voice.encode())
            self._lib.espeak_SetParameter(_PARAM_RATE, self.rate_wpm, 0)
            self._current_voice = self.voice
        return known

    def _synth_sentence(self, job: _Job, text_base: int, sentence: str, last: bool, voice: str | None) -> None:
        self._select_voice(voice)
        assert self._lib is not None
        if not job.stopped() and sentence.strip():
            job.text_base = text_base
            job.sentence_text = sentence
            job.sentence_in = 0
            data = sentence.encode("utf-8")
            self._job = job
            try:
                err = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            finally:
                self._job = None
            if err != 0 and not job.stopped():
                raise RuntimeError(f"espeak_Synth failed ({err})")
            job.base_in += job.sentence_in
        if last:
            tail = job.resampler.resample_chunk(np.zeros(0, np.int16), last=True)
            if len(tail) or job.pending_words:
                job.put(SynthChunk(tail, job.pending_words))
                job.pending_words = []

    # -- loop side ----------------------------------------------------------
    async def has_voice(self, voice: str) -> bool:
        """Whether espeak-ng knows ``voice`` (e.g. ``en-us``, ``en-gb+f3``)."""
        await self.ready()
        return await self.run(self._select_voice, voice)

    async def stream(
        self, text: str, cancelled: threading.Event | None = None, voice: str | None = None
    ) -> AsyncGenerator[SynthChunk, None]:
        """Synthesize ``text`` sentence by sentence; yield 24 kHz chunks as espeak produces them.

        ``voice`` is an espeak-ng voice name (default: the synthesizer's; an
        unknown name falls back to it, with a warning).

        Setting ``cancelled`` (or closing the generator) stops synthesis at the
        next espeak buffer; nothing more is yielded.
        """
        await self.ready()
        loop = asyncio.get_running_loop()
        job = _Job(loop, self.voice_rate)
        job.external = cancelled
        pieces = split_sentences(text)
        try:
            for k, (base, sentence) in enumerate(pieces):
                if job.stopped():
                    return
                fut = loop.run_in_executor(
                    self._executor, self._synth_sentence, job, base, sentence, k == len(pieces) - 1, voice
                )
                done_marker = asyncio.ensure_future(fut)
                done_marker.add_done_callback(_end_marker(job))
                while True:
                    item = await job.queue.get()
                    if item is None:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    if job.stopped():
                        continue
                    yield item
                exc = None if done_marker.cancelled() else done_marker.exception()
                if exc is not None:
                    raise exc
        finally:
            job.cancelled.set()

    async def synthesize(self, text: str, voice: str | None = None) -> tuple[np.ndarray, list[Word]]:
        """The whole utterance at once (tests and benchmarks)."""
        pcm: list[np.ndarray] = []
        words: list[Word] = []
        async for chunk in self.stream(text, voice=voice):
            pcm.append(chunk.pcm)
            words.extend(chunk.words)
        return (np.concatenate(pcm) if pcm else np.zeros(0, np.int16)), words


def _end_marker(job: _Job) -> Callable[[asyncio.Future[None]], None]:
    def done(f: asyncio.Future[None]) -> None:
        if not f.cancelled():
            f.exception()  # retrieved here; re-raised by the consumer
        job.queue.put_nowait(None)

    return done


def _char_index(text: str, pos: int) -> int:
    """espeak reports character (not byte) positions; clamp to the text."""
    return max(0, min(len(text), pos))


_shared = Shared(EspeakTTS)


def shared_tts() -> EspeakTTS:
    """The process-wide synthesizer (espeak-ng has one global state)."""
    return _shared.get()


__all__ = ["EspeakTTS", "SynthChunk", "Word", "shared_tts", "split_sentences", "OUT_RATE"]
