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
import time
import traceback
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
from orchestration import launch, tracking
from orchestration.search_space import apply
from orchestration.trial import load_recordings

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
    t_start = time.perf_counter()
    rank = ray.train.get_context().get_world_rank()
    parallel = DataParallel.current()
    torch.set_num_threads(max(1, int(spec.get("threads", 1))))
    cfg = build_config(spec)
    splits = load_splits(spec, cfg)
    device = ray.train.torch.get_device()
    if device.type != "cpu":  # training reads the pre-training windows on the accelerator
        splits = {**splits, "pretrain": splits["pretrain"].to(device)}
    method = TARGET[spec["method"]]
    tr = spec["tracking"]
    tracker, run_id, log = None, None, None
    if rank == 0:
        params = tracking.flatten(cfg) | {"trial.workers": parallel.world_size}
        tracker, run_id, log = tracking.open_trial_run(tr, params)
    step, t_report = 0, -math.inf

    def hook_for(name: str):
        def on_epoch(epoch: int, metrics: Mapping[str, float], model: Any) -> None:
            nonlocal step, t_report
            step += 1
            if log is not None:
                log.log({f"{name}.{k}": v for k, v in metrics.items()}, step)
            now = time.perf_counter()
            if parallel.agree(now - t_report >= launch.REPORT_S):
                t_report = now
                ray.train.report({"model": name, "epoch": epoch, **metrics})

        return (on_epoch,)

    hooks = {name: hook_for(name) for name in ("emg_mae", "pose_mae", method)}
    pretrained = _pretrained(spec)
    if tracker is not None and spec.get("mae"):
        tracker.set_tags(run_id, {f"emg.mae.{k}": v for k, v in spec["mae"].items()})
    try:
        if spec["mode"] == "final":
            summary = _final(spec, cfg, splits, hooks, parallel, tracker, run_id, rank, pretrained)
        else:
            enc = _cpu(
                train_all(
                    splits["pretrain"], cfg, hooks=hooks, parallel=parallel, pretrained=pretrained
                )
            )
            tune = zero_shot_score(enc.retrieve[method], enc.pose[method], splits["tune"], cfg)
            summary = {"tune_zs_bacc": tune}
        summary |= {"loop_s": time.perf_counter() - t_start, "done": True, **launch.placement()}
        if log is not None:
            log.log({k: v for k, v in summary.items() if isinstance(v, float)}, step)
            log.flush()
            tracker.set_tags(run_id, {"emg.status": "finished"})
            tracker.end(run_id, "FINISHED")
        launch.report_last(summary, rank)
    except BaseException as e:
        if tracker is not None and run_id is not None and log is not None:
            tracking.end_with_error(tracker, run_id, log, e)
        traceback.print_exc()
        raise


def _final(
    spec: Mapping[str, Any],
    cfg: PoseAlignConfig,
    splits: Mapping[str, PairedWindows],
    hooks: Mapping[str, Any],
    parallel: DataParallel,
    tracker: tracking.Tracker | None,
    run_id: str | None,
    rank: int,
    pretrained: tuple[Any, Any] | None,
) -> dict[str, Any]:
    """Retrain per seed, score on ``eval``; rank 0 logs the report and registers the model."""
    from emgcore.posereport import evaluate, write

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
    if rank != 0 or tracker is None or run_id is None or first is None:
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
    try:
        champ = load_model(tracking.model_files(f"models:/{name}@champion"))
        with torch.no_grad():
            old = zero_shot_score(champ.retrieve, champ.embed_pose, ev, cfg)
        return old, f"champion v{current.version} scores {old:.4f} on the same evaluation"
    except Exception as e:  # other channels or window length: not comparable
        return math.nan, f"champion v{current.version} cannot be evaluated here: {e}"[:500]


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
