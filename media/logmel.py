"""Whisper-style log-mel features (the input of the Smart Turn end-of-turn model).

Written from the published definition of Whisper's front end (as its feature
extractor computes it with ``chunk_length=8`` and ``do_normalize=True``):

1. 16 kHz mono float audio, the last ``seconds`` (8 s) of it, zero-padded at
   the *start* when shorter (the end of the utterance is what matters);
2. the window normalised to zero mean and unit variance (padding included);
3. a centred STFT: reflect-padded by ``n_fft // 2`` at both ends, periodic
   Hann window of 400 samples, hop 160 (10 ms), power spectrum ``|X|^2``;
4. an 80-band mel filterbank, Slaney mel scale (linear below 1 kHz, log
   above) with Slaney area normalisation, 0-8 kHz;
5. ``log10(max(mel, 1e-10))``, the last STFT frame dropped (800 frames for
   8 s), clamped to ``max - 8`` and scaled as ``(x + 4) / 4``.

The result is float32 of shape ``(80, 800)``. Pure numpy, vectorised; the
filterbank is built once per process.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
SECONDS = 8
MEL_FLOOR = 1e-10
NORM_EPS = 1e-7


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: 3 mels per 200 Hz below 1 kHz, logarithmic above (27 mels per factor 6.4)."""
    hz = np.asarray(hz, dtype=np.float64)
    lin = 3.0 * hz / 200.0
    log = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, log, lin)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    lin = 200.0 * mel / 3.0
    log = 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0))
    return np.where(mel >= 15.0, log, lin)


@functools.lru_cache(maxsize=4)
def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, rate: int = RATE) -> np.ndarray:
    """Triangular filters, Slaney-normalised (each has area 1 in Hz): shape ``(n_mels, n_fft // 2 + 1)``."""
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(rate / 2)), n_mels + 2))
    bins = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    tri = np.maximum(0.0, np.minimum(rising, falling))
    return tri * (2.0 / (edges[2:] - edges[:-2]))[:, None]


@functools.lru_cache(maxsize=4)
def _sparse_bank(n_mels: int = N_MELS, n_fft: int = N_FFT, rate: int = RATE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The filterbank's non-zero weights as (bins, weights, start of each filter's run), filters in order."""
    fb = mel_filterbank(n_mels, n_fft, rate)
    rows, cols = np.nonzero(fb)  # row-major: each filter's bins are one run
    starts = np.searchsorted(rows, np.arange(n_mels))
    return cols, fb[rows, cols], starts


def apply_mel(power: np.ndarray) -> np.ndarray:
    """``mel_filterbank() @ power.T`` for power of shape (frames, bins), without BLAS.

    The filters are sparse (about two weights per bin); a gather and a
    segment sum cost ~1 ms, where a BLAS matmul of the dense bank starts
    OpenBLAS's thread pool, whose spinning costs 3x the CPU on a busy machine.
    """
    cols, weights, starts = _sparse_bank()
    return np.add.reduceat(power[:, cols] * weights, starts, axis=1).T


@functools.lru_cache(maxsize=4)
def hann(n: int = N_FFT) -> np.ndarray:
    """Periodic Hann window (the DFT-even one STFTs use)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def last_window(audio: np.ndarray, seconds: int = SECONDS, rate: int = RATE) -> np.ndarray:
    """The last ``seconds`` of ``audio`` as float32, zero-padded at the start when shorter."""
    n = seconds * rate
    x = np.asarray(audio, dtype=np.float32)[-n:]
    if len(x) < n:
        x = np.concatenate([np.zeros(n - len(x), dtype=np.float32), x])
    return x


def log_mel(audio: np.ndarray, seconds: int = SECONDS) -> np.ndarray:
    """Whisper log-mel features of the last ``seconds`` of 16 kHz float audio: float32 ``(80, 100 * seconds)``."""
    x = last_window(audio, seconds)
    x = (x - x.mean()) / np.sqrt(x.var() + NORM_EPS)  # float32, as the reference does it
    pad = N_FFT // 2
    padded = np.pad(x.astype(np.float64), pad, mode="reflect")
    frames = sliding_window_view(padded, N_FFT)[::HOP]
    spec = np.fft.rfft(frames * hann(N_FFT), axis=-1)
    power = spec.real**2 + spec.imag**2  # (frames, bins)
    mel = apply_mel(power)  # (mels, frames)
    logm = np.log10(np.maximum(mel, MEL_FLOOR))[:, :-1]
    logm = np.maximum(logm, logm.max() - 8.0)
    return ((logm + 4.0) / 4.0).astype(np.float32)
