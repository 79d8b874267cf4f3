"""Handcrafted EMG window features: KinEMbed's 16 per channel (256-d for 16 channels).

Per channel, on each window ``x`` of ``L`` samples (order of the 16 columns, see ``FEATURES``):

==========  =============================================================================
mav         mean |x|
rms         sqrt(mean x^2)
wl          sum |dx|                                   (waveform length)
logvar      log var(x)
zc          #{i: x_i x_{i+1} < 0 and |dx_i| >= t_zc}   (zero crossings, Hudgins threshold)
ssc         #{i: (x_i - x_{i-1})(x_i - x_{i+1}) >= t_ssc}
wamp        #{i: |dx_i| > t_wamp}                      (Willison amplitude)
mobility    sqrt(var(dx) / var(x))                     (Hjorth)
complexity  mobility(dx) / mobility(x)                 (Hjorth)
mnf         sum(P f) / sum(P)                          (mean frequency, bins 0..L/2-1)
mdf         first f where the cumulative power passes half the total
band1..5    mean |FFT| / L over 20-92, 92-163, 163-235, 235-305, 305-378 Hz (exclusive edges)
==========  =============================================================================

Thresholds are in the signal's units: each is a factor times a robust per-channel noise scale
(1.4826 MAD) measured on the *training* recordings (:func:`fit_thresholds`), so the same config
works for NinaPro volts, emg2pose's scaled units and the simulator.

Where libemg's ``FeatureExtractor`` defines the same quantity we agree with it to 1e-5 relative
(tests/data/test_features.py checks MAV, RMS, WL, ZC, SSC, WAMP, VAR, MNF, MDF, DFTR). Deliberate
differences:

* Hjorth **mobility** uses variances (mean removed, ``var(dx)`` over the L-1 differences); libemg's
  ``MOB`` uses raw second moments and divides ``sum dx^2`` by L.
* Hjorth **complexity** is the true ``mobility(dx) / mobility(x)``; libemg's ``COMP`` is
  ``sqrt(m4/m2)`` with ``m4`` summed over the whole batch (a missing ``axis``): not per window.
* The **bands** are the first five of libemg's ``DFTR`` bins (DB8's EMG is usable below ~555 Hz, so
  the sixth, 378-450 Hz, is dropped) and report the mean magnitude itself; ``DFTR`` reports it to
  the power 2/3.
* **log-variance** is ``log(VAR)``; the log is floored at ``log(1e-30)`` for flat channels.

Everything is vectorised over windows and channels and computed in float32 blocks of windows, so
memory stays bounded on long recordings.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import scipy.fft

from emgcore.errors import InvalidValueError, ShapeError

FEATURES = (
    "mav",
    "rms",
    "wl",
    "logvar",
    "zc",
    "ssc",
    "wamp",
    "mobility",
    "complexity",
    "mnf",
    "mdf",
    "band1",
    "band2",
    "band3",
    "band4",
    "band5",
)
# libemg's DFTR bin edges; the first five (see the module docstring).
BANDS_HZ = ((20.0, 92.0), (92.0, 163.0), (163.0, 235.0), (235.0, 305.0), (305.0, 378.0))
_MAD_TO_SIGMA = 1.4826  # MAD of a Gaussian times this is its standard deviation
_TINY = 1e-30
_BLOCK = 128  # windows per block: 128*16*256*4 B = 2 MiB per operand, so blocks stay in cache


@dataclass(frozen=True)
class FeatureConfig:
    """How windows are cut and thresholded. Defaults are KinEMbed's (Section 3)."""

    window_ms: float = 128.0  # 256 samples at 2 kHz
    stride_ms: float = 52.0  # 104 samples at 2 kHz
    zc_k: float = 0.0  # ZC amplitude-step threshold, in noise-scale units
    ssc_k: float = 0.0  # SSC threshold on the slope product, in (noise-scale)^2 units
    wamp_k: float = 0.1  # WAMP threshold on |dx|, in noise-scale units
    bands_hz: tuple[tuple[float, float], ...] = field(default=BANDS_HZ)

    def lengths(self, fs: float) -> tuple[int, int]:
        """``(window, stride)`` in samples at ``fs``."""
        length = round(self.window_ms * fs / 1000)
        stride = round(self.stride_ms * fs / 1000)
        if length < 8 or stride < 1:
            raise InvalidValueError(
                f"window {self.window_ms} ms / stride {self.stride_ms} ms is too short at {fs} Hz",
                field="features.window_ms",
            )
        return length, stride


@dataclass(frozen=True)
class Thresholds:
    """Absolute per-channel thresholds, each ``(C,)`` in the signal's units."""

    zc: np.ndarray
    ssc: np.ndarray
    wamp: np.ndarray


def noise_scale(emg: np.ndarray) -> np.ndarray:
    """Robust per-channel scale ``(C,)`` of ``emg (T, C)``: 1.4826 x median |x - median|."""
    x = np.asarray(emg, dtype=np.float32)[:: max(1, len(emg) // 200_000)]  # strided: bounded cost
    med = np.median(x, axis=0)
    return (_MAD_TO_SIGMA * np.median(np.abs(x - med), axis=0)).astype(np.float64)


def fit_thresholds(train_emg: list[np.ndarray], cfg: FeatureConfig) -> Thresholds:
    """Thresholds from training recordings only (each ``(T_i, C)``): factor x noise scale."""
    scale = np.median(np.stack([noise_scale(e) for e in train_emg]), axis=0)
    return Thresholds(zc=cfg.zc_k * scale, ssc=(cfg.ssc_k * scale) ** 2, wamp=cfg.wamp_k * scale)


def window_starts(n_samples: int, length: int, stride: int) -> np.ndarray:
    """Start index of every full window: ``(N,)`` int64."""
    if n_samples < length:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, n_samples - length + 1, stride, dtype=np.int64)


def extract(
    emg: np.ndarray,
    fs: float,
    starts: np.ndarray,
    length: int,
    thresholds: Thresholds,
    bands_hz: tuple[tuple[float, float], ...] = BANDS_HZ,
    workers: int | None = None,
) -> np.ndarray:
    """Features of the windows ``emg[s : s + length]`` for each ``s`` in ``starts``.

    ``emg (T, C)`` -> ``(N, C * F)`` float32, channel-major (column ``c * F + f``), F = 11 + bands.
    Blocks of windows run on ``workers`` threads (default: the CPUs this process may use, at most
    8); numpy and scipy.fft release the GIL inside each step, so threads scale.
    """
    emg = np.asarray(emg)
    if emg.ndim != 2:
        raise ShapeError(f"must be 2-D (T, C), got {emg.shape}", field="emg")
    n_ch = emg.shape[1]
    for name in ("zc", "ssc", "wamp"):
        if np.shape(getattr(thresholds, name)) != (n_ch,):
            raise ShapeError(
                f"threshold has shape {np.shape(getattr(thresholds, name))}, expected ({n_ch},)",
                field=f"thresholds.{name}",
            )
    n_feat = 11 + len(bands_hz)
    out = np.empty((len(starts), n_ch, n_feat), dtype=np.float32)
    if len(starts) == 0:
        return out.reshape(0, n_ch * n_feat)
    # Variances come from float32 sums, E[x^2] - E[x]^2, which lose precision when a channel sits
    # on a DC offset; such recordings are centred per channel inside each block (any value near
    # the mean works, and the DC bin is restored exactly, so a strided subsample estimates it).
    # Band-passed EMG has no offset and skips that pass.
    x_all = np.asarray(emg, dtype=np.float32)
    sub = x_all[:: max(1, len(x_all) // 4096)].astype(np.float64)
    mean = sub.mean(axis=0)
    offset = np.abs(mean) > 1e-3 * sub.std(axis=0)
    mean = np.where(offset, mean, 0.0).astype(np.float32)  # (C,)
    spectral = _Spectral(length, fs, bands_hz)
    offsets = np.arange(length)[:, None]

    def one_block(b0: int) -> None:
        sl = slice(b0, b0 + _BLOCK)
        # (L, n, C): time is the outer axis, so shifted operands (x[1:] - x[:-1]) are whole
        # contiguous rows and every reduction over time adds rows, both at full SIMD width.
        x = np.take(x_all, starts[sl][None, :] + offsets, axis=0)
        out[sl] = _block(x, mean, spectral, thresholds)  # blocks write disjoint rows

    blocks = range(0, len(starts), _BLOCK)
    workers = min(workers or _available_cpus(), len(blocks))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one_block, blocks))
    else:
        for b0 in blocks:
            one_block(b0)
    return out.reshape(len(starts), n_ch * n_feat)


def _available_cpus() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cpus or 1))


class _Spectral:
    """Frequency bins and band-averaging matrix for one window length (libemg's bins 0..L/2-1)."""

    def __init__(self, length: int, fs: float, bands_hz: tuple[tuple[float, float], ...]):
        self.n_bins = length // 2  # Nyquist excluded, as libemg does
        self.freqs = (np.arange(self.n_bins) * fs / length).astype(np.float32)
        masks = [(self.freqs > lo) & (self.freqs < hi) for lo, hi in bands_hz]
        # (bands, bins): row b averages the bins of band b (a zero row if the band is empty)
        self.band_avg = np.array([m / max(m.sum(), 1) for m in masks], dtype=np.float32).reshape(
            len(masks), self.n_bins
        )


def _count(mask: np.ndarray) -> np.ndarray:
    """True entries along axis 0. With at most 255 rows the count fits a byte, and summing the
    mask's bytes as uint8 skips numpy's per-element bool -> int conversion (3x faster)."""
    if len(mask) <= 255:
        return np.add.reduce(mask.view(np.uint8), axis=0, dtype=np.uint8)
    return mask.sum(axis=0, dtype=np.int32)


def _sumsq(v: np.ndarray) -> np.ndarray:
    return np.einsum("lnc,lnc->nc", v, v)


def _block(x: np.ndarray, mean: np.ndarray, sp: _Spectral, th: Thresholds) -> np.ndarray:
    """Features of one block ``x (L, n, C)`` float32 -> ``(n, C, F)`` float32.

    ``mean (C,)`` is (near) the recording's per-channel mean, or 0 where there is no offset to
    remove. Sums are float32 (pairwise summation
    keeps ~1e-7 relative error at L = 256). Passes over the block are the cost, so sums are shared:
    derivative sums telescope (sum dx = x[-1] - x[0]), the raw sum of squares follows from the
    centred one, and sum ddx^2 = 2 sum dx^2 - dx_0^2 - dx_last^2 - 2 sum dx_i dx_i+1, the last
    being the slope products SSC needs anyway.
    """
    length, n, n_ch = x.shape
    feats = np.empty((n, n_ch, 11 + len(sp.band_avg)), dtype=np.float32)
    # Per-channel constants tiled to (n, C): a (C,) operand would make numpy's inner loop 16 long.
    centre = bool(mean.any())
    mean, zc, ssc, wamp = (
        np.tile(v.astype(np.float32), (n, 1)) for v in (mean, th.zc, th.ssc, th.wamp)
    )
    feats[..., 0] = np.abs(x).sum(axis=0) / length
    crossing = (x[:-1] * x[1:]) < 0  # on the raw window; a sample at exactly 0 is no crossing
    if centre:
        x -= mean  # in place: the block is our own copy
    sum_x, sumsq_x = x.sum(axis=0), _sumsq(x)
    raw_sumsq = sumsq_x + 2 * mean * sum_x + length * mean * mean
    feats[..., 1] = np.sqrt(np.maximum(raw_sumsq, 0.0) / length)
    dx = x[1:] - x[:-1]  # (L-1, n, C)
    slope = dx[:-1] * dx[1:]  # (L-2, n, C)
    feats[..., 5] = _count(slope <= -ssc)
    sumsq_dx = _sumsq(dx)
    sumsq_ddx = 2 * sumsq_dx - dx[0] ** 2 - dx[-1] ** 2 - 2 * slope.sum(axis=0)
    var_x = _var(sumsq_x, sum_x, length)
    var_dx = _var(sumsq_dx, x[-1] - x[0], length - 1)
    var_ddx = _var(sumsq_ddx, dx[-1] - dx[0], length - 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        mob_x = np.sqrt(var_dx / var_x)
        complexity = np.sqrt(var_ddx / var_dx) / mob_x
    adx = np.abs(dx, out=dx)
    feats[..., 2] = adx.sum(axis=0)
    feats[..., 3] = np.log(np.maximum(var_x, _TINY))
    if th.zc.any():
        crossing &= adx >= zc
    feats[..., 4] = _count(crossing)
    feats[..., 6] = _count(adx > wamp)
    feats[..., 7] = np.nan_to_num(mob_x)  # flat channel: 0, not NaN
    feats[..., 8] = np.nan_to_num(complexity)

    spec = scipy.fft.rfft(x, axis=0)[: sp.n_bins]  # (L/2, n, C) complex64
    mag = np.abs(spec)
    power = np.square(mag)
    # centring changed only the DC bin; restore it so MNF/MDF describe the raw window
    power[0] = np.square(sum_x + mean * length)
    total = power.sum(axis=0)
    feats[..., 9] = (sp.freqs @ power.reshape(sp.n_bins, -1)).reshape(n, n_ch) / np.where(
        total > 0, total, 1.0
    )
    # (n*C, bins) @ (bins, bands), written straight into the (n, C, bands) slots: no moveaxis copy
    feats[..., 11:] = (mag.reshape(sp.n_bins, -1).T @ sp.band_avg.T).reshape(n, n_ch, -1) / length
    # median frequency: the first bin whose cumulative power exceeds half the total (libemg's
    # definition) = the number of bins whose cumulative power stays at or below half. The
    # cumulative sum runs row by row in place: numpy's cumsum over a non-last axis is 10x slower.
    for k in range(1, sp.n_bins):
        power[k] += power[k - 1]
    below = _count(power <= total / 2)
    feats[..., 10] = sp.freqs[np.minimum(below, sp.n_bins - 1)]
    return feats


def _var(sum_sq: np.ndarray, total: np.ndarray, n: int) -> np.ndarray:
    """Population variance from sums: E[v^2] - E[v]^2, clipped at 0 against rounding."""
    m = total / n
    return np.maximum(sum_sq / n - m * m, 0.0)


def recording_features(
    emg: np.ndarray, fs: float, cfg: FeatureConfig, thresholds: Thresholds
) -> tuple[np.ndarray, np.ndarray]:
    """All windows of one recording: ``(features (N, C*F), last sample index (N,))``.

    The last-sample index is where the window's kinematic target is read (causal decoding).
    """
    length, stride = cfg.lengths(fs)
    starts = window_starts(len(emg), length, stride)
    x = extract(emg, fs, starts, length, thresholds, cfg.bands_hz)
    return x, starts + length - 1


@dataclass(frozen=True)
class Standardizer:
    """Per-column z-score with statistics from training rows only."""

    mean: np.ndarray  # (F,)
    std: np.ndarray  # (F,)

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        """``x (N, F)``; constant columns get std 1 so they map to 0 instead of NaN."""
        x = np.asarray(x, dtype=np.float64)
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 0, std, 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return (z * self.std + self.mean).astype(np.float32)
