"""Offline speech recognition: pocketsphinx 5 with the English model its wheel ships.

The whole VAD-delimited turn is decoded at once at 16 kHz. pocketsphinx's
general English trigram model does poorly on short synthetic or telephone
utterances, so the decoder uses a small trigram model built at start-up (with
pocketsphinx's own ``ArpaBoLM``) from :data:`INTENT_PHRASES` (the assistant's
intents) and :data:`CORPUS` (everyday phrases), and a pronunciation dictionary
cut down to that vocabulary. Whatever the caller says is mapped onto that
vocabulary (the brain repeats back what it heard).

The turn is padded with 300 ms of quiet and dithered (digital silence upsets
pocketsphinx's cepstral mean normalisation). Telephone audio (nothing above
4 kHz, e.g. a SIP caller's G.711 at 8 kHz, whatever rate it is handed over at)
is detected from its spectrum (:func:`is_narrowband`) and dithered much more
strongly: the wideband model misreads an empty upper band. The dictionary
carries a few telephone pronunciations (:data:`TELEPHONE_PRONS`). One decoder is shared by the
process (:func:`shared_recognizer`); it is built and run on a thread of its own
(:class:`~.local_engine.ThreadedEngine`): :meth:`Recognizer.transcribe` is the
loop's way in, :meth:`Recognizer.recognize` the blocking one.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import soxr

from .local_engine import Shared, ThreadedEngine

RATE = 16000
_PAD = int(0.3 * RATE)
_DITHER = 30.0  # int16 RMS of the added noise
# Telephone audio (G.711, 8 kHz: nothing above 4 kHz) decodes far better with much more noise added:
# the wideband en-us model (filters up to 6.8 kHz, noise removal, batch CMN) misreads an empty upper band.
# Measured with the telephone pronunciations below, on 8 phrases x 5 espeak-ng voices
# (`python3 -m tests.measure_phone_stt [before]`): intent accuracy over G.711 u-law 16/40 -> 29/40 (WER 0.49 -> 0.18), A-law with
# line noise 27/40 -> 32/40; the same phrases at 16 kHz 23/40 -> 26/40 (WER 0.23 -> 0.21).
NARROWBAND_DITHER = 800.0
NARROWBAND_HZ = 4000
NARROWBAND_DB = -40.0  # energy above NARROWBAND_HZ relative to the whole turn, below which it is narrowband
# Extra pronunciations for what the telephone band does to the assistant's key words: the burst of a
# word-initial /t/ and a final /t/ mostly vanish below 4 kHz ("what time is it" was heard as
# "what i really"); alternatives the wideband model can still match.
TELEPHONE_PRONS = ("time(2) AY M", "time(3) D AY M", "time(4) B AY M", "time(5) P AY M", "it(2) IH", "is(2) IH S")
MAX_TURN_SECONDS = 30

INTENT_PHRASES = """
what time is it
what time is it now
what is the time
what's the time
tell me the time
tell me the time please
can you tell me what time it is
do you know what time it is
tell me a story
tell me a long story
tell me another story
can you tell me a story
please tell me a story
read me a story
i want to hear a story
what can you do
what can you do for me
what are you able to do
what else can you do
help
help me
i need some help
hello
hello there
hi
hi there
hey
hey there
good morning
good afternoon
good evening
please continue
continue the story
go on
go on please
carry on
keep going
stop
please stop
stop talking
that is enough
be quiet
"""

CORPUS = """
how are you
how are you doing today
nice to meet you
thank you
thank you very much
thanks
thanks a lot
goodbye
bye
bye bye
see you later
good night
yes
yes please
no
no thank you
okay
stop
please stop
stop talking
wait
wait a moment
be quiet
the weather is nice today
what is the weather like
is it going to rain
it is cold outside
it is sunny today
what is your name
my name is john
who are you
where are you
where do you live
how old are you
i am fine
i am good
i am tired
that is great
that is very nice
very good
i like music
play some music
i would like a coffee
i would like some tea
please open the door
close the window
turn on the light
turn off the light
call my mother
tell me a joke
what day is it today
what is the date today
can you hear me
i can hear you
repeat after me
say something
this is a test
testing one two three
one two three four five six seven eight nine ten
the quick brown fox jumps over the lazy dog
i love you
where is the station
how do i get to the airport
what is the capital of france
let me think
i do not know
never mind
go on
continue
i would like to book a table for two
can i book a room for tonight
please transfer me to the billing department
i want to talk to a person
can you call me back tomorrow morning
please call me back later
turn left at the next corner
keep going straight
go straight ahead and turn right
the train leaves at half past four
when does the next train leave
the weather today is cloudy with a chance of rain
it will rain all day on saturday
we should change the plan for the weekend
i was thinking about what we discussed yesterday
i really believe we are right
could you repeat that again please
can you say that again
i did not understand
speak more slowly please
can you hear me clearly now
the line is very bad
what do you think
i think so
i do not think so
of course
sounds good
that is right
that is not right
i am sorry
excuse me
how much does it cost
where can i buy a ticket
i am looking for a good restaurant
what is on the menu
i would like to order a pizza
my phone number is five five five one two three four
my email address is not working
i have a question about my account
i forgot my password
i need to change my appointment
is the shop open on sunday
what are your opening hours
how long will it take
i will be there in ten minutes
i am on my way home
let us meet at the station at noon
have a nice day
have a good weekend
happy birthday
see you tomorrow
what did you say
who is speaking
this is anna speaking
my name is peter
i live in london
i work at the hospital
my car is broken
the water is too hot
it is too cold in here
i am hungry
i am thirsty
let us go to the park
the children are playing in the garden
the dog is sleeping under the table
the book is on the shelf
i read the news this morning
the music is too loud
please turn the volume down
please speak louder
how is the traffic
is it far from here
it is very close
it is about five kilometers
twenty thirty forty fifty hundred thousand
monday tuesday wednesday thursday friday saturday sunday
january february march april may june july august september october november december
first second third last next
red green blue yellow black white
"""


@dataclass
class Recognition:
    text: str
    seconds: float  # wall time of the decode
    audio_seconds: float
    narrowband: bool = False  # decoded as telephone audio


def is_narrowband(x: np.ndarray, rate: int = RATE) -> bool:
    """True when ``x`` carries (almost) nothing above 4 kHz: telephone audio, whatever its sample rate."""
    if rate <= 2 * NARROWBAND_HZ:
        return True
    spec = np.abs(np.fft.rfft(np.asarray(x, np.float64))) ** 2
    total = float(spec.sum())
    if total <= 0.0:
        return False
    high = float(spec[int(len(spec) * NARROWBAND_HZ * 2 // rate) + 1:].sum())
    return high <= total * 10 ** (NARROWBAND_DB / 10)


class Recognizer(ThreadedEngine):
    """A pocketsphinx decoder with the small domain language model, on a thread of its own."""

    thread_name = "v2v-stt"

    def __init__(self, corpus: str = CORPUS, intents: str = INTENT_PHRASES, intent_weight: int = 1) -> None:
        # intent_weight > 1 counts the assistant's own phrases several times.
        self._corpus = "\n".join([intents.strip()] * intent_weight + [corpus.strip()]).lower()
        self._lock = threading.Lock()
        self._decoder: Any = None  # pocketsphinx.Decoder (untyped), set by _load
        super().__init__()  # loads on the engine's thread (~0.3 s)

    def _load(self) -> None:
        from pocketsphinx import Decoder, get_model_path
        from pocketsphinx.lm import ArpaBoLM

        corpus = self._corpus
        lm = ArpaBoLM(text=corpus, add_start=True)
        lm.compute()
        # A pronunciation dictionary limited to the vocabulary: loading the
        # whole CMU dictionary next to a custom model takes ~10 s.
        vocab = set(corpus.split())
        with open(os.path.join(get_model_path(), "en-us", "cmudict-en-us.dict"), encoding="utf-8") as f:
            prons = [line for line in f if line.split(" ", 1)[0].split("(", 1)[0] in vocab]
        with tempfile.TemporaryDirectory(prefix="v2v-stt-") as tmp:
            lm_path, dict_path = os.path.join(tmp, "lm.arpa"), os.path.join(tmp, "words.dict")
            with open(lm_path, "w", encoding="utf-8") as f:
                lm.write(f)
            with open(dict_path, "w", encoding="utf-8") as f:
                f.writelines(prons)
                f.writelines(line + "\n" for line in TELEPHONE_PRONS if line.split("(", 1)[0] in vocab)
            self._decoder = Decoder(samprate=RATE, lm=lm_path, dict=dict_path, loglevel="FATAL")

    async def transcribe(self, pcm: np.ndarray, rate: int) -> Recognition:
        """Decode one turn on the recognizer's thread."""
        return await self.run(self.recognize, pcm, rate)

    def recognize(self, pcm: np.ndarray, rate: int) -> Recognition:
        """Decode one turn (int16 mono at ``rate``). Blocking: the loop calls :meth:`transcribe`."""
        self.wait_loaded()
        pcm = np.asarray(pcm, dtype=np.int16).reshape(-1)[-MAX_TURN_SECONDS * rate :]
        audio_seconds = len(pcm) / rate
        t0 = time.perf_counter()
        narrowband = is_narrowband(pcm, rate)
        x = soxr.resample(pcm, rate, RATE) if rate != RATE else pcm
        pad = np.zeros(_PAD, np.int16)
        y = np.concatenate([pad, x, pad]).astype(np.float32)
        # Seeded per turn: the same audio always decodes the same way.
        dither = NARROWBAND_DITHER if narrowband else _DITHER
        y += np.random.default_rng(1234).normal(0.0, dither, len(y)).astype(np.float32)
        data = np.clip(y, -32768, 32767).astype(np.int16).tobytes()
        with self._lock:
            d = self._decoder
            d.start_utt()
            d.process_raw(data, full_utt=True)
            d.end_utt()
            hyp = d.hyp()
        text = hyp.hypstr.strip() if hyp is not None else ""
        return Recognition(text, time.perf_counter() - t0, audio_seconds, narrowband)


_shared = Shared(Recognizer)


def shared_recognizer() -> Recognizer:
    """The process-wide recognizer (cheap: it loads on its own thread; ``await ready()``)."""
    return _shared.get()


__all__ = ["Recognizer", "Recognition", "shared_recognizer", "is_narrowband", "CORPUS", "INTENT_PHRASES", "RATE"]
