"""Stateful mono int16 resampling on libswresample, through PyAV, without threads.

PyAV's ``AudioResampler`` builds an FFmpeg filter graph that starts a thread
pool of one thread per CPU (2 x CPUs per SIP call, 64 on a 32-core host);
:class:`_SwrGraph` is the same graph (``abuffer`` -> ``aformat`` ->
``abuffersink``, so the same libswresample conversion, sample for sample) with
``threads = 1``, which starts none. soxr was measured as the alternative
(``python3 bench/resample_bench.py``): equal quality and cheaper, but its
streaming mode releases output in bursts (nothing for 2-4 frames of 20 ms,
then 60-100 ms at once), which would add that much latency to every stream.

``Resampler`` keeps the filter state across calls, so a stream cut into frames
of any size resamples exactly like the whole: N seconds in give N seconds out,
apart from the fixed filter delay (a few samples). ``ExactResampler`` also
returns exactly ``len(in) * out_rate / in_rate`` samples per call (paying the
delay once, as leading zeros), which a paced sender needs.
"""

from __future__ import annotations

import errno

import av
import av.filter
import numpy as np

from .audio import mono_to_frame

_EMPTY = np.zeros(0, dtype=np.int16)


class _SwrGraph:
    """s16 mono ``in_rate`` -> s16 mono ``out_rate`` in a single-threaded FFmpeg filter graph."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.graph = av.filter.Graph()
        self.graph.threads = 1  # before any filter is added: FFmpeg starts no thread pool
        src = self.graph.add("abuffer", sample_rate=str(in_rate), sample_fmt="s16", channel_layout="mono")
        fmt = self.graph.add("aformat", sample_rates=str(out_rate), sample_fmts="s16", channel_layouts="mono")
        sink = self.graph.add("abuffersink")
        src.link_to(fmt)
        fmt.link_to(sink)
        self.graph.configure()
        self._flushed = False

    def resample(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
        """One frame in, what is ready out. ``aresample`` emits at most one frame per input frame, so
        one pull suffices (a second would only raise EAGAIN, which costs as much as the pull);
        ``None`` flushes: pull until the end."""
        if frame is None:
            if self._flushed:
                return []
            self._flushed = True
        self.graph.push(frame)
        out: list[av.AudioFrame] = []
        while True:
            try:
                got = self.graph.pull()
            except EOFError:
                break
            except av.FFmpegError as e:
                if e.errno != errno.EAGAIN:
                    raise
                break
            if isinstance(got, av.AudioFrame):  # an audio graph: always
                out.append(got)
            if frame is not None:
                break
        return out


class Resampler:
    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._passthrough = in_rate == out_rate
        self._rs = None if self._passthrough else _SwrGraph(in_rate, out_rate)

    def process(self, pcm: np.ndarray) -> np.ndarray:
        if self._rs is None or len(pcm) == 0:
            return pcm
        frames = self._rs.resample(mono_to_frame(pcm, self.in_rate))
        return _concat(frames)

    def flush(self) -> np.ndarray:
        """Drain the filter's delay line (end of stream)."""
        if self._rs is None:
            return _EMPTY
        return _concat(self._rs.resample(None))


def _concat(frames: list[av.AudioFrame]) -> np.ndarray:
    if not frames:
        return _EMPTY
    if len(frames) == 1:
        return frames[0].to_ndarray().reshape(-1)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])


class ExactResampler:
    """Resampler with exact output lengths, for fixed-size paced frames.

    ``in_rate * len(pcm)`` must be divisible so the output length is an integer
    (true for 20 ms frames between 8/16/24/48 kHz).
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._rs = Resampler(in_rate, out_rate)
        self._fifo = _EMPTY
        self._primed = False

    def process(self, pcm: np.ndarray) -> np.ndarray:
        n_out, rem = divmod(len(pcm) * self.out_rate, self.in_rate)
        if rem:
            raise ValueError(f"{len(pcm)} samples at {self.in_rate} Hz is not a whole number at {self.out_rate} Hz")
        out = self._rs.process(pcm)
        if not self._primed:
            # Pay the filter delay once, as leading zeros; afterwards the
            # output rate equals the input rate exactly and the FIFO stays flat.
            self._primed = True
            missing = n_out - len(out)
            if missing > 0:
                out = np.concatenate([np.zeros(missing, dtype=np.int16), out])
        buf = np.concatenate([self._fifo, out]) if len(self._fifo) else out
        if len(buf) < n_out:  # cannot happen once primed; be safe
            buf = np.concatenate([buf, np.zeros(n_out - len(buf), dtype=np.int16)])
        self._fifo = buf[n_out:]
        return buf[:n_out]
