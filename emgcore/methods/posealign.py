"""Pose-aligned EMG representations end to end: the evaluation of CPEP and EMBridge (Sec. 3).

``run`` pre-trains the EMG- and pose-MAEs on the pre-training windows, trains the methods that
build on them (PoseT, CPEP, the plain Q-Former, EMBridge and any ablation configured), and scores
every EMG encoder on the gesture tasks of Table 1:

* linear probe (LP), in-distribution: fit on ``probe_train_in``, score on ``eval`` in-dist.;
* LP unseen: fit on ``probe_train_unseen``, score on ``eval`` unseen;
* zero-shot (ZS), for the aligned methods: each ``eval`` EMG window retrieves its ``k = 10``
  nearest poses among the pose embeddings of the ``eval`` windows of the same class set and
  votes their labels (the papers' R_j over P_test, ``zs_bacc``). That bank holds the query's own
  pose and the other windows of its own recording (transductive); ``zs_excl_bacc`` scores the
  same retrieval with the query's own recording left out of the bank, side by side;
* the pose-MAE's LP as the upper bound.

The ablation and baseline rows of CPEP Table 2 and EMBridge Tables 2-3 are :data:`ABLATIONS`,
chosen by ``PoseAlignConfig.ablation``; a method's hyper-parameter search never varies them
(:data:`ABLATION_KEYS`) nor the protocol's ``k`` (:data:`PROTOCOL_KEYS`). Balanced accuracy
throughout. The emgcore side only: orchestration runs it per trial.

As sweep methods (the end of this module): ``mae``, ``cpep``, ``embridge``.

A trial trains, on the pre-training windows, the MAEs and the method its sweep selects (``mae``
sweeps judge the MAEs by the CPEP they enable, as CPEP Fig. 3 does), then reports the selection
metric ``tune_zs_bacc``: zero-shot balanced accuracy on the tune subset. The final run retrains
the winner once per seed (CPEP / EMBridge on exactly the MAE versions the sweep pinned), scores
zero-shot on the evaluation subset (``eval_zs_bacc``, mean +- std over seeds; the same with each
query's own recording left out of the pose bank, ``eval_zs_excl_bacc``; also
``eval_lp_in_dist``, ``eval_zs_unseen``, ...), and registers on the tune users (the selection
split), never the evaluation users; the trivial baseline is chance:

* ``cpep`` / ``embridge``: the aligned EMG embedder (:class:`Embedder`); the champion
  is loaded and scored again on the same tune users, like for like. They start from the
  registered ``mae-emg`` / ``mae-pose`` champions (``starts_from``).
* ``mae``: the two encoders, as ``mae-emg`` and ``mae-pose``, judged by the tune score of the CPEP
  they enable; a champion selected on another split or data (its recorded ``selection_split``)
  cannot be compared and keeps its alias.

The EMG models' versions also carry their whole inference path from raw EMG
(``inference.pt``, README "Using a champion on new data"; :func:`emgcore.methods.load_inference`):
a ``cpep`` / ``embridge`` version is a :class:`GestureRecognizer` (zero-shot gesture labels
against a pose bank, embeddings), ``mae-emg`` an :class:`EmgEncoder` (embeddings); ``mae-pose``,
a pose encoder, stays weights only.

Each trial is one unit: there is no natural point to checkpoint inside it, and a restarted
worker retrains it from its seed, which reproduces it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from emgcore.config import build, flatten, override, to_dict
from emgcore.distributed import DataParallel
from emgcore.errors import ShapeError
from emgcore.eval.probe import class_scores, linear_probe, zero_shot
from emgcore.features import window_starts
from emgcore.gestures import GestureConfig, PairedWindows, gesture_splits
from emgcore.methods.base import (
    INFERENCE_FILE,
    Export,
    Hooks,
    Method,
    Registration,
    Score,
    Trial,
    TrialSetup,
    UnitResult,
    check_input,
    save_inference,
    save_no_inference,
)
from emgcore.models.cpep import CPEPConfig, train_cpep
from emgcore.models.embridge import EMBridgeConfig, train_embridge
from emgcore.models.mae import MAEConfig, TokenEncoder, train_mae, train_poset
from emgcore.recording import ChannelLayout, Recording, digest, require_samples
from emgcore.streaming import loader_workers, take
from emgcore.training import EpochHook, batched
from emgcore.windows import RecordingCache

# the EMG encoders the protocol trains and scores (Table 2's rows), by name
ENCODERS = ("emg_mae", "poset", "cpep", "qformer", "embridge")
ALIGNED = ("cpep", "qformer", "embridge")

# The papers' ablation and baseline rows as named changes of the published methods (CPEP Table 2;
# EMBridge Tables 2 and 3): ``PoseAlignConfig.ablation`` selects one, and the search spaces'
# ``ablations`` studies run them side by side (``sweep.py cpep --study ablations`` is Table 2).
# name -> (the method it changes, dotted overrides). EMBridge Table 3's "w/o Q-Former" is CPEP +
# CASCLe, a CPEP row; "w/o CASCLe" is InfoNCE alone (``soft = none``).
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "none": ("", {}),  # the method as published
    "cpep_frozen": ("cpep", {"cpep.freeze_emg": True}),  # CPEP-E_x Frozen
    "cpep_rand_init": ("cpep", {"cpep.emg_init": "random"}),  # CPEP-E_x RandInit
    "cpep_avg_pool": ("cpep", {"cpep.pool": "mean"}),  # CPEP-AvgPool
    "cpep_ls": ("cpep", {"cpep.label_smoothing": 0.1}),  # CPEP-LS (EMBridge Table 2)
    "cpep_cascle": ("cpep", {"cpep.cascle_alpha": 1.0}),  # EMBridge w/o Q-Former (Table 3)
    "embridge_no_mprl": ("embridge", {"embridge.lam": 0.0}),  # EMBridge w/o MPRL
    "embridge_no_cascle": ("embridge", {"embridge.soft": "none"}),  # EMBridge w/o CASCLe
    "embridge_ls": ("embridge", {"embridge.soft": "label_smoothing"}),  # Table 3: LS
    "embridge_softclip": ("embridge", {"embridge.soft": "softclip"}),  # Table 3: SoftCLIP
    "qformer": ("embridge", {"embridge.soft": "none", "embridge.lam": 0.0}),  # Table 2
    "qformer_ls": ("embridge", {"embridge.soft": "label_smoothing", "embridge.lam": 0.0}),
}
# Keys that switch the published method to an ablation or a baseline: a method's search varies
# none of them (its winner would be a Table 2 row, not the method); a study may.
ABLATION_KEYS = frozenset(
    {
        "ablation",
        "cpep.pool",
        "cpep.freeze_emg",
        "cpep.emg_init",
        "cpep.label_smoothing",
        "cpep.cascle_alpha",
        "embridge.soft",
        "embridge.label_smoothing",
        "embridge.softclip_tau",
    }
)
# Loss weights the method tunes above zero (EMBridge Fig. 4); zero removes the loss: an ablation.
ABLATION_ZERO = frozenset({"embridge.lam", "embridge.alpha"})
# The evaluation protocol both papers fix (k = 10 for zero-shot): searched, it would be tuned on
# the evaluation's own design. A study may vary it (EMBridge Fig. 4f).
PROTOCOL_KEYS = frozenset({"zero_shot_k"})


@dataclass(frozen=True)
class PoseAlignConfig:
    """Everything one pose-alignment run needs; defaults are the papers'."""

    gestures: GestureConfig = field(default_factory=GestureConfig)
    emg_mae: MAEConfig = field(default_factory=lambda: MAEConfig(patch=50))
    pose_mae: MAEConfig = field(default_factory=lambda: MAEConfig(patch=200))
    poset: MAEConfig = field(default_factory=lambda: MAEConfig(patch=50))
    cpep: CPEPConfig = field(default_factory=CPEPConfig)
    embridge: EMBridgeConfig = field(default_factory=EMBridgeConfig)
    methods: tuple[str, ...] = ENCODERS  # which EMG encoders to train and score
    zero_shot_k: int = 10  # k of the zero-shot vote (CPEP App. B, EMBridge Sec. 3.1)
    seeds: tuple[int, ...] = (0, 1, 2)  # a run trains with the first; final evaluations with all
    # one of ABLATIONS: a Table 2 / Table 3 row instead of the published method (see resolved())
    ablation: str = "none"
    # r for both MAEs at once (CPEP Fig. 3 varies one ratio for EMG and pose); None: each MAE's
    # own ``mask_ratio`` (both 0.5 by default, the papers')
    mask_ratio: float | None = None

    def __post_init__(self) -> None:
        if unknown := set(self.methods) - set(ENCODERS):
            raise ValueError(f"unknown method(s) {sorted(unknown)}; known: {ENCODERS}")
        if not self.seeds:
            raise ValueError("seeds: needs at least one")
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation: {self.ablation!r} is not one of {sorted(ABLATIONS)}")
        if self.mask_ratio is not None:
            if not 0.0 <= self.mask_ratio < 1.0:
                raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
            # an MAE's own ratio set as well would be overwritten without a word
            default = MAEConfig().mask_ratio
            for name in ("emg_mae", "pose_mae"):
                own = getattr(self, name).mask_ratio
                if own not in (default, self.mask_ratio):
                    raise ValueError(
                        f"mask_ratio {self.mask_ratio} sets both MAEs' ratio, but "
                        f"{name}.mask_ratio is {own}; set one or the other"
                    )
        if self.ablation != "none":
            # a row changes the published method in one place: any other design switch set
            # too would make a combination no table has, and the row would overwrite its own
            row, published = ABLATIONS[self.ablation][1], PoseAlignConfig()
            for key in sorted(ABLATION_KEYS - {"ablation"}):
                value, allowed = _get(self, key), [_get(published, key)]
                if key in row:
                    allowed.append(row[key])
                if value not in allowed:
                    raise ValueError(
                        f"ablation {self.ablation!r} sets {sorted(row)}, but {key} is {value!r} "
                        f"(allowed: {allowed}); set one or the other"
                    )

    def resolved(self) -> PoseAlignConfig:
        """This config as the methods train it: the ``ablation`` row's overrides and the shared
        ``mask_ratio`` written into their sections. Idempotent; :func:`train_all` and
        :func:`load_model` call it."""
        changes = dict(ABLATIONS[self.ablation][1])
        if self.mask_ratio is not None:
            changes |= {f"{m}.mask_ratio": self.mask_ratio for m in ("emg_mae", "pose_mae")}
        return override(self, changes) if changes else self

    def inert_fields(self) -> dict[str, tuple[str, ...]]:
        """Fields the methods do not read given the others (``emgcore.config.effective``): the
        ablation row's keys and, with ``mask_ratio`` set, the MAEs' own ratios (overwritten)."""
        out = {k: ("ablation",) for k in ABLATIONS[self.ablation][1]}
        if self.mask_ratio is not None:
            out |= {f"{m}.mask_ratio": ("mask_ratio",) for m in ("emg_mae", "pose_mae")}
        return out


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


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
    cfg = cfg.resolved()
    hooks = hooks or {}
    kw: dict[str, Any] = {"seed": cfg.seeds[0], "parallel": parallel}
    ring = {"ring": train.ring}  # channel rotation rolls only the electrodes on the ring
    if pretrained is None:
        emg_mae, _ = train_mae(
            cfg.emg_mae,
            train.emg,
            rotate=True,
            **ring,
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
            cfg.poset,
            train.emg,
            train.pose,
            train.valid,
            hooks=hooks.get("poset", ()),
            **ring,
            **kw,
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
            **ring,
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
            **ring,
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
    """One row per (method, task): ``lp_bacc`` and, for aligned methods, zero-shot balanced
    accuracy and per-class F1 with the papers' bank (``zs_bacc``, ``zs_f1``: every eval pose of
    the class set) and with the query's own recording left out of it (``zs_excl_bacc``,
    ``zs_excl_f1``)."""
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
                z_ev = batched(enc.pose_encoder.summary, take(ev.pose, sel))
            else:
                z_tr = batched(emb, probe.emg)
                z_ev = batched(emb, take(ev.emg, sel))
            n_cls = len(classes)
            lp = class_scores(y_ev[sel], linear_probe(z_tr.numpy(), y_tr, z_ev.numpy()), n_cls)
            row = {"method": name, "task": task, "lp_bacc": lp.balanced_accuracy}
            if name in enc.retrieve:
                bank = batched(enc.pose[name], take(ev.pose, sel))
                q = batched(enc.retrieve[name], take(ev.emg, sel))
                pred = zero_shot(q, bank, y_ev[sel], k=cfg.zero_shot_k, n_classes=n_cls)
                zs = class_scores(y_ev[sel], pred, n_cls)
                own = ev.recording[sel]
                pred_x = zero_shot(
                    q,
                    bank,
                    y_ev[sel],
                    k=cfg.zero_shot_k,
                    n_classes=n_cls,
                    query_groups=own,  # the query's own recording leaves the bank
                    bank_groups=own,
                )
                zx = class_scores(y_ev[sel], pred_x, n_cls)
                row |= {"zs_bacc": zs.balanced_accuracy, "zs_f1": zs.f1.tolist()}
                row |= {"zs_excl_bacc": zx.balanced_accuracy, "zs_excl_f1": zx.f1.tolist()}
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
        sel = y >= 0
        bank = batched(embed_pose, take(windows.pose, sel))
        q = batched(retrieve, take(windows.emg, sel))
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


TABLE_LEGEND = (
    "ZS: zero-shot, bank = every eval pose of the class set (the papers' protocol, holding the\n"
    "query's own pose and recording); ZS-x: the same with the query's own recording left out."
)


def as_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Table 2's layout: a row per method; LP, ZS and ZS-x (own recording excluded) per task;
    then :data:`TABLE_LEGEND`."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["task"]): r for r in rows}
    cols = [
        ("in_dist", "lp_bacc", "LP in"),
        ("in_dist", "zs_bacc", "ZS in"),
        ("in_dist", "zs_excl_bacc", "ZS-x in"),
        ("unseen", "lp_bacc", "LP unseen"),
        ("unseen", "zs_bacc", "ZS unseen"),
        ("unseen", "zs_excl_bacc", "ZS-x unseen"),
    ]
    lines = [f"{'method':24s} " + " ".join(f"{name:>{len(name) + 2}s}" for *_, name in cols)]
    for m in methods:
        vals = []
        for task, key, name in cols:
            v, width = cell.get((m, task), {}).get(key), len(name) + 2
            ok = v is not None and np.isfinite(v)
            vals.append(f"{v:{width}.3f}" if ok else " " * (width - 1) + "-")
        lines.append(f"{m:24s} " + " ".join(vals))
    return "\n".join([*lines, "", TABLE_LEGEND])


# -- saving and rebuilding trained models (what the registry stores besides the traced graph) ---

WEIGHTS, SPEC = "weights.pt", "model.json"
# why the mae-pose version has no inference path (its no_inference.txt; EmgEncoder's docstring)
POSE_ONLY = (
    "a mae-pose version takes pose windows, not raw EMG, and is weights only; "
    "emgcore.methods.posealign.load_model(folder) rebuilds its encoder"
)


def save_model(kind: str, cfg: PoseAlignConfig, enc: Encoders, folder: str | Path) -> list[Path]:
    """Write ``kind`` (``mae-emg``, ``mae-pose``, ``cpep`` or ``embridge``) as its weights and
    the config that rebuilds it; :func:`load_model` reads them with ``weights_only=True`` (no
    code runs on load, unlike a pickled module)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec, module = _saved(kind, cfg, enc)
    (folder / SPEC).write_text(json.dumps(spec))
    torch.save(module.state_dict(), folder / WEIGHTS)
    return [folder / SPEC, folder / WEIGHTS]


def load_model(folder: str | Path) -> torch.nn.Module:
    """Rebuild what :func:`save_model` wrote: a ``TokenEncoder`` for the MAEs, an
    :class:`Embedder` for CPEP / EMBridge (in eval mode, on the CPU)."""
    folder = Path(folder)
    spec = json.loads((folder / SPEC).read_text())
    module = _rebuilt(spec, folder / SPEC)
    module.load_state_dict(torch.load(folder / WEIGHTS, weights_only=True))
    module.eval()
    return Embedder(module).eval() if spec["kind"] in ("cpep", "embridge") else module


def _saved(kind: str, cfg: PoseAlignConfig, enc: Encoders) -> tuple[dict, torch.nn.Module]:
    """``kind``'s module in ``enc`` and the JSON-able spec :func:`_rebuilt` rebuilds it from:
    what :func:`save_model` and the inference files (:class:`GestureRecognizer`,
    :class:`EmgEncoder`) both store."""
    e, p = enc.emg_encoder, enc.pose_encoder
    module = {"mae-emg": e, "mae-pose": p}.get(kind) or enc.models[kind]
    spec = {
        "kind": kind,
        "config": to_dict(cfg.resolved()),  # what it was trained with
        "emg": [e.channels, e.n_tokens * e.patch],
        "pose": [p.channels, p.n_tokens * p.patch],
        "centroids": list(getattr(module, "centroids", torch.zeros(0, 0)).shape),
    }
    return spec, module


def _rebuilt(spec: Mapping[str, Any], source: str | Path) -> torch.nn.Module:
    """The module ``spec`` (:func:`_saved`) describes, untrained, with the shapes its state dict
    needs. Raises ``ValueError`` naming ``source`` for an unknown kind."""
    from emgcore.models.cpep import CPEP
    from emgcore.models.embridge import EMBridge
    from emgcore.models.mae import MAE

    cfg = build(PoseAlignConfig, spec["config"], source=source).resolved()
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
        raise ValueError(f"{source}: unknown model kind {kind!r}")
    if hasattr(module, "centroids"):
        module.centroids = torch.zeros(*spec["centroids"])
    return module


# -- raw EMG in: a registered version's whole inference path (README, "Using a champion") -------

METHOD_OF = {"mae-emg": "mae", "cpep": "cpep", "embridge": "embridge"}  # exported kind -> method


class _RawEmg:
    """What the pose family's inferences share: raw EMG ``(T, C)`` as recorded in, the windows
    the model was trained and scored on out (:meth:`windows`).

    ``spec``, ``net``: a trained module and the spec that rebuilds it (:func:`_saved`, as
    :func:`save_model` stores them); ``fs``, ``layout``: the training recordings' rate and
    electrodes. None of the EMG steps of :func:`emgcore.gestures.windows` has fitted state (the
    band-pass and notch are per recording, the normalisation per window); the statistics the
    MAE fitted on the pre-training windows are buffers of its encoder (``Tokenizer.mean`` /
    ``std``), so they travel in ``net``'s state dict.
    """

    def __init__(
        self, spec: Mapping[str, Any], net: torch.nn.Module, fs: float, layout: ChannelLayout
    ):
        self.spec = dict(spec)
        self.method = METHOD_OF[spec["kind"]]
        self.config = build(PoseAlignConfig, spec["config"], source=INFERENCE_FILE).resolved()
        self.fs, self.layout, self.net = float(fs), layout, net.eval()

    @property
    def n_channels(self) -> int:
        return self.layout.n_channels

    def _samples(self, fs: float) -> int:
        return round(self.config.gestures.window_s * fs)  # as gestures.windows rounds it

    def windows(self, emg: Any, fs: float) -> Tensor:
        """``emg (T, C)`` as recorded, at ``fs`` Hz, as the model's input windows ``(N, L, C)``
        float32 (what the logged graph takes), the steps of :func:`emgcore.gestures.windows`
        (CPEP App. B, EMBridge A.6): band-pass and notch over the whole recording
        (``GestureConfig.pipeline``), ``L = window_s * fs`` samples back to back from the first,
        each window normalised per channel (instance norm). Window ``n`` ends at
        ``window_end(T, fs)[n]``; a tail shorter than one window is left out.

        An emg2pose recording (one stage) is one run and is cut exactly as training cut it; a
        NinaPro recording was cut inside each repetition of each movement, which raw EMG
        without labels cannot be. Raises :class:`~emgcore.errors.ShapeError` (field ``emg``) for
        another channel count or fewer samples than one window,
        :class:`~emgcore.errors.InvalidValueError` (field ``fs``) for another rate.
        """
        x = check_input(emg, fs, self)
        rec = Recording(x, self.fs, self.layout, subject="-", session="-", source="predict")
        n, g = self._samples(self.fs), self.config.gestures
        require_samples(rec, n, f"one {g.window_s:g} s window")
        pipe = g.pipeline()
        # float32 after filtering, as the training recordings were cached (RecordingCache)
        r = np.asarray(pipe.apply(rec).emg, np.float32)
        starts = window_starts(len(r), n, n)
        return torch.from_numpy(pipe.apply_windows(r[starts[:, None] + np.arange(n)]))

    def window_end(self, n_samples: int, fs: float) -> np.ndarray:
        """The last sample ``(N,)`` of each window of a recording of ``n_samples`` at ``fs``."""
        n = self._samples(fs)
        return window_starts(n_samples, n, n) + n - 1

    def _payload(self, **extra: Any) -> dict[str, Any]:
        spec = self.spec | {"fs": self.fs, "layout": self.layout.to_dict()}
        return {"spec": json.dumps(spec | extra), "state_dict": self.net.state_dict()}

    @staticmethod
    def _loaded(payload: Mapping[str, Any]) -> tuple[dict[str, Any], torch.nn.Module, Any]:
        """The spec, the trained module and the layout an ``inference.pt`` holds."""
        spec = json.loads(payload["spec"])
        net = _rebuilt(spec, INFERENCE_FILE)
        net.load_state_dict(payload["state_dict"])
        return spec, net, ChannelLayout.from_dict(spec["layout"])


class GestureRecognizer(_RawEmg):
    """A registered CPEP / EMBridge version from raw EMG to gesture labels: what
    :func:`emgcore.methods.load_inference` returns for a ``cpep`` or ``embridge`` version.

    ``predict(emg (T, C), fs, bank=None) -> labels (N,)``, one per window (:meth:`windows`):
    zero-shot retrieval (CPEP Sec. 2.4, EMBridge Sec. 3.1): each window's retrieval embedding
    (CPEP's ``u``, EMBridge's ``M`` queries scored by the best one) takes the
    ``config.zero_shot_k`` most cosine-similar pose embeddings of ``bank`` and votes their labels
    (:func:`emgcore.eval.probe.zero_shot`); a tied vote goes to the smallest label in sorted
    order, as scikit-learn's ``KNeighborsClassifier`` decides.

    ``bank``: ``(poses (M, L, J), labels (M,))``: pose windows of ``L`` samples at ``fs`` of the
    ``joints``, in the training recordings' unit (``pose_unit``), and their labels, of any kind
    (class ids, names): the output is made of them. The papers score each class set with the
    evaluation users' own poses as the bank (``tests/methods/test_posealign_inference.py``
    reproduces the recorded score that way). Default: the bank registered with the version,
    labelled with the class names ``classes`` (``bank_source`` says whose poses).

    ``embed(emg, fs) -> (N, d)``: the linear-probe embedding of each window, the logged graph's
    output (:class:`Embedder`; CPEP: the unit vector ``u`` retrieval compares too; EMBridge: the
    mean of its normalised queries). ``emg`` is as recorded, in the training recordings' unit,
    at their rate ``fs`` (another rate is refused: resample first). Raises
    :class:`~emgcore.errors.ShapeError` (field ``bank``) for a bank of other pose windows.
    """

    def __init__(
        self,
        spec: Mapping[str, Any],
        net: torch.nn.Module,
        fs: float,
        layout: ChannelLayout,
        joints: Sequence[str],
        pose_unit: str,
        bank: Tensor,
        bank_labels: Tensor,
        bank_source: str,
    ):
        super().__init__(spec, net, fs, layout)
        self.model = Embedder(self.net).eval()
        self.joints, self.pose_unit = tuple(joints), pose_unit
        self.bank, self.bank_labels, self.bank_source = bank, bank_labels, bank_source
        g = self.config.gestures
        # the class sets the protocol scores apart (Table 1); the default bank holds both
        self.class_sets = {"in_dist": tuple(g.in_dist), "unseen": tuple(g.unseen)}
        self.classes = self.class_sets["in_dist"] + self.class_sets["unseen"]  # ids: positions

    def embed(self, emg: Any, fs: float) -> np.ndarray:
        with torch.no_grad():
            return batched(self.model, self.windows(emg, fs)).numpy()

    def predict(self, emg: Any, fs: float, bank: tuple[Any, Any] | None = None) -> np.ndarray:
        x = self.windows(emg, fs)
        emb, labels = self._bank(bank)
        # labels of any kind as sorted ids: the smallest id wins a tie
        names, ids = np.unique(labels, return_inverse=True)
        with torch.no_grad():
            q = batched(self.model.retrieve, x)
        return names[zero_shot(q, emb, ids, k=self.config.zero_shot_k, n_classes=len(names))]

    def _bank(self, bank: tuple[Any, Any] | None) -> tuple[Tensor, np.ndarray]:
        """Pose embeddings ``(M, d)`` and labels ``(M,)`` of ``bank`` (None: the default)."""
        if bank is None:
            return self.bank, np.asarray(self.classes)[self.bank_labels.numpy()]
        poses, labels = bank
        p = torch.as_tensor(np.asarray(poses, dtype=np.float32))
        y = np.asarray(labels).reshape(-1)
        want = (self._samples(self.fs), self.spec["pose"][0])  # (L, J) of the pose encoder
        if p.ndim != 3 or tuple(p.shape[1:]) != want or len(p) == 0 or len(y) != len(p):
            raise ShapeError(
                f"{self.method} takes a bank (poses (M, {want[0]}, {want[1]}), labels (M,)) "
                f"with M >= 1, got poses {tuple(p.shape)} and {len(y)} labels",
                field="bank",
            )
        with torch.no_grad():
            return batched(self.model.embed_pose, p), y

    def save(self, folder: Path) -> list[Path]:
        payload = self._payload(
            joints=list(self.joints), pose_unit=self.pose_unit, bank_source=self.bank_source
        )
        payload["bank"] = {"embeddings": self.bank, "labels": self.bank_labels}
        return [save_inference(self.method, payload, folder)]

    @classmethod
    def load(cls, payload: Mapping[str, Any]) -> GestureRecognizer:
        spec, net, layout = cls._loaded(payload)
        bank = payload["bank"]
        return cls(
            spec,
            net,
            spec["fs"],
            layout,
            spec["joints"],
            spec["pose_unit"],
            bank["embeddings"],
            bank["labels"],
            spec["bank_source"],
        )


class EmgEncoder(_RawEmg):
    """A registered ``mae-emg`` version (the EMG-MAE's encoder ``E_x``, CPEP Sec. 2.2, EMBridge
    Sec. 2.1) from raw EMG to window embeddings: what :func:`emgcore.methods.load_inference`
    returns for it.

    ``embed(emg (T, C), fs) -> (N, d)``: each window's (:meth:`windows`) [CLS] token after the
    final LayerNorm (``TokenEncoder.summary``), the embedding Table 2's ``emg_mae`` row probes;
    ``predict`` is ``embed``. The ``mae-pose`` version takes pose windows, not EMG, and stays
    weights only: :func:`load_model` on its files, or its logged graph.
    """

    def embed(self, emg: Any, fs: float) -> np.ndarray:
        with torch.no_grad():
            return batched(self.net.summary, self.windows(emg, fs)).numpy()

    def predict(self, emg: Any, fs: float) -> np.ndarray:
        return self.embed(emg, fs)

    def save(self, folder: Path) -> list[Path]:
        return [save_inference(self.method, self._payload(), folder)]

    @classmethod
    def load(cls, payload: Mapping[str, Any]) -> EmgEncoder:
        spec, net, layout = cls._loaded(payload)
        return cls(spec, net, spec["fs"], layout)


# -- as a sweep method ----------------------------------------------------------------------------


def cache_plan(cfg: PoseAlignConfig, recordings: Sequence[Any]) -> list[tuple[Any, Any]]:
    """What the gesture splits read from the preprocessing cache (``Method.cache_plan``): every
    recording with joint angles, filtered by the gestures' pipeline (the few in no subset, such
    as training users' held-out stages, are filtered too: seconds, against a second copy of
    the split rules)."""
    pipe = cfg.gestures.pipeline()
    return [(r, pipe) for r in recordings if r.kinematics is not None]


# the GestureConfig fields that decide which users and sessions land in which subset
SPLIT_FIELDS = (
    "benchmark", "in_dist", "unseen", "extra_held_out", "tune_users", "val_users", "test_users",
    "probe_fraction", "split_seed",
)  # fmt: skip
MODELS = ("emg_mae", "pose_mae")  # what every trial trains before the aligned method


class PoseAlignTrial(Trial):
    """``target``: the aligned method the trial trains and scores (``mae`` sweeps: ``cpep``);
    ``export_maes``: register the two encoders (``mae``) instead of the aligned embedder."""

    def __init__(
        self,
        cfg: PoseAlignConfig,
        recordings: Sequence[Any],
        setup: TrialSetup,
        target: str,
        export_maes: bool,
    ):
        self.config = replace(cfg, methods=(target,))
        self.setup, self.target, self.export_maes = setup, target, export_maes
        cache = RecordingCache(setup.cache)  # trials share the filtered recordings
        self.splits = gesture_splits(recordings, self.config.gestures, cache)
        pre = self.splits["pretrain"]
        # training reads the pre-training windows on the accelerator (streamed ones are read
        # onto it batch by batch, by loader processes)
        workers = loader_workers(self.config.gestures.loader_workers, setup.device)
        workers = workers if pre.streamed else 0  # tensors in memory need no loader
        if setup.device != "cpu" or workers:
            self.splits = {**self.splits, "pretrain": pre.to(setup.device, workers)}
        self.tags = {"emg.windows": pre.storage, "emg.loader_workers": str(workers)}
        self.units = [setup.mode]
        self.first: Encoders | None = None  # final: the first seed's models, what registers
        # what a registered version's inference needs of the recordings (one rate and layout:
        # gestures.windows cuts one window length and rotates one ring)
        rec, g = recordings[0], self.config.gestures
        self.fs, self.layout = float(rec.fs), rec.layout
        self.joints = tuple(g.joints or rec.joint_names)
        self.pose_unit = (
            "standardised per recording" if g.pose_norm == "recording" else rec.kinematics_unit
        )

    def _train(self, seed: int, hooks: Hooks) -> Encoders:
        # the final model is built on exactly the MAE versions the search trials started from
        # (the sweep pins them; none: the trial pre-trains its own, as they did)
        pre = self.setup.pretrained
        enc = train_all(
            self.splits["pretrain"],
            replace(self.config, seeds=(seed,)),
            hooks={name: hooks(name) for name in (*MODELS, self.target)},
            parallel=self.setup.parallel,
            pretrained=(pre["emg"], pre["pose"]) if pre else None,
        )
        for m in enc.models.values():  # scoring batches come from CPU tensors
            m.cpu()
        return enc

    def run(self, unit: str, hooks: Hooks) -> UnitResult:
        t, cfg = self.target, self.config
        if unit == "cv":
            enc = self._train(cfg.seeds[0], hooks)
            return UnitResult(
                {
                    "tune_zs_bacc": zero_shot_score(
                        enc.retrieve[t], enc.pose[t], self.splits["tune"], cfg
                    )
                }
            )
        scores, excl, per_task, tune = [], [], [], []
        for seed in cfg.seeds:
            enc = self._train(seed, hooks)
            # the selection split's score too, per seed: the nightly gates both splits
            tune.append(zero_shot_score(enc.retrieve[t], enc.pose[t], self.splits["tune"], cfg))
            # linear probe and zero-shot per class set: the rows of Table 2 (and a study's
            # curves); their zero-shot mean is zero_shot_score on the eval subset, which holds
            # both sets. ``zs_excl``: zero-shot with the query's own recording left out of the
            # pose bank, beside the papers' transductive protocol
            rows = [r for r in score(enc, self.splits, cfg) if r["method"] == t]
            per_task.append(
                {
                    f"eval_{k}_{r['task']}": r[f"{k}_bacc"]
                    for r in rows
                    for k in ("lp", "zs", "zs_excl")
                    if f"{k}_bacc" in r
                }
            )
            scores.append(float(np.mean([r["zs_bacc"] for r in rows])))
            if "zs_excl_bacc" in rows[0]:
                excl.append(float(np.mean([r["zs_excl_bacc"] for r in rows])))
            self.first = self.first or enc
        out: dict[str, Any] = {
            "eval_zs_bacc": float(np.mean(scores)),
            "eval_zs_bacc_std": float(np.std(scores)),
            "scores": ",".join(f"{s:.6f}" for s in scores),
            "first_seed_zs_bacc": scores[0],
            "seeds": {"eval_zs_bacc": scores, "tune_zs_bacc": tune},
        }
        if excl:
            out |= {
                "eval_zs_excl_bacc": float(np.mean(excl)),
                "eval_zs_excl_bacc_std": float(np.std(excl)),
            }
        for k in per_task[0]:
            values = [p[k] for p in per_task]
            out |= {k: float(np.mean(values)), f"{k}_std": float(np.std(values))}
        return UnitResult(out)

    def summary(self, values: Mapping[str, Any]) -> dict[str, Any]:
        # the per-seed lists are summarised by seeds(), as text, not logged as metrics
        return {k: v for k, v in values.get(self.setup.mode, {}).items() if k != "seeds"}

    def seeds(self, values: Mapping[str, Any]) -> dict[str, list[float]]:
        return dict(values.get("final", {}).get("seeds", {}))

    def report(self, values: Mapping[str, Any], folder: Path) -> Sequence[Path]:
        from emgcore.eval.posereport import evaluate, write

        assert self.first is not None
        write(evaluate(self.first, self.splits, self.config, draws=3), folder)
        return sorted(folder.iterdir())

    def registration(self, values: Mapping[str, Any]) -> Registration:
        """The first seed's model(s). ``champion`` moves only on a better zero-shot on the tune
        users (the selection split), never to a model at or below chance."""
        enc, cfg, t = self.first, self.config, self.target
        assert enc is not None
        tune, ev = self.splits["tune"], self.splits["eval"]
        where = f"of {self.setup.data} ({self.setup.fingerprint}, split {split_id(cfg)})"
        selection = Score(
            "tune_zs_bacc",
            zero_shot_score(enc.retrieve[t], enc.pose[t], tune, cfg),
            f"tune users {_users(tune)} {where}",
            chance(tune, cfg),
        )
        test = Score(
            "eval_zs_bacc",
            values["final"]["first_seed_zs_bacc"],
            f"eval users {_users(ev)} {where}",
            chance(ev, cfg),
        )

        def files(kind: str, inference: _RawEmg | str) -> Any:
            # weights + config, rebuilt on load (re-scoring, load_pretrained); beside them
            # inference.pt, the whole path from raw EMG (load_inference), or why there is none
            def write(folder: Path) -> list[Path]:
                out = save_model(kind, cfg, enc, folder)
                if isinstance(inference, str):
                    return [*out, save_no_inference(inference, folder)]
                return out + inference.save(folder)

            return write

        if self.export_maes:  # encoders alone cannot be scored: the recorded CPEP score
            emg = EmgEncoder(*_saved("mae-emg", cfg, enc), self.fs, self.layout)
            exports = [
                Export("-emg", enc.emg_encoder, ev.emg[:4].numpy(), files("mae-emg", emg)),
                Export(
                    "-pose", enc.pose_encoder, ev.pose[:4].numpy(), files("mae-pose", POSE_ONLY)
                ),
            ]
        else:
            exports = [
                Export(
                    "",
                    Embedder(enc.models[t]).eval(),
                    ev.emg[:4].numpy(),
                    files(t, self._recognizer(enc, t)),
                    rescore=lambda champ: zero_shot_score(
                        champ.retrieve, champ.embed_pose, tune, cfg
                    ),
                    rescored_on="the same tune users",
                    load=load_model,
                )
            ]
        return Registration(selection, test, exports, {"split": split_id(cfg)})

    def _recognizer(self, enc: Encoders, target: str) -> GestureRecognizer:
        """``target``'s :class:`GestureRecognizer` with its default bank.

        The default bank: the pose windows of the probe-training subsets (Table 1's
        ``probe_train_in`` for the in-distribution classes, ``probe_train_unseen`` for the
        unseen ones), labelled by class. They are the labelled windows the protocol sets aside
        for fitting classifiers (the linear probe learns from them), hold both class sets, and
        come from neither the evaluation users (the recorded test score never saw them) nor the
        tune users (the selection split). Stored as pose embeddings ``(M, d)``: the frozen pose
        encoder gives the same, and a few hundred bytes each instead of a window of poses.
        """
        g, model = self.config.gestures, Embedder(enc.models[target]).eval()
        parts = [
            (self.splits["probe_train_in"], g.in_dist, 0),
            (self.splits["probe_train_unseen"], g.unseen, len(g.in_dist)),
        ]
        bank, labels, users = [], [], set()
        for w, classes, first in parts:
            y = w.labels(classes)
            keep = y >= 0
            bank.append(batched(model.embed_pose, take(w.pose, keep)))
            labels.append(torch.as_tensor(y[keep] + first))
            users |= set(w.user[keep].tolist())
        source = (
            f"probe-training windows (probe_train_in, probe_train_unseen) of users "
            f"{','.join(sorted(users))} of {self.setup.data} ({self.setup.fingerprint}, split "
            f"{split_id(self.config)})"
        )
        spec, net = _saved(target, self.config, enc)
        return GestureRecognizer(
            spec,
            net,
            self.fs,
            self.layout,
            self.joints,
            self.pose_unit,
            torch.cat(bank),
            torch.cat(labels),
            source,
        )


def chance(windows: PairedWindows, cfg: PoseAlignConfig) -> float:
    """Balanced accuracy of guessing, averaged like :func:`zero_shot_score` over the class sets
    present in ``windows``: the trivial baseline a registered model must beat."""
    sets = [
        c for c in (cfg.gestures.in_dist, cfg.gestures.unseen) if (windows.labels(c) >= 0).any()
    ]
    return float(np.mean([1.0 / len(c) for c in sets])) if sets else math.nan


def split_id(cfg: PoseAlignConfig) -> str:
    """Names which windows form which subset: a digest of the split settings (the data's
    fingerprint says which recordings). An MAE pre-trained on another split is refused. The
    settings are digested as MLflow params (:func:`emgcore.config.flatten`), as every registered
    MAE's ``split`` tag was: another encoding would refuse them all."""
    g = flatten(cfg.gestures)
    return digest({k: v for k, v in g.items() if k.split(".")[0] in SPLIT_FIELDS})[:12]


def _users(w: PairedWindows) -> str:
    return ",".join(sorted(set(w.user.tolist())))


def _method(name: str, target: str, **kw: Any) -> Method:
    # 6 users: 2 train, 2 val (1 tune), 2 test; every stage, 4 s each
    return Method(
        name=name,
        config=PoseAlignConfig,
        preset="posealign-sim",
        smoke_preset="posealign-smoke",
        data="emg2pose-like",
        smoke_sim={"duration_s": 4.0, "n_subjects": 6},
        final_metric="eval_zs_bacc",
        final_label="eval zero-shot",
        # per seed, both splits: eval (the test split) and tune (the selection split)
        seed_metrics={"eval_zs_bacc": "max", "tune_zs_bacc": "max"},
        trial=lambda cfg, recs, setup: PoseAlignTrial(cfg, recs, setup, target, name == "mae"),
        cache_plan=cache_plan,
        split_id=split_id,
        **kw,
    )


MAE_METHOD = _method("mae", "cpep", inference=EmgEncoder.load)
# both align EMG to poses from the MAE champions and recognise gestures from raw EMG
FROM_MAES = dict(
    starts_from="mae",
    pretrained_keys=("emg", "pose"),
    load_pretrained=load_model,
    inference=GestureRecognizer.load,
)
CPEP_METHOD = _method("cpep", "cpep", **FROM_MAES)
EMBRIDGE_METHOD = _method("embridge", "embridge", **FROM_MAES)
