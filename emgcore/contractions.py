"""AEMG's neural contraction tokenizer (NCT) and its ablation, fixed-size slicing.

Source: AEMG (papers/aemg.txt; notes/aemg.md, stage 2). A recording ``(T, C)`` becomes

1. **window energies** ``E_w = (1/L_w) sum_t sum_c X(c, t)^2`` over sliding windows of
   ``window_s`` every ``stride_s`` (one cumulative sum: O(T), no Python per window);
2. **contraction events**: the runs of windows with ``E_w > theta``, ``theta`` set per subject
   from a calibration period of rest (:func:`rest_threshold`);
3. **tokens**: one per event, ``(C, L_k)``, each channel z-scored inside the token; an event
   longer than ``token_s`` is cut into consecutive tokens whose *phase* says which part of the
   contraction they are (onset, sustain, offset; a whole event is one token);
4. **sentences**: a recording's tokens in time order, ``sentence_tokens`` at a time.

The ablation (``kind="slice"``) replaces steps 1-2 by fixed ``token_s`` slices every
``token_s``, rest included, everything else equal.

Choices the paper leaves open (notes/aemg.md lists what it does say):

* *Where an event starts and ends.* A window's decision belongs to its centre: an event runs
  from half a stride before its first supra-threshold window's centre to half a stride after its
  last one's. Window edges would widen every event by a whole window (250 ms).
* *Calibration.* The released code takes the first 10% of each recording as rest, which fails
  where a protocol starts with a movement (the simulator's do, and many public sets). Here the
  calibration period is the quietest contiguous ``calibration_s`` of the recording (the span of
  windows with the lowest mean energy: the rest a session always contains),
  and ``theta = mean + k * std`` of its window energies: the paper's "resting-noise level", the
  released code's form, ``k`` searched. A *span*, not the quietest windows wherever they lie:
  those are the low tail of the rest distribution, whose mean and spread both understate rest
  (theta would fall inside the noise and every recording would be one long event).
  *Per session* (one electrode placement: the released code's recording, or all of a
  session's files where a data set stores each gesture as one, :func:`sentence_set`), not
  pooled over a subject's sessions: electrodes are re-placed and their noise changes between
  sessions, and on the simulator pooling a subject's sessions lowered onset F1 from 0.87 to
  0.53 (myo-like, 100 ms tolerance).
* *Short detections and gaps.* Events shorter than ``min_event_s`` are dropped and gaps
  shorter than ``merge_gap_s`` are closed (noise crossings, and a contraction's own
  amplitude dips, would otherwise make many tokens of one contraction).
* *Long events.* Cut into tokens of at most ``token_s`` (the padded length the embedding
  needs); the phase condition keeps their order within the contraction.
* *Token normalisation.* Per-channel z-score over the token's own samples, with a floor on the
  standard deviation (``1e-6`` times the token's largest channel std) so a silent channel stays
  zero rather than amplifying noise to unit variance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from emgcore.errors import InvalidValueError
from emgcore.preprocessing import true_runs

# phase of a token within its contraction (the NST's activation-phase condition)
WHOLE, ONSET, SUSTAIN, OFFSET, SLICE = 0, 1, 2, 3, 4
PHASES = ("whole", "onset", "sustain", "offset", "slice")


@dataclass(frozen=True)
class TokenizerConfig:
    """How recordings become tokens. Times in seconds.

    ``kind``: ``"nct"`` (contraction events) or ``"slice"`` (the ablation: fixed ``token_s``
    slices every ``token_s``). ``window_s``/``stride_s``: the energy window and its step (the
    released code: 250 ms every 50 ms). ``threshold_k``: theta = mean + k std of the rest
    energies. ``token_s``: a token's longest span (its padded length).
    """

    kind: Literal["nct", "slice"] = "nct"
    window_s: float = 0.25
    stride_s: float = 0.05
    threshold_k: float = 3.0
    calibration_s: float = 2.0
    min_event_s: float = 0.1
    merge_gap_s: float = 0.15
    token_s: float = 1.0
    sentence_tokens: int = 16

    def __post_init__(self) -> None:
        if self.kind not in ("nct", "slice"):
            raise InvalidValueError(
                f"tokenizer kind must be 'nct' or 'slice', got {self.kind!r}",
                field="tokenizer.kind",
            )
        for name in ("window_s", "stride_s", "token_s", "calibration_s"):
            if not getattr(self, name) > 0:
                raise InvalidValueError(
                    f"{name} must be > 0 s, got {getattr(self, name)!r}",
                    field=f"tokenizer.{name}",
                )
        for name in ("threshold_k", "min_event_s", "merge_gap_s"):
            if not getattr(self, name) >= 0:  # NaN too
                raise InvalidValueError(
                    f"{name} must be >= 0, got {getattr(self, name)!r}",
                    field=f"tokenizer.{name}",
                )
        if self.stride_s > self.window_s:
            raise InvalidValueError(
                f"stride_s {self.stride_s:g} s is longer than window_s {self.window_s:g} s: "
                "samples between windows would never be weighed",
                field="tokenizer.stride_s",
            )
        n = self.sentence_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidValueError(
                f"sentence_tokens must be an integer >= 1, got {n!r}",
                field="tokenizer.sentence_tokens",
            )

    def samples(self, seconds: float, fs: float) -> int:
        """``seconds`` at ``fs`` Hz in whole samples, at least one."""
        return max(1, round(seconds * fs))


@dataclass(frozen=True)
class Tokens:
    """A recording's tokens, in time order.

    ``values (N, C, L)`` float32, zero past each token's ``length (N,)``; ``start (N,)`` its
    first sample in the recording; ``phase (N,)`` (:data:`PHASES`); ``event (N,)`` the
    contraction it belongs to (its index among the recording's events).
    """

    values: np.ndarray
    length: np.ndarray
    start: np.ndarray
    phase: np.ndarray
    event: np.ndarray

    def __len__(self) -> int:
        return len(self.length)

    def sentences(self, size: int, group: np.ndarray | None = None) -> np.ndarray:
        """``(S, size)`` token indices, ``size`` consecutive tokens per sentence in time
        order, each group's last sentence padded with ``-1`` (no sentence without a token).
        ``group (N,)``: each token's group (e.g. its gesture repetition, :func:`label_trials`),
        constant over runs; a sentence never spans two runs."""
        n = len(self)
        g = np.zeros(n, np.int64) if group is None else np.asarray(group)
        if n == 0:
            return np.zeros((0, size), np.int64)
        new = np.concatenate([[True], g[1:] != g[:-1]])
        run_start = np.flatnonzero(new)
        run = np.cumsum(new) - 1
        pos = np.arange(n) - run_start[run]  # the token's place in its run
        per_run = -(-np.diff(np.append(run_start, n)) // size)
        first = np.concatenate([[0], np.cumsum(per_run)[:-1]])
        idx = np.full((int(per_run.sum()), size), -1, np.int64)
        idx[first[run] + pos // size, pos % size] = np.arange(n)
        return idx


def label_trials(label: np.ndarray, rest: int = 0) -> np.ndarray:
    """``(T,)`` int64 the gesture repetition (trial) of every sample of a continuous
    ``label (T,)``: a trial is a run of rest and the gesture that follows it, so a new one
    starts where rest resumes after a gesture. A recording of one gesture (a myoarmband file)
    is one trial."""
    lab = np.asarray(label)
    ends = np.zeros(len(lab), np.int64)
    ends[1:] = (lab[1:] == rest) & (lab[:-1] != rest)
    return np.cumsum(ends)


def window_energy(emg: np.ndarray, window: int, stride: int) -> np.ndarray:
    """``E_w`` of every window ``[i*stride, i*stride + window)`` of ``emg (T, C)``:
    ``(n_windows,)`` float64, the mean over the window's samples of ``sum_c X(c, t)^2``
    (AEMG, NCT). Empty when the recording is shorter than one window."""
    # the channel sum in the input's precision (4x faster than float64 for 64 channels; the
    # relative error of a 64-term float32 sum is ~1e-6), the running sum over time in float64
    power = np.einsum("tc,tc->t", emg, emg)
    cum = np.concatenate([[0.0], np.cumsum(power, dtype=np.float64)])
    starts = np.arange(0, len(emg) - window + 1, stride)
    return (cum[starts + window] - cum[starts]) / window


def rest_threshold(energies: np.ndarray | Sequence[np.ndarray], cfg: TokenizerConfig) -> float:
    """A session's ``theta``: ``mean + k * std`` of the window energies of its quietest
    contiguous ``calibration_s`` (``energies``: the :func:`window_energy` of each of its
    recordings, or of one). Only recordings holding a whole calibration span compete (a file of
    a few windows would win on its mean and give a std of one or two windows); when none does,
    the longest counts as one span. Raises :class:`InvalidValueError` when there is no window
    at all."""
    if isinstance(energies, np.ndarray):
        energies = [energies]
    span = max(2, round((cfg.calibration_s - cfg.window_s) / cfg.stride_s) + 1)
    arrays = [np.asarray(e, np.float64).ravel() for e in energies]
    arrays = [e for e in arrays if e.size]
    if not arrays:
        raise InvalidValueError(
            "no window to calibrate the contraction threshold on: every recording is shorter "
            f"than one {cfg.window_s:g} s energy window",
            field="tokenizer.window_s",
        )
    whole = [e for e in arrays if e.size >= span]
    if not whole:
        best = max(arrays, key=len)
        return float(best.mean() + cfg.threshold_k * best.std())
    best, best_mean = whole[0][:span], np.inf
    for e in whole:
        cum = np.concatenate([[0.0], np.cumsum(e)])
        means = (cum[span:] - cum[:-span]) / span  # mean energy of every span of windows
        i = int(np.argmin(means))
        if means[i] < best_mean:
            best, best_mean = e[i : i + span], means[i]
    return float(best.mean() + cfg.threshold_k * best.std())


def contraction_events(
    emg: np.ndarray, fs: float, theta: float, cfg: TokenizerConfig
) -> np.ndarray:
    """The contraction events of ``emg (T, C)`` at ``fs`` Hz: ``(E, 2)`` int64 ``[onset,
    offset)`` sample pairs, in time order (AEMG's NCT gating; the module doc says where an event
    starts and ends, and how short ones and gaps are handled)."""
    w, st = cfg.samples(cfg.window_s, fs), cfg.samples(cfg.stride_s, fs)
    active = window_energy(emg, w, st) > theta
    if not active.any():
        return np.zeros((0, 2), np.int64)
    runs = true_runs(active)  # window indices: [first, last + 1)
    on = runs[:, 0] * st + w // 2 - st // 2
    off = (runs[:, 1] - 1) * st + w // 2 + (st - st // 2)
    ev = np.clip(np.stack([on, off], axis=1), 0, len(emg))
    return merge_events(ev, cfg.samples(cfg.merge_gap_s, fs), cfg.samples(cfg.min_event_s, fs))


def merge_events(events: np.ndarray, gap: int, min_len: int) -> np.ndarray:
    """``events (E, 2)`` ``[start, stop)`` in time order with gaps shorter than ``gap`` closed,
    then events shorter than ``min_len`` dropped (samples)."""
    if len(events) == 0:
        return np.zeros((0, 2), np.int64)
    keep = np.concatenate([[True], events[1:, 0] - events[:-1, 1] >= gap])
    ev = np.stack(
        [events[keep, 0], np.maximum.reduceat(events[:, 1], np.flatnonzero(keep))], axis=1
    ).astype(np.int64)
    return ev[ev[:, 1] - ev[:, 0] >= min_len]


def fixed_slices(n_samples: int, fs: float, cfg: TokenizerConfig) -> np.ndarray:
    """The ablation's events: ``token_s`` slices every ``token_s`` over the whole recording,
    ``(E, 2)`` ``[start, stop)``; the last partial slice kept (padded like any short token)
    when it spans ``min_event_s`` (a shorter tail, down to one sample, z-scores to nothing)."""
    size = cfg.samples(cfg.token_s, fs)
    on = np.arange(0, n_samples, size, dtype=np.int64)
    ev = np.stack([on, np.minimum(on + size, n_samples)], axis=1)
    return ev[ev[:, 1] - ev[:, 0] >= min(size, cfg.samples(cfg.min_event_s, fs))]


def tokenize(emg: np.ndarray, fs: float, theta: float, cfg: TokenizerConfig) -> Tokens:
    """``emg (T, C)`` at ``fs`` Hz as :class:`Tokens` of length ``token_s`` (NCT events, or
    the ablation's slices when ``cfg.kind == "slice"``; ``theta`` is then unused).

    Every token is z-scored per channel over its own samples (AEMG, NCT); padding stays 0.
    Raises :class:`InvalidValueError` for ``emg`` that is not ``(T, C)``.
    """
    x = np.asarray(emg, np.float32)
    if x.ndim != 2:
        raise InvalidValueError(f"emg must be (T, C), got shape {x.shape}", field="emg")
    if not fs > 0:
        raise InvalidValueError(f"fs must be > 0 Hz, got {fs!r}", field="fs")
    if cfg.kind == "nct" and not np.isfinite(theta):
        raise InvalidValueError(
            f"the contraction threshold must be finite, got {theta!r}", field="theta"
        )
    size = cfg.samples(cfg.token_s, fs)
    if cfg.kind == "slice":
        events = fixed_slices(len(x), fs, cfg)
    else:
        events = contraction_events(x, fs, theta, cfg)
    # cut every event into ceil(len / size) tokens, vectorised over all of them
    n_tok = -(-(events[:, 1] - events[:, 0]) // size)
    event = np.repeat(np.arange(len(events)), n_tok)
    k = np.arange(n_tok.sum()) - np.repeat(np.cumsum(n_tok) - n_tok, n_tok)  # index in event
    start = events[event, 0] + k * size
    length = np.minimum(size, events[event, 1] - start)
    if cfg.kind == "slice":
        phase = np.full(len(start), SLICE, np.int8)
    else:
        last = k == n_tok[event] - 1
        phase = np.where(k == 0, np.where(last, WHOLE, ONSET), np.where(last, OFFSET, SUSTAIN))
    values = np.zeros((len(start), x.shape[1], size), np.float32)
    # One slice per token (tokens are few: a loop over them, each step vectorised over its
    # samples and channels, beats a fancy-indexed (N, L, C) gather 5-fold on 64 channels).
    for i, (s, n) in enumerate(zip(start.tolist(), length.tolist(), strict=True)):
        values[i, :, :n] = _zscore(x[s : s + n].T)
    return Tokens(
        values=values,
        length=length.astype(np.int64),
        start=start.astype(np.int64),
        phase=phase.astype(np.int8),
        event=event.astype(np.int64),
    )


def _zscore(seg: np.ndarray) -> np.ndarray:
    """Per-channel z-score of one token's ``seg (C, n)`` over its samples."""
    centred = seg - seg.mean(axis=1, keepdims=True)
    std = np.sqrt(np.einsum("cn,cn->c", centred, centred) / seg.shape[1])[:, None]
    floor = 1e-6 * std.max() + 1e-12
    return centred / np.maximum(std, floor)


def activation_events(
    activation: np.ndarray, fs: float, level: float = 0.1, min_s: float = 0.05
) -> np.ndarray:
    """Ground-truth contraction events from true muscle activation ``(T, M)`` (the simulator's
    :func:`~emgcore.data.simulator.muscle_activation`): runs where any muscle's activation
    exceeds ``level`` (rest sits at ~0.02), gaps shorter than ``min_s`` closed and runs shorter
    than ``min_s`` dropped. ``(E, 2)`` ``[onset, offset)`` samples."""
    n = max(1, round(min_s * fs))
    return merge_events(true_runs(np.asarray(activation).max(axis=1) > level), n, n)


def event_f1(
    predicted: np.ndarray, reference: np.ndarray, fs: float, tolerance_s: float
) -> dict[str, float]:
    """Onset and offset F1 of ``predicted`` against ``reference`` events (``(E, 2)`` samples
    at ``fs``), each a one-to-one matching within ``tolerance_s`` (mir_eval's onset
    evaluation: a maximum bipartite matching, as MIREX scores onset detectors)."""
    import mir_eval

    out = {}
    for name, col in (("onset", 0), ("offset", 1)):
        ref = np.asarray(reference, np.float64)[:, col] / fs
        est = np.asarray(predicted, np.float64)[:, col] / fs
        f, p, r = mir_eval.onset.f_measure(ref, est, window=tolerance_s)
        out |= {f"{name}_f1": f, f"{name}_precision": p, f"{name}_recall": r}
    return out


def reference_events(emg: np.ndarray, fs: float) -> np.ndarray:
    """Contraction events of ``emg (T, C)`` by a well-kept detector, NeuroKit2's
    ``emg_activation`` (method ``"mixture"``): the comparison the tokenizer is judged against.
    ``(E, 2)`` ``[onset, offset)`` samples.

    NeuroKit2 is single-channel: its documented amplitude (``emg_amplitude``: TKEO and linear
    envelope) is taken per channel and averaged, and scaled to its median (the Gaussian mixture
    is fitted on values of order one, not volts). ``"mixture"``, not its default
    ``"threshold"``: the latter's threshold, a tenth of the amplitude's std, assumes a baseline
    near zero and on a noise floor never sees a rest, so finds no onset at all.
    Needs ``neurokit2`` (a dev dependency).
    """
    import warnings

    import neurokit2 as nk

    x = np.asarray(emg, np.float64)
    amp = np.mean([nk.emg_amplitude(x[:, c]) for c in range(x.shape[1])], axis=0)
    amp /= max(float(np.median(amp)), np.finfo(float).tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its sklearn mixture warns on convergence
        _, info = nk.emg_activation(emg_amplitude=amp, sampling_rate=round(fs), method="mixture")
    on = np.asarray(info["EMG_Onsets"], np.int64)
    off = np.asarray(info["EMG_Offsets"], np.int64)
    n = min(len(on), len(off))  # a contraction still running at the end has no offset
    return np.stack([on[:n], off[:n]], axis=1)


@dataclass(frozen=True)
class SentenceSet:
    """Every sentence of a set of recordings in AEMG's common input space.

    ``values (N, S, C, L)`` float32 (zero padding), ``length (N, S)`` real samples per token (0
    for padding tokens), ``phase (N, S)`` int8, ``position (N, C, P)`` float32 (the spatial
    condition, :func:`emgcore.topology.topology_map`), ``label (N,)`` int64 the most common
    label at the sentence's token centres (``-1`` without labels), ``subject (N,)`` and
    ``session (N,)`` str, ``recording (N,)`` the index of the recording it came from, ``end
    (N,)`` int64 the sample after its last token's last, on that recording's clock.
    """

    values: np.ndarray
    length: np.ndarray
    phase: np.ndarray
    position: np.ndarray
    label: np.ndarray
    subject: np.ndarray
    session: np.ndarray
    recording: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return len(self.length)

    def take(self, idx: np.ndarray) -> SentenceSet:
        """The sentences ``idx`` (a boolean mask or indices)."""
        return SentenceSet(*(np.asarray(getattr(self, f))[idx] for f in self.__dataclass_fields__))

    @staticmethod
    def concat(sets: Sequence[SentenceSet]) -> SentenceSet:
        """The sentences of ``sets`` one after another (``recording`` keeps each set's own
        numbering)."""
        fields = SentenceSet.__dataclass_fields__
        return SentenceSet(*(np.concatenate([getattr(s, f) for s in sets]) for f in fields))


def sentence_set(
    recordings: Sequence,
    cfg: TokenizerConfig,
    label: str | None = "gesture",
    trials: bool = False,
    rest: int = 0,
) -> SentenceSet:
    """Calibrate, tokenize and group ``recordings`` (:class:`~emgcore.recording.Recording`,
    band-passed by the caller) into sentences (AEMG stages 1-2).

    Each recording is mapped onto the common topology at the common rate
    (:func:`emgcore.topology.calibrate`); the contraction threshold is set per *session* (one
    subject's recordings with one electrode placement: the released code's unit is a recording,
    but a data set like myoarmband stores each 5-s gesture hold as its own file, whose quietest
    span is no rest; the session's neutral files are); each recording's tokens are cut into
    sentences of ``cfg.sentence_tokens``, never across recordings, and with ``trials`` never
    across gesture repetitions of ``label`` (:func:`label_trials`, ``rest`` the rest class):
    continuous recordings then give one sentence per repetition, as a data set of one file per
    gesture does (the threshold is still calibrated on the whole session), labelled with the
    repetition's gesture (the most common label among its tokens other than ``rest``; rest only
    when all are).
    """
    from emgcore.topology import COMMON_FS, calibrate

    if not recordings:
        raise InvalidValueError("no recording to tokenize", field="recordings")
    if label is not None and not any(label in rec.labels for rec in recordings):
        raise InvalidValueError(
            f"no recording has labels {label!r}; they have "
            f"{sorted({k for rec in recordings for k in rec.labels})} (label=None for none)",
            field="label",
        )
    fs = COMMON_FS
    w, st = cfg.samples(cfg.window_s, fs), cfg.samples(cfg.stride_s, fs)
    s_tok = cfg.sentence_tokens
    mapped = [calibrate(rec) for rec in recordings]
    sessions: dict[tuple[str, str], list[int]] = {}
    for i, rec in enumerate(recordings):
        sessions.setdefault((rec.subject, rec.session), []).append(i)
    theta = np.zeros(len(recordings))
    if cfg.kind == "nct":
        for idx in sessions.values():
            t = rest_threshold([window_energy(mapped[i][0], w, st) for i in idx], cfg)
            theta[idx] = t
    parts = []
    for i, (rec, (emg, position)) in enumerate(zip(recordings, mapped, strict=True)):
        tok = tokenize(emg, fs, theta[i], cfg)
        if len(tok) == 0:
            continue
        scale = rec.fs / fs  # the common clock onto the recording's
        group = None
        if trials and label is not None and label in rec.labels:
            first = np.minimum(np.round(tok.start * scale).astype(np.int64), rec.n_samples - 1)
            group = label_trials(rec.labels[label], rest)[first]
        sent = tok.sentences(s_tok, group)  # (n, S) token indices, -1 padding
        real = sent >= 0
        at = np.where(real, sent, 0)
        values = np.where(real[:, :, None, None], tok.values[at], 0.0).astype(np.float32)
        lab = np.full(len(sent), -1, np.int64)
        if label is not None and label in rec.labels:
            centre = (tok.start + tok.length // 2) * scale
            src = np.minimum(np.round(centre).astype(np.int64), rec.n_samples - 1)
            tok_lab = np.asarray(rec.labels[label])[src][at]
            if group is not None:  # a repetition is its gesture: rest tokens (blips) don't vote
                real_lab = real & (
                    (tok_lab != rest) | ~(real & (tok_lab != rest)).any(1, keepdims=True)
                )
            else:
                real_lab = real
            lab = np.array([_mode(t[r]) for t, r in zip(tok_lab, real_lab, strict=True)], np.int64)
        parts.append(
            SentenceSet(
                values=values,
                length=np.where(real, tok.length[at], 0),
                phase=np.where(real, tok.phase[at], 0).astype(np.int8),
                position=np.repeat(position[None], len(sent), axis=0),
                label=lab,
                subject=np.full(len(sent), rec.subject),
                session=np.full(len(sent), rec.session),
                recording=np.full(len(sent), i),
                end=np.minimum(
                    np.round(np.where(real, tok.start[at] + tok.length[at], 0).max(1) * scale),
                    rec.n_samples,
                ).astype(np.int64),
            )
        )
    if not parts:
        raise InvalidValueError(
            "no contraction found in any recording (flat signals, or a threshold above every "
            f"window's energy: tokenizer.threshold_k is {cfg.threshold_k:g})",
            field="tokenizer.threshold_k",
        )
    return SentenceSet.concat(parts)


def _mode(x: np.ndarray) -> int:
    """The most common value of ``x`` (the smallest of those tied)."""
    vals, counts = np.unique(x, return_counts=True)
    return int(vals[counts.argmax()])
