"""What a pose-alignment trial's Ray Train workers run (``sweep.py mae | cpep | embridge``).

A trial trains, on the pre-training windows, the MAEs and the method its sweep selects (``mae``
sweeps judge the MAEs by the CPEP they enable, as CPEP Fig. 3 does), then reports the selection
metric ``tune_zs_bacc``: zero-shot balanced accuracy on the tune subset. The final run retrains
the winner once per seed, scores zero-shot on the evaluation subset (``eval_zs_bacc``, mean +-
std over seeds; also ``eval_lp_in_dist``, ``eval_zs_unseen``, ...), logs emgcore's tables and
figures, and registers the model (a study's runs, ``spec["registry"] = None``, only score):

* ``cpep`` / ``embridge``: the aligned EMG embedder (:class:`emgcore.posealign.Embedder`); the
  champion moves only if it scores better on the same evaluation subset (the champion is loaded
  and scored again here, like for like).
* ``mae``: the two encoders, as ``mae-emg`` and ``mae-pose``, judged by that CPEP score; a
  champion registered on other data (another fingerprint) cannot be compared and keeps its alias.

Unlike KinEMbed's units there is no mid-trial checkpoint: a restarted worker retrains the trial
from its seed, which reproduces it.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch

from emgcore.config import load_yaml
from emgcore.distributed import DataParallel
from emgcore.experiment import resolve_config
from emgcore.gestures import PairedWindows, gesture_splits
from emgcore.posealign import (
    Embedder,
    Encoders,
    PoseAlignConfig,
    load_model,
    save_model,
    score,
    train_all,
    zero_shot_score,
)
from emgcore.windows import RecordingCache
from orchestration import tracking
from orchestration.search_space import apply
from orchestration.trial import load_recordings
from orchestration.worker import TrialRun

TARGET = {"mae": "cpep", "cpep": "cpep", "embridge": "embridge"}  # sweep -> method it scores


def build_config(spec: Mapping[str, Any]) -> PoseAlignConfig:
    cfg = apply(load_yaml(PoseAlignConfig, resolve_config(spec["config"])), spec["overrides"])
    cfg = replace(cfg, methods=(TARGET[spec["method"]],))
    if spec.get("seeds"):
        cfg = replace(cfg, seeds=tuple(spec["seeds"]))
    return cfg


def load_splits(spec: Mapping[str, Any], cfg: PoseAlignConfig) -> dict[str, PairedWindows]:
    cache = RecordingCache(spec.get("cache"))  # trials share the filtered recordings
    return gesture_splits(load_recordings(spec), cfg.gestures, cache)


def train_loop(spec: dict[str, Any]) -> None:
    """Ray Train's per-worker function for the pose-alignment family."""
    rank = ray.train.get_context().get_world_rank()
    parallel = DataParallel.current()
    torch.set_num_threads(max(1, int(spec.get("threads", 1))))
    cfg = build_config(spec)
    splits = load_splits(spec, cfg)
    device = ray.train.torch.get_device()
    if device.type != "cpu":  # training reads the pre-training windows on the accelerator
        splits = {**splits, "pretrain": splits["pretrain"].to(device)}
    method = TARGET[spec["method"]]
    with TrialRun(spec, cfg, parallel, rank) as trial:
        hooks = {name: trial.hooks(name) for name in ("emg_mae", "pose_mae", method)}
        pretrained = _pretrained(spec)
        if trial.tracker is not None and spec.get("mae"):
            mae = {f"emg.mae.{k}": v for k, v in spec["mae"].items()}
            trial.tracker.set_tags(trial.run_id, mae)
        if spec["mode"] == "final":
            summary = _final(spec, cfg, splits, hooks, trial, pretrained)
        else:
            enc = _cpu(
                train_all(
                    splits["pretrain"], cfg, hooks=hooks, parallel=parallel, pretrained=pretrained
                )
            )
            tune = zero_shot_score(enc.retrieve[method], enc.pose[method], splits["tune"], cfg)
            summary = {"tune_zs_bacc": tune}
        trial.finish(summary)


def _final(
    spec: Mapping[str, Any],
    cfg: PoseAlignConfig,
    splits: Mapping[str, PairedWindows],
    hooks: Mapping[str, Any],
    trial: TrialRun,
    pretrained: tuple[Any, Any] | None,
) -> dict[str, Any]:
    """Retrain per seed, score on ``eval``; rank 0 logs the report and registers the model."""
    from emgcore.posereport import evaluate, write

    parallel = trial.parallel
    method = TARGET[spec["method"]]
    scores, per_task, first = [], [], None
    for seed in cfg.seeds:
        enc = _cpu(
            train_all(
                splits["pretrain"], replace(cfg, seeds=(seed,)), hooks=hooks, parallel=parallel
            )
        )
        # linear probe and zero-shot per class set: the rows of Table 2 (and a study's curves);
        # their zero-shot mean is zero_shot_score on the eval subset, which holds both sets
        rows = [r for r in score(enc, splits, cfg) if r["method"] == method]
        per_task.append(
            {f"eval_{k}_{r['task']}": r[f"{k}_bacc"] for r in rows for k in ("lp", "zs")}
        )
        scores.append(float(np.mean([r["zs_bacc"] for r in rows])))
        first = first or enc
    out: dict[str, Any] = {
        "eval_zs_bacc": float(np.mean(scores)),
        "eval_zs_bacc_std": float(np.std(scores)),
        "scores": ",".join(f"{s:.6f}" for s in scores),
    }
    for k in per_task[0]:
        values = [t[k] for t in per_task]
        out |= {k: float(np.mean(values)), f"{k}_std": float(np.std(values))}
    tracker, run_id = trial.tracker, trial.run_id
    if tracker is None or run_id is None or first is None:  # not rank 0
        return out
    if spec.get("report", True):
        with tempfile.TemporaryDirectory() as d:
            write(evaluate(first, splits, cfg, draws=3), d)
            for f in sorted(Path(d).iterdir()):
                tracker.log_artifact(run_id, f, "report")
    if spec.get("registry"):  # a study registers nothing
        out |= _register(spec, cfg, splits["eval"], first, tracker, run_id, out["eval_zs_bacc"])
    return out


def _register(
    spec: Mapping[str, Any],
    cfg: PoseAlignConfig,
    ev: PairedWindows,
    enc: Encoders,
    tracker: tracking.Tracker,
    run_id: str,
    score: float,
) -> dict[str, Any]:
    """Register the final model(s); ``champion`` moves only on a better like-for-like score."""
    tracking.use(tracker.uri)
    sweep_method, method = spec["method"], TARGET[spec["method"]]
    example = ev.emg[:4].numpy()
    tags = {
        "eval": f"eval subset of {spec['data']} ({spec['fingerprint']})",
        "sweep": spec["tracking"]["tags"].get("emg.sweep", ""),
    }
    if sweep_method == "mae":
        models = {
            f"{spec['registry']['name']}-emg": ("mae-emg", enc.emg_encoder, example),
            f"{spec['registry']['name']}-pose": ("mae-pose", enc.pose_encoder, ev.pose[:4].numpy()),
        }
    else:
        models = {spec["registry"]["name"]: (method, Embedder(enc.models[method]).eval(), example)}
    out: dict[str, Any] = {}
    for name, (kind, model, ex) in models.items():
        old, why = _champion_score(tracker, name, sweep_method, ev, cfg, tags["eval"])
        with tempfile.TemporaryDirectory() as d:
            files = save_model(kind, cfg, enc, d)  # weights + config: rebuilt on load
            version, promote = tracking.register(
                run_id,
                model,
                ex,
                name,
                score,
                old,
                {**tags, "reason": why},
                metric="eval_zs_bacc",
                extra_files=files,
            )
        tracker.set_tags(run_id, {f"registry.{name}.version": version})
        out |= {
            "registry_version": int(version),
            "became_champion": bool(promote),
            "champion_reason": why,
            "registered": ",".join(filter(None, [out.get("registered", ""), f"{name} v{version}"])),
        }
    return out


def _champion_score(
    tracker: tracking.Tracker,
    name: str,
    sweep_method: str,
    ev: PairedWindows,
    cfg: PoseAlignConfig,
    eval_tag: str,
) -> tuple[float | None, str]:
    """The current champion's score on the same evaluation: ``None`` (no champion), NaN (it
    cannot be compared), else the number, with the reason in words."""
    current = tracking.champion(tracker.client, name)
    if current is None:
        return None, "no champion yet"
    if sweep_method == "mae":  # encoders alone cannot be scored: the recorded CPEP score
        if current.tags.get("eval") != eval_tag:
            return math.nan, f"champion v{current.version} was scored on other data"
        old = float(current.tags.get("eval_zs_bacc", "nan"))
        return old, f"champion v{current.version} scored {old:.4f} on the same evaluation"
    return tracking.rescore_champion(
        tracker.client,
        name,
        lambda champ: zero_shot_score(champ.retrieve, champ.embed_pose, ev, cfg),
        "the same evaluation",
        load=lambda uri: load_model(tracking.model_files(uri)),
    )


def _pretrained(spec: Mapping[str, Any]) -> tuple[Any, Any] | None:
    """The registered MAE encoders a CPEP / EMBridge sweep starts from (``spec["mae"]``: model
    URIs pinned to versions by the sweep), or None to pre-train them in the trial."""
    uris = spec.get("mae") or {}
    if not uris:
        return None
    tracking.use(spec["tracking"]["uri"])
    return tuple(load_model(tracking.model_files(uris[k])) for k in ("emg", "pose"))


def _cpu(enc: Encoders) -> Encoders:
    """Evaluate on the CPU: scoring batches come from CPU tensors."""
    for m in enc.models.values():
        m.cpu()
    return enc
