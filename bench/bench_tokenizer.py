"""AEMG's contraction tokenizer (emgcore.contractions): speed against real time, and its events
against the simulator's true muscle activation and against NeuroKit2's onset detector.

1. Throughput on 64-channel 1 kHz EMG (flexemg-like, 60 s), one core: calibration, events and
   z-scored tokens, as a multiple of real time (target >= 1000x), beside NeuroKit2's detector on
   the same recording (the named baseline).
2. Event F1 within 100 and 200 ms (mir_eval's one-to-one onset matching) of the default
   tokenizer (per-recording calibration) and of NeuroKit2 (``reference_events``) against the true
   contractions (any muscle's activation > 0.1), and of the two against each other: myo-like at
   200 Hz (the paper's input rate), flexemg-like at its own 1 kHz and resampled to 200 Hz.

Run: ``python bench/bench_tokenizer.py`` (about a minute).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import median_time, pin_one_core

pin_one_core()

import numpy as np  # noqa: E402

from emgcore.contractions import (  # noqa: E402
    TokenizerConfig,
    activation_events,
    contraction_events,
    event_f1,
    reference_events,
    rest_threshold,
    tokenize,
    window_energy,
)
from emgcore.data.simulator import muscle_activation, preset, simulate_recording  # noqa: E402
from emgcore.preprocessing import BandPass, Resample  # noqa: E402

CFG = TokenizerConfig()


def nct(emg: np.ndarray, fs: float) -> np.ndarray:
    """The default tokenizer's events, calibrated on the recording itself."""
    w, st = CFG.samples(CFG.window_s, fs), CFG.samples(CFG.stride_s, fs)
    return contraction_events(emg, fs, rest_threshold(window_energy(emg, w, st), CFG), CFG)


def recordings(name: str, fs: float | None = None):
    """``(emg, true activation)`` of every recording of a preset, band-passed, optionally
    resampled to ``fs`` (the activation by nearest sample)."""
    cfg = preset(name)
    for subject in range(cfg.n_subjects):
        for session in range(len(cfg.sessions)):
            rec = BandPass().apply(simulate_recording(cfg, subject, session))
            act = muscle_activation(cfg, subject, session)
            if fs is not None and fs != rec.fs:
                rec = Resample(fs=fs).apply(rec)
                src = np.minimum(np.round(np.arange(rec.n_samples) * cfg.fs / fs), len(act) - 1)
                act = act[src.astype(np.int64)]
            yield rec.emg, act, rec.fs


def throughput() -> None:
    cfg = preset("flexemg-like")
    rec = BandPass().apply(simulate_recording(cfg, 0, 0))
    emg, fs, seconds = np.ascontiguousarray(rec.emg), rec.fs, rec.n_samples / rec.fs
    w, st = CFG.samples(CFG.window_s, fs), CFG.samples(CFG.stride_s, fs)

    def ours() -> None:
        tokenize(emg, fs, rest_threshold(window_energy(emg, w, st), CFG), CFG)

    t_ours = median_time(ours, 5)
    t_nk = median_time(lambda: reference_events(emg, fs), 3)
    n_tok = len(tokenize(emg, fs, rest_threshold(window_energy(emg, w, st), CFG), CFG))
    print(
        f"throughput, {emg.shape[1]} channels at {fs:g} Hz, {seconds:g} s, one core: "
        f"NCT {t_ours * 1e3:.1f} ms ({n_tok} tokens) = {seconds / t_ours:,.0f}x real time "
        f"(target >= 1000x); NeuroKit2 {t_nk * 1e3:.0f} ms = {seconds / t_nk:,.0f}x; "
        f"NCT / NeuroKit2 speed {t_nk / t_ours:.0f}x"
    )


def accuracy() -> None:
    print(
        "event F1 (onset/offset), mean over recordings    "
        "| NCT vs truth | NeuroKit2 vs truth | NCT vs NeuroKit2"
    )
    for name, fs in (("myo-like", None), ("flexemg-like", None), ("flexemg-like", 200.0)):
        rows: dict[str, list[dict[str, float]]] = {}
        n_rec = n_true = 0
        for emg, act, rate in recordings(name, fs):
            truth, ours, ref = (
                activation_events(act, rate),
                nct(emg, rate),
                reference_events(emg, rate),
            )
            n_rec, n_true = n_rec + 1, n_true + len(truth)
            for tol in (0.1, 0.2):
                for key, (a, b) in {
                    "nct": (ours, truth),
                    "nk": (ref, truth),
                    "agree": (ours, ref),
                }.items():
                    rows.setdefault(f"{key}@{tol}", []).append(event_f1(a, b, rate, tol))
        for tol in (0.1, 0.2):
            cells = []
            for key in ("nct", "nk", "agree"):
                f = rows[f"{key}@{tol}"]
                on = np.mean([d["onset_f1"] for d in f])
                off = np.mean([d["offset_f1"] for d in f])
                cells.append(f"{on:.2f} / {off:.2f}")
            print(
                f"{name:>12} at {rate:6g} Hz, {n_rec} rec, {n_true:3d} true, {tol * 1e3:3.0f} ms "
                f"|  {cells[0]}  |    {cells[1]}     |   {cells[2]}"
            )


if __name__ == "__main__":
    throughput()
    accuracy()
