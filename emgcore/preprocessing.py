"""Preprocessing as data: a list of named, parameterised steps.

A pipeline is written as a list of dicts (YAML/JSON-friendly) and recorded with every result, so a
number always says how its input was made::

    Pipeline.from_config([
        {"name": "bandpass", "low": 20, "high": 450},
        {"name": "notch", "freq": 50},
        {"name": "zscore"},               # fitted on training recordings only
    ])

Steps act on a whole :class:`Recording` (``level = "recording"``; their output is cached on disk)
or on each served window (``level = "window"``, e.g. CPEP's instance normalisation). Steps with
statistics (``zscore``, ``median_l2``) must be fitted with :meth:`Pipeline.fit`; the fitted values
become part of the configuration and so of the cache key. Consecutive IIR filters are fused into
one second-order-section cascade and run zero-phase once, in float32, channel-major.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np
import scipy.signal as sps

from emgcore.errors import InvalidValueError
from emgcore.recording import Recording, digest

# bump when a step's numerics change: it is part of every cache key. 2: kinematics low-pass and
# resampling no longer smear invalid (failed-tracking) samples or the recording's edges (issue 14)
PREPROCESSING_VERSION = 2

STEPS: dict[str, type[Step]] = {}


def register(cls: type[Step]) -> type[Step]:
    STEPS[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Step:
    """Base class. Subclasses are frozen dataclasses whose fields are the step's parameters."""

    name: ClassVar[str]
    level: ClassVar[str] = "recording"

    @property
    def fitted(self) -> bool:
        return True

    def fit(self, recordings: Sequence[Recording]) -> Step:
        return self

    def apply(self, rec: Recording) -> Recording:
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = _jsonable(v)
        return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in sorted(v.items())}
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


# -- zero-phase IIR filters (fusable) ----
class _Filter(Step):
    """A linear filter on EMG given as second-order sections for a sampling rate."""

    def sos(self, fs: float) -> np.ndarray:
        raise NotImplementedError

    def apply(self, rec: Recording) -> Recording:
        return rec.replace(emg=filtfilt_sos(self.sos(rec.fs), np.asarray(rec.emg), rec.source))


def filtfilt_sos(
    sos: np.ndarray, x: np.ndarray, source: str = "memory", padlen: int | None = None
) -> np.ndarray:
    """Zero-phase filter ``x`` (T, C) along time; float32 in, float32 out.

    Runs channel-major (C, T) so scipy filters contiguous rows (about 4x faster than axis 0 on a
    (T, C) array); float32 keeps relative error below 1e-5 against float64 for these filters.
    ``padlen``: samples of odd extension at each end (None: scipy's default, at most
    ``min_filtfilt_len(sos) - 1``; clipped to ``T - 1``).
    """
    if len(x) < min_filtfilt_len(sos):
        raise InvalidValueError(
            f"{len(x)} samples is too short for a zero-phase filter of {len(sos)} sections",
            source=source,
            field="emg",
        )
    xt = np.ascontiguousarray(x.T, dtype=np.float32)
    pad = None if padlen is None else min(padlen, len(x) - 1)
    y = sps.sosfiltfilt(sos.astype(np.float32), xt, axis=1, padlen=pad)
    return np.ascontiguousarray(y.T)


def min_filtfilt_len(sos: np.ndarray) -> int:
    """The fewest samples :func:`filtfilt_sos` filters: one more than scipy's default edge
    padding, ``3 (2 sections + 1)`` (16 for a 4th-order Butterworth)."""
    return 3 * (2 * len(sos) + 1) + 1


def true_runs(mask: np.ndarray) -> np.ndarray:
    """``(E, 2)`` int64 ``[start, stop)`` index ranges of the runs of True in ``mask`` (T,), in
    order."""
    v = np.concatenate([[False], np.asarray(mask, bool), [False]]).astype(np.int8)
    return np.flatnonzero(np.diff(v)).reshape(-1, 2).astype(np.int64)


def valid_segments(valid: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` sample ranges of the runs of True in ``valid`` (T,), in order."""
    return [(int(a), int(b)) for a, b in true_runs(valid)]


def fill_invalid(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``x`` (T, C) with its invalid samples replaced by linear interpolation between the valid
    samples on either side of each gap (held constant before the first and after the last), so
    a filter run over it never sees the placeholder values of failed tracking. ``x`` itself if
    every sample is valid; all invalid: unchanged (nothing to interpolate from)."""
    v = np.asarray(valid, bool)
    if v.all() or not v.any():
        return x
    t = np.arange(len(v))
    out = np.array(x, dtype=np.float64)
    for c in range(out.shape[1]):
        out[~v, c] = np.interp(t[~v], t[v], out[v, c])
    return out


def _check_band(fs: float, *freqs: float | None, step: str) -> None:
    for f in freqs:
        if f is not None and not 0 < f < fs / 2:
            raise InvalidValueError(
                f"{f} Hz is outside (0, Nyquist={fs / 2:g} Hz)", field=f"preprocessing.{step}"
            )


@register
@dataclass(frozen=True)
class BandPass(_Filter):
    """Butterworth band-pass (or high-pass with ``high=None``, low-pass with ``low=None``)."""

    name: ClassVar[str] = "bandpass"
    low: float | None = 20.0  # Hz
    high: float | None = 450.0  # Hz; clipped to 0.95 Nyquist for low-rate devices
    order: int = 4

    def sos(self, fs: float) -> np.ndarray:
        high = None if self.high is None else min(self.high, 0.95 * fs / 2)
        _check_band(fs, self.low, high, step=self.name)
        if self.low is not None and high is not None:
            return sps.butter(self.order, [self.low, high], "bandpass", fs=fs, output="sos")
        if self.low is not None:
            return sps.butter(self.order, self.low, "highpass", fs=fs, output="sos")
        if high is not None:
            return sps.butter(self.order, high, "lowpass", fs=fs, output="sos")
        raise InvalidValueError("needs low or high", field="preprocessing.bandpass")


@register
@dataclass(frozen=True)
class Notch(_Filter):
    """IIR notch at the mains frequency and its first ``harmonics`` odd harmonics."""

    name: ClassVar[str] = "notch"
    freq: float = 50.0  # Hz (60 in the Americas)
    q: float = 30.0
    harmonics: int = 1  # 1 = fundamental only; 2 adds 3*freq, ...

    def sos(self, fs: float) -> np.ndarray:
        freqs = [self.freq * (2 * k + 1) for k in range(self.harmonics)]
        _check_band(fs, self.freq, step=self.name)
        return np.concatenate(
            [sps.tf2sos(*sps.iirnotch(f, self.q, fs=fs)) for f in freqs if f < fs / 2]
        )


# -- other recording-level steps ----
@register
@dataclass(frozen=True)
class Envelope(Step):
    """Linear envelope: full-wave rectification then a zero-phase low-pass."""

    name: ClassVar[str] = "envelope"
    cutoff: float = 5.0  # Hz
    order: int = 4

    def apply(self, rec: Recording) -> Recording:
        _check_band(rec.fs, self.cutoff, step=self.name)
        sos = sps.butter(self.order, self.cutoff, "lowpass", fs=rec.fs, output="sos")
        return rec.replace(emg=filtfilt_sos(sos, np.abs(np.asarray(rec.emg)), rec.source))


@register
@dataclass(frozen=True)
class KinematicsLowPass(Step):
    """Zero-phase Butterworth low-pass of the kinematics ``(T, J)`` (EMG-JEPA Sec. 3.1.1: 15 Hz
    against tracking jitter), run on each contiguous run of valid samples on its own.

    Failed-tracking samples (``valid`` False; emg2pose stores zeros there) are neither filtered
    nor seen by the filter: one pass over the whole recording smeared the zeros into valid
    samples (over 1 degree within 18 ms of a gap, issue 14). They keep their input values. Each
    segment is odd-extended by ``3 fs / cutoff`` samples at both ends (0.2 s at 15 Hz; scipy's
    default is 15 samples): the extension is where the forward and backward passes settle, and
    with 15 samples a segment's edges were off by degrees for ordinary hand motion, with 3
    periods of the cutoff by hundredths. A segment too short for the filter (under
    :func:`min_filtfilt_len`, 16 samples at order 4: 8 ms at 2 kHz, less than a 60 Hz tracking
    frame) is kept as tracked, unfiltered. Without a validity mask the recording is one segment
    (and one that short is an error, as for every zero-phase filter).
    """

    name: ClassVar[str] = "kinematics_lowpass"
    cutoff: float = 15.0  # Hz
    order: int = 4

    def apply(self, rec: Recording) -> Recording:
        if rec.kinematics is None:
            return rec
        _check_band(rec.fs, self.cutoff, step=self.name)
        sos = sps.butter(self.order, self.cutoff, "lowpass", fs=rec.fs, output="sos")
        kin = np.asarray(rec.kinematics)
        pad = int(np.ceil(3.0 * rec.fs / self.cutoff))
        if rec.valid is None:
            return rec.replace(kinematics=filtfilt_sos(sos, kin, rec.source, pad))
        out = np.array(kin, dtype=np.float32)
        for a, b in valid_segments(rec.valid):
            if b - a >= min_filtfilt_len(sos):
                out[a:b] = filtfilt_sos(sos, kin[a:b], rec.source, pad)
        return rec.replace(kinematics=out)


@register
@dataclass(frozen=True)
class Resample(Step):
    """Polyphase resampling of EMG and kinematics to ``fs``; labels and validity by nearest.

    The resampler's anti-aliasing filter spans ``10 max(up, down) / up`` input samples either
    side, so for the kinematics (issue 14) invalid samples are first bridged by
    :func:`fill_invalid` (their placeholder zeros would be smeared into valid samples), and the
    recording's ends are extended along a line (``padtype="line"``) rather than with zeros (which
    pulled the first and last joint angles towards 0). The EMG keeps zero padding: it is a
    zero-mean signal.
    """

    name: ClassVar[str] = "resample"
    fs: float = 2000.0

    def apply(self, rec: Recording) -> Recording:
        if rec.fs == self.fs:
            return rec
        up, down = resample_ratio(self.fs, rec.fs)
        emg = sps.resample_poly(np.asarray(rec.emg), up, down, axis=0).astype(np.float32)
        n = len(emg)
        src = np.minimum(
            (np.arange(n) * rec.fs / self.fs).round().astype(np.int64), rec.n_samples - 1
        )
        kin = None
        if rec.kinematics is not None:
            kin = np.asarray(rec.kinematics)
            if rec.valid is not None:
                kin = fill_invalid(kin, np.asarray(rec.valid))
            kin = sps.resample_poly(kin, up, down, axis=0, padtype="line")[:n]
        return rec.replace(
            emg=emg,
            fs=self.fs,
            kinematics=kin,
            labels={k: v[src] for k, v in rec.labels.items()},
            valid=None if rec.valid is None else np.asarray(rec.valid)[src],
        )


def resample_ratio(fs_out: float, fs_in: float) -> tuple[int, int]:
    """``(up, down)`` for polyphase resampling from ``fs_in`` to ``fs_out`` Hz."""
    f = Fraction(fs_out / fs_in).limit_denominator(1000)
    return f.numerator, f.denominator


# -- fitted steps ----
@register
@dataclass(frozen=True)
class ZScore(Step):
    """Per-channel z-scoring with mean/std fitted on training recordings only."""

    name: ClassVar[str] = "zscore"
    mean: tuple[float, ...] = ()  # fitted
    std: tuple[float, ...] = ()  # fitted

    @property
    def fitted(self) -> bool:
        return bool(self.mean)

    def fit(self, recordings: Sequence[Recording]) -> ZScore:
        n, s, ss = 0, 0.0, 0.0
        for r in recordings:  # streaming moments in float64: no concatenation
            x = np.asarray(r.emg, dtype=np.float64)
            n, s, ss = n + len(x), s + x.sum(0), ss + (x * x).sum(0)
        if n == 0:
            raise InvalidValueError(
                "no training recordings to fit on", field="preprocessing.zscore"
            )
        mean = s / n
        std = np.sqrt(np.maximum(ss / n - mean**2, 0.0))
        return dataclasses.replace(self, mean=tuple(mean), std=tuple(np.maximum(std, 1e-12)))

    def apply(self, rec: Recording) -> Recording:
        _require_fitted(self, rec)
        if len(self.mean) != rec.n_channels:
            raise InvalidValueError(
                f"fitted on {len(self.mean)} channels, got {rec.n_channels}",
                source=rec.source,
                field="preprocessing.zscore",
            )
        m, s = np.float32(self.mean), np.float32(self.std)
        return rec.replace(emg=(np.asarray(rec.emg) - m) / s, emg_unit="a.u.")  # unitless now


@register
@dataclass(frozen=True)
class MedianL2(Step):
    """EMG-JEPA normalisation: per user and channel, subtract the median, divide by the L2 scale.

    Statistics come from all of a user's recordings (label-free calibration, as in the paper).
    Choice: the paper's "channel-wise L2 normalisation" is read as dividing by the RMS
    (L2 norm / sqrt(N)), so the scale does not depend on how long a user recorded. Medians are
    taken on at most ``max_samples`` evenly strided samples per user to bound memory.
    """

    name: ClassVar[str] = "median_l2"
    max_samples: int = 1_000_000
    stats: Mapping[str, tuple[tuple[float, ...], tuple[float, ...]]] = field(default_factory=dict)

    @property
    def fitted(self) -> bool:
        return bool(self.stats)

    def fit(self, recordings: Sequence[Recording]) -> MedianL2:
        by_user: dict[str, list[Recording]] = {}
        for r in recordings:
            by_user.setdefault(r.subject, []).append(r)
        stats = {}
        for user, recs in sorted(by_user.items()):
            total = sum(r.n_samples for r in recs)
            step = max(1, total // self.max_samples)
            x = np.concatenate([np.asarray(r.emg)[::step] for r in recs]).astype(np.float64)
            med = np.median(x, axis=0)
            rms = np.sqrt(np.mean((x - med) ** 2, axis=0))
            stats[user] = (tuple(med), tuple(np.maximum(rms, 1e-12)))
        return dataclasses.replace(self, stats={**self.stats, **stats})

    def apply(self, rec: Recording) -> Recording:
        _require_fitted(self, rec)
        if rec.subject not in self.stats:
            raise InvalidValueError(
                f"no statistics for subject {rec.subject!r}; fit on them",
                source=rec.source,
                field="preprocessing.median_l2",
            )
        med, rms = (np.float32(v) for v in self.stats[rec.subject])
        return rec.replace(emg=(np.asarray(rec.emg) - med) / rms, emg_unit="a.u.")  # unitless


def _require_fitted(step: Step, rec: Recording) -> None:
    if not step.fitted:
        raise InvalidValueError(
            "step is not fitted: call Pipeline.fit first",
            source=rec.source,
            field=f"preprocessing.{step.name}",
        )


# -- window-level steps ----
@register
@dataclass(frozen=True)
class InstanceNorm(Step):
    """CPEP: normalise each window per channel to zero mean, unit variance.

    ``eps`` only guards flat channels: EMG in volts has std ~1e-5, so an additive epsilon of the
    usual 1e-6 would silently shrink every window by ~10%.
    """

    name: ClassVar[str] = "instance_norm"
    level: ClassVar[str] = "window"
    eps: float = 1e-12

    def apply_window(self, x: np.ndarray) -> np.ndarray:
        """``x``: (..., L, C) -> same shape.

        The operations of ``(x - x.mean()) / x.std()`` (numpy's std: the mean, the squared
        deviations, their mean, the root; bit for bit the same result) with the mean and the
        deviations computed once and divided in place: 1.8x faster, and what a streamed batch's
        loader spends most of its time on (bench/bench_streaming.py)."""
        d = x - x.mean(axis=-2, keepdims=True)
        sd = np.sqrt(np.mean(np.square(d), axis=-2, keepdims=True))
        d /= np.maximum(sd, self.eps)
        return d


# -- the pipeline ----
@dataclass(frozen=True)
class Pipeline:
    steps: tuple[Step, ...] = ()

    @classmethod
    def from_config(cls, config: Sequence[Mapping[str, Any]] | None) -> Pipeline:
        steps = []
        for i, item in enumerate(config or ()):
            where = f"preprocessing[{i}]"
            if not isinstance(item, Mapping) or "name" not in item:
                raise InvalidValueError("each step needs a 'name'", field=where)
            kind = STEPS.get(item["name"])
            if kind is None:
                raise InvalidValueError(
                    f"unknown step {item['name']!r}; known: {sorted(STEPS)}", field=f"{where}.name"
                )
            params = {k: v for k, v in item.items() if k != "name"}
            names = {f.name for f in dataclasses.fields(kind)}
            if unknown := set(params) - names:
                raise InvalidValueError(
                    f"unknown parameter(s) {sorted(unknown)} for "
                    f"{kind.name}; known: {sorted(names)}",
                    field=where,
                )
            params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
            if "stats" in params:
                params["stats"] = {u: (tuple(m), tuple(s)) for u, (m, s) in params["stats"].items()}
            steps.append(kind(**params))
        return cls(tuple(steps))

    def to_config(self) -> list[dict[str, Any]]:
        return [s.to_config() for s in self.steps]

    def fingerprint(self) -> str:
        return digest(PREPROCESSING_VERSION, self.recording_config())

    def recording_config(self) -> list[dict[str, Any]]:
        """The configuration of the recording-level steps: what the cache depends on."""
        return [s.to_config() for s in self.steps if s.level == "recording"]

    @property
    def window_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.level == "window")

    @property
    def fitted(self) -> bool:
        return all(s.fitted for s in self.steps)

    def fit(
        self, train: Sequence[Recording], calibration: Sequence[Recording] | None = None
    ) -> Pipeline:
        """Fit every stateful step on the output of the steps before it.

        ``train`` feeds supervised-safe statistics (z-score); ``calibration`` (default: ``train``)
        feeds per-user label-free statistics (median_l2), so test users can be normalised on their
        own data as in EMG-JEPA. Never pass held-out data as ``train``.
        """
        calibration = train if calibration is None else calibration
        fitted: list[Step] = []
        for step in self.steps:
            if not step.fitted:
                head = Pipeline(tuple(fitted))
                data = calibration if isinstance(step, MedianL2) else train
                step = step.fit([head.apply(r) for r in data])
            fitted.append(step)
        return Pipeline(tuple(fitted))

    def apply(self, rec: Recording) -> Recording:
        """Run the recording-level steps; consecutive filters run as one fused cascade."""
        rec = rec.load()
        pending: list[np.ndarray] = []
        for step in self.steps:
            if step.level != "recording":
                continue
            if isinstance(step, _Filter):
                pending.append(step.sos(rec.fs))
                continue
            rec = self._flush(rec, pending)
            rec = step.apply(rec)
        return self._flush(rec, pending)

    @staticmethod
    def _flush(rec: Recording, pending: list[np.ndarray]) -> Recording:
        if not pending:
            return rec
        sos = np.concatenate(pending)
        pending.clear()
        return rec.replace(emg=filtfilt_sos(sos, np.asarray(rec.emg), rec.source))

    def apply_windows(self, x: np.ndarray) -> np.ndarray:
        """Window-level steps on ``x`` (..., L, C)."""
        for s in self.window_steps:
            x = s.apply_window(x)  # type: ignore[attr-defined]
        return x


DEFAULT_EMG = [{"name": "bandpass", "low": 20.0, "high": 450.0}, {"name": "notch", "freq": 50.0}]
