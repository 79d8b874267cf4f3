"""The MAE on real signals: EMG-MAE pre-training on myoarmband, then a linear gesture probe,
leave-one-subject-out, against handcrafted features with LDA on the same folds.

myoarmband (``../shared/data/myoarmband``): an 8-channel Myo ring at 200 Hz, 7 gestures, 22
people in the pre-training cohort and 18 in the evaluation cohort. The MAE pre-trains, without
labels, on the pre-training cohort only; both classifiers are then scored leave-one-subject-out
over the evaluation cohort (train on 17 people, test on the 18th), so neither sees the test
person. The baseline is Hudgins' time-domain set per channel (RMS, WL, ZC, SSC: 32 features)
with linear discriminant analysis, the classic myoelectric-control pipeline.

Choices (this is a check that the recipe learns from real EMG, not a paper number): 1-s windows
with a 0.5-s stride; MAE patches of 10 samples (50 ms, 20 tokens), d = 64, 4 + 2 blocks, lr 1e-3
(the papers' 1e-4 is for 100 epochs at d = 256); channels standardised by the pre-training
cohort's statistics rather than instance-normalised per window, because window amplitude is
what tells a gesture from rest at 200 Hz.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from emgcore.eval.probe import class_scores, linear_probe
from emgcore.features import FeatureConfig, Thresholds, extract, fit_thresholds, window_starts
from emgcore.models.mae import MAEConfig, train_mae
from emgcore.recording import Recording
from emgcore.training import batched

TD4 = (1, 2, 4, 5)  # rms, wl, zc, ssc in emgcore.features.FEATURES (without spectral bands)


@dataclass(frozen=True)
class MyoCheckConfig:
    window: int = 200  # samples (1 s at 200 Hz)
    stride: int = 100  # samples
    mae: MAEConfig = field(
        default_factory=lambda: MAEConfig(
            patch=10, dim=64, depth=4, decoder_depth=2, heads=4, lr=1e-3, epochs=30, batch_size=256
        )
    )
    seed: int = 0


@dataclass
class Windows:
    x: np.ndarray  # (N, L, C) float32
    y: np.ndarray  # (N,) gesture
    subject: np.ndarray  # (N,) str
    features: np.ndarray  # (N, 4 C) TD4


def windows(recordings: Sequence[Recording], cfg: MyoCheckConfig, th: Thresholds) -> Windows:
    """Every full window of every recording, with its gesture and TD4 features."""
    xs, ys, subs, feats = [], [], [], []
    for rec in recordings:
        emg = np.asarray(rec.emg, np.float32)
        starts = window_starts(len(emg), cfg.window, cfg.stride)
        if not len(starts):
            continue
        view = np.lib.stride_tricks.sliding_window_view(emg, cfg.window, axis=0)  # (T', C, L)
        xs.append(view[starts].transpose(0, 2, 1).copy())  # (N, L, C)
        ys.append(np.asarray(rec.labels["gesture"])[starts + cfg.window - 1])
        subs += [rec.subject] * len(starts)
        feats.append(td4(emg, rec.fs, starts, cfg.window, th))
    return Windows(np.concatenate(xs), np.concatenate(ys), np.array(subs), np.concatenate(feats))


def td4(emg: np.ndarray, fs: float, starts: np.ndarray, window: int, th: Thresholds) -> np.ndarray:
    """Hudgins' RMS, WL, ZC, SSC of each channel of each window: ``(N, 4 C)``."""
    f = extract(emg, fs, starts, window, th, bands_hz=())  # (N, C * 11)
    return f.reshape(len(starts), emg.shape[1], -1)[:, :, TD4].reshape(len(starts), -1)


def run(recordings: Sequence[Recording], cfg: MyoCheckConfig = MyoCheckConfig()) -> dict:
    """Per held-out person: balanced accuracy of the MAE probe and of TD4 + LDA."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    pre = [r for r in recordings if r.subject.startswith("pre/")]
    ev = [r for r in recordings if r.subject.startswith("eval/")]
    if not pre or not ev:
        raise ValueError("needs both myoarmband cohorts (PreTrainingDataset, EvaluationDataset)")
    # ZC / SSC / WAMP thresholds from the pre-training cohort (KinEMbed's recipe)
    th = fit_thresholds([np.asarray(r.emg) for r in pre], FeatureConfig())
    w_pre, w_ev = windows(pre, cfg, th), windows(ev, cfg, th)
    mae, fit = train_mae(cfg.mae, torch.from_numpy(w_pre.x), seed=cfg.seed, rotate=False)
    z = batched(lambda x: mae.encoder.summary(x, "mean"), torch.from_numpy(w_ev.x)).numpy()
    n_cls = int(max(w_pre.y.max(), w_ev.y.max()) + 1)
    out: dict[str, dict[str, float]] = {"mae_probe": {}, "td4_lda": {}}
    for person in np.unique(w_ev.subject):
        test, train = w_ev.subject == person, w_ev.subject != person
        pred = linear_probe(z[train], w_ev.y[train], z[test])
        out["mae_probe"][str(person)] = class_scores(w_ev.y[test], pred, n_cls).balanced_accuracy
        lda = LinearDiscriminantAnalysis().fit(w_ev.features[train], w_ev.y[train])
        pred = lda.predict(w_ev.features[test])
        out["td4_lda"][str(person)] = class_scores(w_ev.y[test], pred, n_cls).balanced_accuracy
    return {
        **out,
        "mae_loss": [e["train_loss"] for e in fit.epochs],
        "summary": {
            k: (float(np.mean(list(v.values()))), float(np.std(list(v.values()))))
            for k, v in out.items()
        },
    }
