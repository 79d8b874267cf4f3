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
from pathlib import Path
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
    seeds: tuple[int, ...] = (0, 1, 2)  # a run trains with the first; final evaluations with all

    def __post_init__(self) -> None:
        if unknown := set(self.methods) - set(METHODS):
            raise ValueError(f"unknown method(s) {sorted(unknown)}; known: {METHODS}")
        if not self.seeds:
            raise ValueError("seeds: needs at least one")


@dataclass
class Encoders:
    """Trained EMG embedders ``(B, T, C) -> (B, d)`` (or ``(B, M, d)`` for retrieval), and the
    two MAE encoders everything started from."""

    emg_encoder: TokenEncoder
    pose_encoder: TokenEncoder
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
    pretrained: tuple[TokenEncoder, TokenEncoder] | None = None,
) -> Encoders:
    """Pre-train both MAEs (or take ``pretrained`` EMG and pose encoders, e.g. registered
    champions), then train every configured method on the paired ``train`` windows."""
    hooks = hooks or {}
    kw: dict[str, Any] = {"seed": cfg.seeds[0], "parallel": parallel}
    if pretrained is None:
        emg_mae, _ = train_mae(
            cfg.emg_mae,
            train.emg,
            rotate=True,
            hooks=hooks.get("emg_mae", ()),
            name="emg-mae",
            **kw,
        )
        pose_mae, _ = train_mae(
            cfg.pose_mae, train.pose, hooks=hooks.get("pose_mae", ()), name="pose-mae", **kw
        )
        emg_enc, pose_enc = emg_mae.encoder, pose_mae.encoder
    else:
        emg_enc, pose_enc = (e.to(train.emg.device) for e in pretrained)
        _check_fits(emg_enc, train.emg, "EMG")
        _check_fits(pose_enc, train.pose, "pose")
    out = Encoders(emg_enc, pose_enc)
    out.models |= {"emg_mae": emg_enc, "pose_mae": pose_enc}
    if "emg_mae" in cfg.methods:
        out.emg["emg_mae"] = lambda x: emg_enc.summary(x)
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
            emg_enc,
            pose_enc,
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
            emg_enc,
            pose_enc,
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


def _check_fits(enc: TokenEncoder, x: Tensor, what: str) -> None:
    """A pre-trained encoder must match the windows' channels and length."""
    if enc.channels != x.shape[2] or enc.n_tokens != x.shape[1] // enc.patch:
        raise ValueError(
            f"the pre-trained {what} encoder takes {enc.channels} channels x "
            f"{enc.n_tokens * enc.patch} samples; these windows are {x.shape[2]} x {x.shape[1]}"
        )


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
                z_tr = batched(enc.pose_encoder.summary, probe.pose)
                z_ev = batched(enc.pose_encoder.summary, ev.pose[torch.as_tensor(sel)])
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


def zero_shot_score(
    retrieve: Callable[[Tensor], Tensor],
    embed_pose: Callable[[Tensor], Tensor],
    windows: PairedWindows,
    cfg: PoseAlignConfig,
) -> float:
    """Zero-shot balanced accuracy on ``windows`` (their own poses are the bank), averaged over
    the in-distribution and unseen class sets; classes absent from ``windows`` are skipped.

    On the tune subset this is the sweeps' selection metric ``tune_zs_bacc`` (the tune users
    appear in no other subset); on ``eval`` it scores final models and registry champions.
    """
    accs = []
    for classes in (cfg.gestures.in_dist, cfg.gestures.unseen):
        y = windows.labels(classes)
        if not (y >= 0).any():
            continue
        sel = torch.as_tensor(y >= 0)
        bank = batched(embed_pose, windows.pose[sel])
        q = batched(retrieve, windows.emg[sel])
        pred = zero_shot(q, bank, y[y >= 0], k=cfg.zero_shot_k, n_classes=len(classes))
        accs.append(class_scores(y[y >= 0], pred, len(classes)).balanced_accuracy)
    return float(np.mean(accs)) if accs else float("nan")


def tune_score(enc: Encoders, tune: PairedWindows, cfg: PoseAlignConfig, method: str) -> float:
    """``tune_zs_bacc`` of one aligned ``method`` (see :func:`zero_shot_score`)."""
    return zero_shot_score(enc.retrieve[method], enc.pose[method], tune, cfg)


class Embedder(torch.nn.Module):
    """A trained CPEP / EMBridge as the registry holds it: ``forward(x (B, T, C)) -> (B, d)``
    (the linear-probe embedding), plus ``retrieve`` (what zero-shot compares with poses) and
    ``embed_pose``, so a loaded champion can be scored exactly like a fresh model."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.embed_emg(x)

    def retrieve(self, x: Tensor) -> Tensor:
        return self.model.queries(x) if hasattr(self.model, "queries") else self.model.embed_emg(x)

    def embed_pose(self, p: Tensor) -> Tensor:
        return self.model.embed_pose(p)


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


# -- saving and rebuilding trained models (what the registry stores besides the traced graph) ---

WEIGHTS, SPEC = "weights.pt", "model.json"


def save_model(kind: str, cfg: PoseAlignConfig, enc: Encoders, folder: str | Path) -> list[Path]:
    """Write ``kind`` (``mae-emg``, ``mae-pose``, ``cpep`` or ``embridge``) as its weights and
    the config that rebuilds it; :func:`load_model` reads them with ``weights_only=True`` (no
    code runs on load, unlike a pickled module)."""
    import json

    from emgcore.config import to_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    e, p = enc.emg_encoder, enc.pose_encoder
    module = {"mae-emg": e, "mae-pose": p}.get(kind) or enc.models[kind]
    spec = {
        "kind": kind,
        "config": to_dict(cfg),
        "emg": [e.channels, e.n_tokens * e.patch],
        "pose": [p.channels, p.n_tokens * p.patch],
        "centroids": list(getattr(module, "centroids", torch.zeros(0, 0)).shape),
    }
    (folder / SPEC).write_text(json.dumps(spec))
    torch.save(module.state_dict(), folder / WEIGHTS)
    return [folder / SPEC, folder / WEIGHTS]


def load_model(folder: str | Path) -> torch.nn.Module:
    """Rebuild what :func:`save_model` wrote: a ``TokenEncoder`` for the MAEs, an
    :class:`Embedder` for CPEP / EMBridge (in eval mode, on the CPU)."""
    import json

    from emgcore.config import build
    from emgcore.cpep import CPEP
    from emgcore.embridge import EMBridge
    from emgcore.mae import MAE

    folder = Path(folder)
    spec = json.loads((folder / SPEC).read_text())
    cfg = build(PoseAlignConfig, spec["config"], source=folder / SPEC)
    emg = MAE(cfg.emg_mae, *spec["emg"]).encoder
    pose = MAE(cfg.pose_mae, *spec["pose"]).encoder
    kind = spec["kind"]
    module: torch.nn.Module
    if kind == "mae-emg":
        module = emg
    elif kind == "mae-pose":
        module = pose
    elif kind == "cpep":
        module = CPEP(cfg.cpep, emg, pose)
    elif kind == "embridge":
        module = EMBridge(cfg.embridge, emg, pose, cfg.emg_mae.heads)
    else:
        raise ValueError(f"{folder / SPEC}: unknown model kind {kind!r}")
    if hasattr(module, "centroids"):
        module.centroids = torch.zeros(*spec["centroids"])
    module.load_state_dict(torch.load(folder / WEIGHTS, weights_only=True))
    module.eval()
    return Embedder(module).eval() if kind in ("cpep", "embridge") else module
