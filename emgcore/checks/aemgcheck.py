"""AEMG on real people: pre-training on several sources at once, then gesture recognition
leave-one-subject-out on myoarmband's evaluation cohort, zero-shot and few-shot, against the
same encoder untrained and the slicing ablation.

Protocol (issue 21; notes/aemg.md for the paper's):

* **Pre-training, no labels**: myoarmband's pre-training cohort (22 people, never the evaluation
  cohort), flexemg (64-channel grid, 2 people) and simulator presets of other layouts (a 16-ring
  at 2 kHz, a 110-electrode grid), each band-passed, calibrated into the common space (16-ring,
  200 Hz) and tokenized (:func:`emgcore.contractions.sentence_set`).
* **Evaluation**: myoarmband's evaluation cohort (18 people, 3 sessions of 28 five-second
  gesture files each). The unit is a sentence (one gesture file's tokens), its label the
  gesture. **Zero-shot LOSO**: a linear probe (:func:`emgcore.eval.probe.linear_probe`) on the
  frozen pooled embeddings of 17 people, scored on the 18th (balanced accuracy; mean +- std
  over people). **Few-shot**: a probe on ``X``% of the target person's own sentences only
  (stratified by gesture), scored on the rest.
* **Fine-tuned zero-shot LOSO**: the pre-trained encoder fine-tuned end to end with a linear
  head on the 17 people (5 epochs), scored on the 18th: the paper's protocol. **Fine-tuned
  few-shot**: that classifier fine-tuned further (5 epochs) on ``X``% of the 18th person's
  sentences, scored on the rest: the paper's FT-X%.
* **Baselines on the same folds**: the same network trained from scratch the same way
  (supervised); the same encoder untrained (random weights) under the probe; Hudgins' TD4
  with LDA over each sentence's whole gesture file; the project's EMG-MAE (``realcheck``'s
  recipe) pre-trained on the same sources in the same common space, each sentence the mean of
  its gesture file's 1-s window embeddings, under the same probe (:func:`mae_embeddings`); the
  slicing ablation (``TokenizerConfig(kind="slice")``, everything else equal; its masked-token
  accuracy beside NCT's). ``realcheck`` scores TD4 + LDA and the MAE on 1-s windows instead.

Choices: the probe's few-shot curve fits the classifier on the target's labelled share alone,
with the pre-trained encoder frozen, beside the fine-tuned curve. Target-only rather than
target added to the 17 others: pooled, the others' 17-fold majority outvotes a person whose
gestures look unlike theirs, which is the case few-shot adaptation exists for. The fine-tuned
curve starts from the classifier trained on the 17 others, so it uses them too.

    python -m emgcore.checks.aemgcheck   # needs EMG_REAL_DATA (../shared/data)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from emgcore.contractions import SentenceSet, TokenizerConfig, sentence_set
from emgcore.methods.aemg import FEW_SHOT, embed, finetuned_loso, loso
from emgcore.models.aemg import AEMGConfig, MaskedTokenModel, PretrainConfig, pretrain
from emgcore.models.mae import MAEConfig
from emgcore.preprocessing import BandPass
from emgcore.recording import Recording
from emgcore.topology import COMMON_CHANNELS, COMMON_FS, calibrate
from emgcore.training import batched


def _realcheck_mae() -> MAEConfig:
    from emgcore.checks.realcheck import MyoCheckConfig

    return MyoCheckConfig().mae


@dataclass(frozen=True)
class AEMGCheckConfig:
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: AEMGConfig = field(default_factory=AEMGConfig.small)
    pretrain: PretrainConfig = field(
        default_factory=lambda: PretrainConfig(vq_epochs=15, mtm_epochs=15, batch_size=32, lr=1e-3)
    )
    simulated: tuple[str, ...] = ("db8-like", "grid110")  # presets of other layouts
    mae: MAEConfig = field(default_factory=_realcheck_mae)  # the MAE baseline: realcheck's
    finetune: bool = True  # the end-to-end folds: 5 of the whole run's 7.5 min on 2 cores
    seed: int = 0


def mae_embeddings(
    train: Sequence[Recording], ev: Sequence[Recording], cfg: MAEConfig, seed: int = 0
) -> np.ndarray:
    """``(len(ev), dim)``: the project's EMG-MAE (``realcheck``'s recipe: 1-s windows, 0.5-s
    stride, 10-sample patches) pre-trained on the same band-passed ``train`` recordings in the
    same common input space as AEMG (:func:`~emgcore.topology.calibrate`: 16-ring, 200 Hz), and
    each evaluation recording embedded as the mean of its windows' embeddings (a myoarmband
    file is one sentence: the AEMG sentence's unit)."""
    from emgcore.checks.realcheck import MyoCheckConfig
    from emgcore.features import window_starts
    from emgcore.models.mae import train_mae

    w = MyoCheckConfig()

    def windows(rec: Recording) -> np.ndarray:  # (N, L, C) in the common space
        emg, _ = calibrate(rec)
        starts = window_starts(len(emg), w.window, w.stride)
        if not len(starts):  # shorter than a window: the whole recording, zero-padded
            return np.pad(emg, ((0, w.window - len(emg)), (0, 0)))[None]
        return np.lib.stride_tricks.sliding_window_view(emg, w.window, 0)[starts].transpose(0, 2, 1)

    x = torch.from_numpy(np.concatenate([windows(r) for r in train]).astype(np.float32))
    mae, _ = train_mae(cfg, x, seed=seed, rotate=False)

    def embed_one(rec: Recording) -> np.ndarray:
        xs = torch.from_numpy(np.ascontiguousarray(windows(rec), np.float32))
        return batched(lambda b: mae.encoder.summary(b, "mean"), xs).numpy().mean(0)

    return np.stack([embed_one(r) for r in ev])


def td4_per_recording(pre: Sequence[Recording], ev: Sequence[Recording]) -> np.ndarray:
    """``(len(ev), 4 C)`` Hudgins' TD4 over each whole evaluation recording (one gesture file:
    the unit AEMG's sentences have here), thresholds from the pre-training cohort
    (``realcheck``'s recipe, which scores 1-s windows instead)."""
    from emgcore.checks.realcheck import td4
    from emgcore.features import FeatureConfig, fit_thresholds

    th = fit_thresholds([np.asarray(r.emg) for r in pre], FeatureConfig())
    return np.concatenate(
        [td4(np.asarray(r.emg, np.float32), r.fs, np.array([0]), r.n_samples, th) for r in ev]
    )


def _lda(train_z: np.ndarray, train_y: np.ndarray, test_z: np.ndarray) -> np.ndarray:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    return LinearDiscriminantAnalysis().fit(train_z, train_y).predict(test_z)


def _summary(scores: dict[str, float]) -> tuple[float, float]:
    v = np.array(list(scores.values()))
    return float(v.mean()), float(v.std())


def run(
    myo: Sequence[Recording],
    flex: Sequence[Recording] = (),
    cfg: AEMGCheckConfig = AEMGCheckConfig(),
    log: Callable[..., None] = print,
) -> dict:
    """The whole protocol (module doc). Returns per-person scores, summaries and the
    pre-training histories of NCT and the slicing ablation."""
    from emgcore.data.simulator import preset, simulate

    bp = BandPass()
    pre = [bp.apply(r) for r in myo if r.subject.startswith("pre/")]
    ev = [bp.apply(r) for r in myo if r.subject.startswith("eval/")]
    if not pre or not ev:
        raise ValueError("needs both myoarmband cohorts (PreTrainingDataset, EvaluationDataset)")
    others = [bp.apply(r) for r in flex]
    for name in cfg.simulated:
        others += [bp.apply(r) for r in simulate(preset(name, duration_s=60.0), [0, 1])]
    out: dict = {"scores": {}, "history": {}}
    for kind in ("nct", "slice"):
        tok = replace(cfg.tokenizer, kind=kind)
        t0 = time.perf_counter()
        train_set = SentenceSet.concat([sentence_set(recs, tok) for recs in (pre, others) if recs])
        eval_set = sentence_set(ev, tok)
        model_cfg = replace(
            cfg.model,
            sentence=tok.sentence_tokens,
            channels=COMMON_CHANNELS,
            token_len=tok.samples(tok.token_s, COMMON_FS),
        )
        log(f"{kind}: {len(train_set)} pre-training sentences, {len(eval_set)} evaluation "
            f"({time.perf_counter() - t0:.0f} s to tokenize)")  # fmt: skip
        _, mtm, history = pretrain(
            train_set, model_cfg, replace(cfg.pretrain, seed=cfg.seed), log=log
        )
        out["history"][kind] = history
        n_cls = int(eval_set.label.max()) + 1
        z = embed(mtm.encoder, eval_set)
        out["scores"][f"{kind}_zero_shot"] = loso(z, eval_set.label, eval_set.subject, n_cls)
        if kind == "nct":
            for f in FEW_SHOT:
                out["scores"][f"nct_few_shot_{round(f * 100)}"] = loso(
                    z, eval_set.label, eval_set.subject, n_cls, f, cfg.seed
                )
            torch.manual_seed(cfg.seed)
            z0 = embed(MaskedTokenModel(model_cfg).encoder, eval_set)
            out["scores"]["untrained_zero_shot"] = loso(z0, eval_set.label, eval_set.subject, n_cls)
            ends = [("finetuned", mtm.encoder), ("supervised", None)] if cfg.finetune else []
            for name, encoder in ends:
                fractions = FEW_SHOT if name == "finetuned" else ()
                scores = finetuned_loso(encoder, model_cfg, eval_set, n_cls, fractions, cfg.seed)
                for key, per_person in scores.items():
                    out["scores"][f"{name}_{key}"] = per_person
                    log(f"{name}_{key}: {_summary(per_person)}")
            z_mae = mae_embeddings([*pre, *others], ev, cfg.mae, cfg.seed)[eval_set.recording]
            out["scores"]["mae_zero_shot"] = loso(z_mae, eval_set.label, eval_set.subject, n_cls)
            f = td4_per_recording(pre, ev)[eval_set.recording]
            out["scores"]["td4_lda_zero_shot"] = loso(
                f, eval_set.label, eval_set.subject, n_cls, classifier=_lda
            )
    out["summary"] = {k: _summary(v) for k, v in out["scores"].items()}
    out["masked_accuracy"] = {
        k: h[-1].get("masked_accuracy", float("nan")) for k, h in out["history"].items()
    }
    return out


def main() -> int:
    """Run the protocol on ``$EMG_REAL_DATA`` (default ``../shared/data``) and print the
    summary; bad or missing data is one ``error:`` line and exit status 2, as
    ``python -m emgcore`` does."""
    import os
    import sys
    from pathlib import Path

    from emgcore.data.real import REAL_DATA_ENV, load_flexemg, load_myoarmband
    from emgcore.errors import EmgDataError

    root = Path(os.environ.get(REAL_DATA_ENV, "../shared/data"))
    try:
        res = run(load_myoarmband(root / "myoarmband"), load_flexemg(root / "flexemg"))
    except EmgDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k, (m, s) in res["summary"].items():
        print(f"{k:>24}: balanced accuracy {m:.3f} +- {s:.3f}")
    print("final masked-token accuracy:", res["masked_accuracy"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
