"""Pose-aligned EMG representations end to end: the evaluation of CPEP and EMBridge (Sec. 3).

``run`` pre-trains the EMG- and pose-MAEs on the pre-training windows, trains the methods that
build on them (PoseT, CPEP, the plain Q-Former, EMBridge and any ablation configured), and scores
every EMG encoder on the gesture tasks of Table 1:

* linear probe (LP), in-distribution: fit on ``probe_train_in``, score on ``eval`` in-dist.;
* LP unseen: fit on ``probe_train_unseen``, score on ``eval`` unseen;
* zero-shot (ZS), for the aligned methods: each ``eval`` EMG window retrieves its ``k = 10``
  nearest poses among the pose embeddings of the ``eval`` windows of the same class set and
  votes their labels (the papers' R_j over P_test);
* the pose-MAE's LP as the upper bound.

Balanced accuracy throughout. The emgcore side only: orchestration runs it per trial.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from emgcore.cpep import CPEPConfig, train_cpep
from emgcore.distributed import DataParallel
from emgcore.embridge import EMBridgeConfig, train_embridge
from emgcore.gestures import GestureConfig, PairedWindows, gesture_splits
from emgcore.kinembed import EpochHook
from emgcore.mae import MAEConfig, TokenEncoder, train_mae, train_poset
from emgcore.probe import class_scores, linear_probe, zero_shot
from emgcore.recording import Recording
from emgcore.training import batched

METHODS = ("emg_mae", "poset", "cpep", "qformer", "embridge")
ALIGNED = ("cpep", "qformer", "embridge")


@dataclass(frozen=True)
class PoseAlignConfig:
    """Everything one pose-alignment run needs; defaults are the papers'."""

    gestures: GestureConfig = field(default_factory=GestureConfig)
    emg_mae: MAEConfig = field(default_factory=lambda: MAEConfig(patch=50))
    pose_mae: MAEConfig = field(default_factory=lambda: MAEConfig(patch=200))
    poset: MAEConfig = field(default_factory=lambda: MAEConfig(patch=50))
    cpep: CPEPConfig = field(default_factory=CPEPConfig)
    embridge: EMBridgeConfig = field(default_factory=EMBridgeConfig)
    methods: tuple[str, ...] = METHODS  # which EMG encoders to train and score
    zero_shot_k: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if unknown := set(self.methods) - set(METHODS):
            raise ValueError(f"unknown method(s) {sorted(unknown)}; known: {METHODS}")


@dataclass
class Encoders:
    """Trained EMG embedders ``(B, T, C) -> (B, d)`` (or ``(B, M, d)`` for retrieval)."""

    pose_mae: TokenEncoder
    emg: dict[str, Callable[[Tensor], Tensor]] = field(default_factory=dict)
    retrieve: dict[str, Callable[[Tensor], Tensor]] = field(default_factory=dict)
    pose: dict[str, Callable[[Tensor], Tensor]] = field(default_factory=dict)
    models: dict[str, torch.nn.Module] = field(default_factory=dict)


def train_all(
    train: PairedWindows,
    cfg: PoseAlignConfig,
    *,
    hooks: Mapping[str, Sequence[EpochHook]] | None = None,
    parallel: DataParallel | None = None,
) -> Encoders:
    """Pre-train both MAEs, then every configured method on the paired ``train`` windows."""
    hooks = hooks or {}
    kw: dict[str, Any] = {"seed": cfg.seed, "parallel": parallel}
    emg_mae, _ = train_mae(
        cfg.emg_mae, train.emg, rotate=True, hooks=hooks.get("emg_mae", ()), name="emg-mae", **kw
    )
    pose_mae, _ = train_mae(
        cfg.pose_mae, train.pose, hooks=hooks.get("pose_mae", ()), name="pose-mae", **kw
    )
    out = Encoders(pose_mae.encoder)
    out.models |= {"emg_mae": emg_mae, "pose_mae": pose_mae}
    if "emg_mae" in cfg.methods:
        out.emg["emg_mae"] = lambda x: emg_mae.encoder.summary(x)
    if "poset" in cfg.methods:
        poset, _ = train_poset(
            cfg.poset, train.emg, train.pose, train.valid, hooks=hooks.get("poset", ()), **kw
        )
        out.models["poset"] = poset
        # LP on a supervised encoder: the mean of its tokens (EMBridge A.6 averages time points)
        out.emg["poset"] = lambda x: poset.encoder.summary(x, "mean")
    heads = cfg.emg_mae.heads
    if "cpep" in cfg.methods:
        cpep, _ = train_cpep(
            cfg.cpep,
            emg_mae.encoder,
            pose_mae.encoder,
            train.emg,
            train.pose,
            hooks=hooks.get("cpep", ()),
            **kw,
        )
        out.models["cpep"] = cpep
        out.emg["cpep"] = out.retrieve["cpep"] = cpep.embed_emg
        out.pose["cpep"] = cpep.embed_pose
    for name, ecfg in (
        ("qformer", replace(cfg.embridge, soft="none", lam=0.0)),
        ("embridge", cfg.embridge),
    ):
        if name not in cfg.methods:
            continue
        model, _ = train_embridge(
            ecfg,
            emg_mae.encoder,
            pose_mae.encoder,
            train.emg,
            train.pose,
            heads=heads,
            hooks=hooks.get(name, ()),
            **kw,
        )
        out.models[name] = model
        out.emg[name], out.retrieve[name] = model.embed_emg, model.queries
        out.pose[name] = model.embed_pose
    return out


def score(enc: Encoders, splits: Mapping[str, PairedWindows], cfg: PoseAlignConfig) -> list[dict]:
    """One row per (method, task): LP and, for aligned methods, ZS balanced accuracy."""
    g = cfg.gestures
    rows = []
    ev = splits["eval"]
    tasks = {
        "in_dist": (splits["probe_train_in"], g.in_dist),
        "unseen": (splits["probe_train_unseen"], g.unseen),
    }
    embedders = {**enc.emg, "pose_mae_upper_bound": None}
    for name, emb in embedders.items():
        for task, (probe, classes) in tasks.items():
            y_tr, y_ev = probe.labels(classes), ev.labels(classes)
            sel = y_ev >= 0
            if emb is None:  # the upper bound: LP on the pose-MAE's [CLS] of the same windows
                z_tr = batched(enc.pose_mae.summary, probe.pose)
                z_ev = batched(enc.pose_mae.summary, ev.pose[torch.as_tensor(sel)])
            else:
                z_tr = batched(emb, probe.emg)
                z_ev = batched(emb, ev.emg[torch.as_tensor(sel)])
            n_cls = len(classes)
            lp = class_scores(y_ev[sel], linear_probe(z_tr.numpy(), y_tr, z_ev.numpy()), n_cls)
            row = {"method": name, "task": task, "lp_bacc": lp.balanced_accuracy}
            if name in enc.retrieve:
                bank = batched(enc.pose[name], ev.pose[torch.as_tensor(sel)])
                q = batched(enc.retrieve[name], ev.emg[torch.as_tensor(sel)])
                pred = zero_shot(q, bank, y_ev[sel], k=cfg.zero_shot_k, n_classes=n_cls)
                zs = class_scores(y_ev[sel], pred, n_cls)
                row |= {"zs_bacc": zs.balanced_accuracy, "zs_f1": zs.f1.tolist()}
            rows.append(row)
    return rows


def tune_score(enc: Encoders, tune: PairedWindows, cfg: PoseAlignConfig, method: str) -> float:
    """Hyper-parameter selection metric ``tune_zs_bacc``: ``method``'s zero-shot balanced
    accuracy on the tune subset (poses of the same subset as the bank), averaged over the
    in-distribution and unseen class sets. The tune users appear in no other subset."""
    accs = []
    for classes in (cfg.gestures.in_dist, cfg.gestures.unseen):
        y = tune.labels(classes)
        sel = torch.as_tensor(y >= 0)
        bank = batched(enc.pose[method], tune.pose[sel])
        q = batched(enc.retrieve[method], tune.emg[sel])
        pred = zero_shot(q, bank, y[y >= 0], k=cfg.zero_shot_k, n_classes=len(classes))
        accs.append(class_scores(y[y >= 0], pred, len(classes)).balanced_accuracy)
    return float(np.mean(accs))


def run(recordings: Sequence[Recording], cfg: PoseAlignConfig = PoseAlignConfig()) -> list[dict]:
    """Splits, training and scores on one process: the rows of Table 2 for these data."""
    splits = gesture_splits(recordings, cfg.gestures)
    enc = train_all(splits["pretrain"], cfg)
    return score(enc, splits, cfg)


def as_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Table 2's layout: a row per method, LP/ZS per task."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["task"]): r for r in rows}
    lines = [f"{'method':24s} {'LP in':>7s} {'ZS in':>7s} {'LP unseen':>10s} {'ZS unseen':>10s}"]
    for m in methods:
        vals = []
        for task, width in (("in_dist", 7), ("unseen", 10)):
            r = cell.get((m, task), {})
            for key in ("lp_bacc", "zs_bacc"):
                v = r.get(key)
                vals.append(
                    f"{v:{width}.3f}"
                    if v is not None and np.isfinite(v)
                    else " " * (width - 1) + "-"
                )
        lines.append(f"{m:24s} {vals[0]} {vals[1]} {vals[2]} {vals[3]}")
    return "\n".join(lines)
