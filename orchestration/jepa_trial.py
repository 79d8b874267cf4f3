"""What an EMG-JEPA trial's Ray Train workers run (``sweep.py jepa``).

A search trial pre-trains the encoder on the training users' windows, fine-tunes it with the
pose head (early-stopped on the validation users) and reports the selection metric
``val_ja_mae``: JA-MAE in degrees on the validation users, lower is better
(:func:`emgcore.poseest.run`).

The final run retrains the winner once per seed and scores the held-out test users
(``test_ja_mae``, mean +- std over seeds, with ``val_ja_mae`` beside it). Rank 0 logs the first
seed's per-joint errors and trajectories and registers its pose model (EMG windows ``(B, T, C)``
-> joint angles ``(B, J)`` in the data's unit) as ``jepa``. The champion rule is KinEMbed's: the
current champion is loaded and scored again on the same test users here, and the alias moves only
when the new model's error is lower; a champion that cannot run on this data (other channels or
window length) keeps its alias.

Like the other pose family there is no mid-trial checkpoint: a restarted worker retrains the
trial from its seed, which reproduces it.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch

from emgcore.config import load_yaml
from emgcore.distributed import DataParallel
from emgcore.experiment import resolve_config
from emgcore.jepa import ja_mae
from emgcore.poseest import PoseData, PoseEstConfig, per_joint_report, prepare, run
from emgcore.training import batched
from orchestration import tracking
from orchestration.search_space import apply
from orchestration.trial import load_recordings
from orchestration.worker import TrialRun

PHASES = ("pretrain", "finetune")


def build_config(spec: Mapping[str, Any]) -> PoseEstConfig:
    """The base preset with the trial's dotted-key overrides (and the final run's seeds)."""
    cfg = apply(load_yaml(PoseEstConfig, resolve_config(spec["config"])), spec["overrides"])
    if spec.get("seeds"):
        cfg = replace(cfg, seeds=tuple(spec["seeds"]))
    return cfg


def train_loop(spec: dict[str, Any]) -> None:
    """Ray Train's per-worker function for EMG-JEPA."""
    rank = ray.train.get_context().get_world_rank()
    parallel = DataParallel.current()
    torch.set_num_threads(max(1, int(spec.get("threads", 1))))
    cfg = build_config(spec)
    data = prepare(load_recordings(spec), cfg.data).to(ray.train.torch.get_device())
    with TrialRun(spec, cfg, parallel, rank) as trial:
        hooks = {phase: trial.hooks(phase) for phase in PHASES}
        if spec["mode"] == "final":
            summary = _final(spec, cfg, data, hooks, trial)
        else:
            out = run(data, cfg, hooks, parallel=parallel)
            summary = {k: out[k] for k in ("val_ja_mae", "pretrain_loss") if k in out}
        trial.finish(summary)


def _final(
    spec: Mapping[str, Any],
    cfg: PoseEstConfig,
    data: PoseData,
    hooks: Mapping[str, Any],
    trial: TrialRun,
) -> dict[str, Any]:
    """Retrain per seed, score the test users; rank 0 logs the report and registers."""
    parallel = trial.parallel
    scores: dict[str, list[float]] = {"test_ja_mae": [], "val_ja_mae": []}
    first: torch.nn.Module | None = None
    for seed in cfg.seeds:
        keep: dict[str, Any] = {}
        out = run(data, replace(cfg, seeds=(seed,)), hooks, keep=keep, parallel=parallel)
        for k in scores:
            scores[k].append(out[k])
        first = first or keep["model"]
    summary: dict[str, Any] = {"scores": ",".join(f"{s:.4f}" for s in scores["test_ja_mae"])}
    for k, values in scores.items():
        summary |= {k: float(np.mean(values)), f"{k}_std": float(np.std(values))}
    tracker, run_id = trial.tracker, trial.run_id
    if tracker is None or run_id is None or first is None:  # not rank 0
        return summary
    if spec.get("report", True):
        with tempfile.TemporaryDirectory() as d:
            for f in per_joint_report(first, data, d):
                tracker.log_artifact(run_id, f, "report")
    if spec.get("registry"):  # a study registers nothing
        summary |= _register(spec, data, first, scores["test_ja_mae"][0], tracker, run_id)
    return summary


def _register(
    spec: Mapping[str, Any],
    data: PoseData,
    model: torch.nn.Module,
    score: float,
    tracker: tracking.Tracker,
    run_id: str,
) -> dict[str, Any]:
    """Register the first seed's pose model (``score``: its test JA-MAE); ``champion`` moves
    only on a lower one, the champion scored again here on the same test users."""
    tracking.use(tracker.uri)
    name = spec["registry"]["name"]
    test = data.test
    old, why = tracking.rescore_champion(
        tracker.client,
        name,
        lambda champ: ja_mae(batched(champ, test.emg), test.pose, data.unit),
        "the same test users",
    )
    users = ",".join(sorted(set(test.user.tolist())))
    tags = {
        "eval": f"test users {users} of {spec['data']} ({spec['fingerprint']})",
        "sweep": spec["tracking"]["tags"].get("emg.sweep", ""),
        "unit": data.unit,
        "joints": ",".join(data.joints),
        "reason": why,
    }
    version, promote = tracking.register(
        run_id,
        model,
        test.emg[:4].numpy(),
        name,
        score,
        old,
        tags,
        metric="test_ja_mae",
        mode="min",
    )
    tracker.set_tags(run_id, {"registry.version": version, "registry.champion": str(promote)})
    return {
        "registry_version": int(version),
        "became_champion": bool(promote),
        "registered_ja_mae": score,
        "champion_ja_mae": math.nan if old is None else old,
        "champion_reason": why,
    }
