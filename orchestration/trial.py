"""One trial on Ray Train workers: the emgcore code path, made resumable and tracked.

A trial is a list of *units*, each one emgcore fit:

* ``cv`` (a search trial): one unit per (subject, session-CV fold); the trial's ``cv_r2`` is the
  mean over units of the mean R^2 over DoA, i.e. :func:`emgcore.experiment.cv_score` averaged over
  the subjects.
* ``final``: one unit per (subject, seed) on all training sessions, scored on the held-out
  session; rank 0 then logs the pipeline of the first (subject, seed) and registers it.

After every unit the workers report a checkpoint holding the finished units' scores; a restarted
worker (``ray.train.get_checkpoint()``) skips them. Units are deterministic for their seed, so a
resumed trial ends with exactly the result of an uninterrupted one. Every epoch is reported to
Train (and through it to Tune) and, from rank 0, to the trial's MLflow run.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import time
import traceback
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch

from emgcore.data import load_byod, open_dataset
from emgcore.data.byod import MANIFEST
from emgcore.decoder import r2_per_output
from emgcore.distributed import DataParallel
from emgcore.experiment import (
    DecodingPipeline,
    ExperimentConfig,
    RunContext,
    SubjectData,
    cv_folds,
    fit_eval,
    fit_models,
    kinembed_pipeline,
    load_config,
    prepare,
    resolve_config,
)
from emgcore.windows import RecordingCache
from orchestration import launch, tracking
from orchestration.search_space import apply

PROGRESS = "progress.json"
PIPELINE = "pipeline.pt"


def trial_spec(
    *,
    mode: str,
    method: str = "kinembed",
    worker: str = "orchestration.trial",
    config: str,
    overrides: Mapping[str, Any],
    data: str,
    sim: Mapping[str, Any],
    cache: str,
    tracking: Mapping[str, Any],
    subjects: list[str] | None = None,
    threads: int = 1,
    fingerprint: str = "",
    registry: str = "kinembed",
    fault: Mapping[str, Any] | None = None,
    materialised: str = "",
) -> dict[str, Any]:
    """What a trial's workers receive (JSON-able, so Tune can store and restore it).

    ``tracking``: ``uri``, ``experiment_id``, ``parent`` run id, run ``key``, ``name`` and
    ``tags``. ``materialised``: a BYOD copy of a simulated ``data``, read instead of
    simulating again when this worker can see it. ``fault``: test-only fault injection
    (``kill_in_unit``, ``at_epoch``, ``marker``).
    """
    return {
        "method": method,
        "worker": worker,
        "mode": mode,
        "config": config,
        "overrides": dict(overrides),
        "data": data,
        "sim": dict(sim),
        "cache": cache,
        "subjects": list(subjects or []),
        "threads": threads,
        "fingerprint": fingerprint,
        "registry": {"name": registry},
        "fault": dict(fault or {}),
        "materialised": materialised,
        "tracking": dict(tracking),
    }


def build_config(spec: Mapping[str, Any]) -> ExperimentConfig:
    """The trial's configuration: the base preset with the trial's dotted-key overrides."""
    cfg = apply(load_config(resolve_config(spec["config"])), spec["overrides"])
    if spec.get("subjects"):
        cfg = replace(cfg, subjects=tuple(spec["subjects"]))
    if spec.get("seeds"):
        cfg = replace(cfg, seeds=tuple(spec["seeds"]))
    return cfg


def load_recordings(spec: Mapping[str, Any]) -> list:
    """The trial's data: the sweep's BYOD copy of a simulated dataset when this worker can see
    it, else the dataset itself (simulated again, or loaded from its path)."""
    local = spec.get("materialised")
    if local and (Path(local) / MANIFEST).exists():
        return load_byod(local)
    return open_dataset(spec["data"], **spec.get("sim", {}))


def load_subjects(spec: Mapping[str, Any], cfg: ExperimentConfig) -> tuple[list[SubjectData], Any]:
    recs = load_recordings(spec)
    subjects, train, test = prepare(recs, cfg, RecordingCache(spec.get("cache")))
    return subjects, (train, test)


Unit = tuple[str, SubjectData, tuple[str, ...], str, int]


def units(
    spec: Mapping[str, Any],
    cfg: ExperimentConfig,
    subjects: list[SubjectData],
    sessions: tuple[tuple[str, ...], str],
) -> list[Unit]:
    """``[(key, subject, train sessions, eval session, seed)]`` in a fixed order."""
    train, test = sessions
    if spec["mode"] == "final":
        return [
            (f"{s.subject}/seed{seed}", s, tuple(train), test, seed)
            for s in subjects
            for seed in cfg.seeds
        ]
    return [
        (f"{s.subject}/{'_'.join(tr)}-to-{ev[0]}", s, tr, ev[0], cfg.seeds[0])
        for s in subjects
        for tr, ev in cv_folds(train)
    ]


def train_loop(spec: dict[str, Any]) -> None:
    """Ray Train's per-worker function. ``spec`` is built by :mod:`orchestration.sweep`."""
    t_start = time.perf_counter()
    rank = ray.train.get_context().get_world_rank()
    parallel = DataParallel.current()
    device = str(ray.train.torch.get_device())
    torch.set_num_threads(max(1, int(spec.get("threads", 1))))
    cfg = build_config(spec)
    subjects, sessions = load_subjects(spec, cfg)
    todo = units(spec, cfg, subjects, sessions)

    done: dict[str, list[float]] = {}
    step = 0
    pipe_state: dict[str, torch.Tensor] | None = None  # final mode: the model to register
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = json.loads((Path(d) / PROGRESS).read_text())
            done, step = state["done"], state["step"]
            if (Path(d) / PIPELINE).exists():
                pipe_state = torch.load(Path(d) / PIPELINE, weights_only=True)

    tr = spec["tracking"]
    tracker, run_id, log = None, None, None
    if rank == 0:
        params = tracking.flatten(cfg) | {"trial.workers": parallel.world_size}
        tracker, run_id, log = tracking.open_trial_run(tr, params)
    t_report = -math.inf
    try:
        for i, (key, subj, train, ev, seed) in enumerate(todo):
            if key in done:
                continue

            t_epoch = time.perf_counter()

            def on_epoch(epoch: int, m: Mapping[str, float], model: Any, i: int = i) -> None:
                nonlocal step, t_epoch, t_report
                step += 1
                now = time.perf_counter()
                m = {**m, "epoch_s": now - t_epoch}  # wall time of the epoch, hooks included
                t_epoch = now
                if log is not None:
                    log.log(m, step)  # every epoch
                # Train/Tune get the latest epoch at most every launch.REPORT_S (see there); the
                # workers must agree, as a report is a collective
                if parallel.agree(now - t_report >= launch.REPORT_S):
                    t_report = now
                    ray.train.report({**m, "epoch": epoch, "unit": i, **_summary(done, spec)})
                _maybe_fault(spec, i, epoch)

            context = RunContext(hooks=(on_epoch,), parallel=parallel, device=device)
            fold = subj.fold(train, (ev,))
            if spec["mode"] == "final":
                emb, dec = fit_models("kinembed", {}, fold, cfg, seed, context)
                seg = fold.evals[ev]
                pred = dec.predict(emb.transform(seg.x))
                done[key] = r2_per_output(seg.y, pred).tolist()
                if i == 0 and rank == 0:
                    pipe_state = kinembed_pipeline(emb, dec, fold).state_dict()
            else:
                ((r2, _),) = fit_eval("kinembed", {}, fold, cfg, seed, context).values()
                done[key] = r2.tolist()
            if log is not None:
                log.log({f"r2.{key}": float(np.mean(done[key]))}, step)
                log.flush()
            _report_unit(done, step, rank, spec, i, pipe_state)
        summary = _summary(done, spec) | {"loop_s": time.perf_counter() - t_start}
        if log is not None:
            log.log({k: v for k, v in summary.items() if isinstance(v, float)}, step)
            log.flush()
            if spec["mode"] == "final" and spec.get("registry"):  # a study registers nothing
                assert pipe_state is not None
                summary |= _register(
                    spec, cfg, subjects, sessions, tracker, run_id, pipe_state, done
                )
            tracker.set_tags(run_id, {"emg.status": "finished"})
            tracker.end(run_id, "FINISHED")
        # with a checkpoint, so these are the metrics Train's Result carries
        _report_unit(done, step, rank, spec, len(todo), pipe_state, {**summary, "done": True})
    except BaseException as e:
        if tracker is not None and run_id is not None and log is not None:
            tracking.end_with_error(tracker, run_id, log, e)
        traceback.print_exc()
        raise


def _summary(done: Mapping[str, list[float]], spec: Mapping[str, Any]) -> dict[str, Any]:
    """What the trial reports: its selection metric so far and how far it has come."""
    means = [float(np.mean(v)) for v in done.values()]
    metric = "heldout_r2" if spec["mode"] == "final" else "cv_r2"
    pg = ray.util.get_current_placement_group()
    out: dict[str, Any] = {
        metric: float(np.mean(means)) if means else math.nan,
        "units_done": len(done),
        # the driver removes it after fit: Ray 2.60 can leak it when Tune ends the trial
        "placement_group": pg.id.hex() if pg is not None else "",
    }
    if spec["mode"] == "final" and means:
        out["heldout_r2_std"] = float(np.std(means))
        out["scores"] = json.dumps(done)
    return out


def _report_unit(
    done: dict,
    step: int,
    rank: int,
    spec: Mapping[str, Any],
    i: int,
    pipe_state: Mapping[str, torch.Tensor] | None,
    metrics: dict[str, Any] | None = None,
) -> None:
    """A checkpoint after every unit: the finished units' scores (rank 0 writes the files)."""
    metrics = metrics or {"unit": i, **_summary(done, spec)}
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / PROGRESS).write_text(json.dumps({"done": done, "step": step}))
        if pipe_state is not None:
            torch.save(dict(pipe_state), Path(d) / PIPELINE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _maybe_fault(spec: Mapping[str, Any], unit: int, epoch: int) -> None:
    """Fault injection for the tests: SIGKILL this worker once, in ``kill_in_unit`` at epoch
    ``at_epoch``, after the previous unit's checkpoint (a report returns before the controller
    has registered its checkpoint, hence the pause)."""
    fault = spec.get("fault") or {}
    marker = Path(fault.get("marker", "/nonexistent"))
    hit = fault.get("kill_in_unit") == unit and fault.get("at_epoch", 2) == epoch
    if hit and not marker.exists():
        time.sleep(2.0)  # past the controller's next poll: the last checkpoint is registered
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


def _log_report(
    spec: Mapping[str, Any],
    cfg: ExperimentConfig,
    subj: SubjectData,
    sessions: tuple,
    tracker: tracking.Tracker,
    run_id: str,
    trace: tuple[np.ndarray, np.ndarray],
    done: Mapping[str, list[float]],
) -> None:
    """The final run's artifacts: resolved config, emgcore's tables and figures (per-DoA R^2,
    the registered model's held-out prediction trace, the per-subject spread)."""
    import dataclasses

    import yaml

    from emgcore import report
    from emgcore.experiment import ExperimentResult

    train, test = sessions
    res = ExperimentResult(cfg, subj.doa_names, tuple(train), test)
    res.window_s = cfg.features.stride_ms / 1000
    for key, r2 in done.items():
        subject, seed = key.split("/seed")
        res.rows.append(
            {
                "method": "kinembed",
                "subject": subject,
                "seed": int(seed),
                **dict(zip(subj.doa_names, r2, strict=True)),
                "mean": float(np.mean(r2)),
                "cv_r2": math.nan,
                "params": dict(spec["overrides"]),
            }
        )
    res.traces[("kinembed", subj.subject)] = trace
    with tempfile.TemporaryDirectory() as d:
        report.write(res, d)
        plain = json.loads(json.dumps(dataclasses.asdict(cfg), default=list))
        (Path(d) / "config.yaml").write_text(yaml.safe_dump(plain, sort_keys=False))
        tracking.retry(tracker.client.log_artifacts, run_id, d, "report")


def _register(
    spec: Mapping[str, Any],
    cfg: ExperimentConfig,
    subjects: list[SubjectData],
    sessions: tuple,
    tracker: tracking.Tracker,
    run_id: str,
    pipe_state: Mapping[str, torch.Tensor],
    done: Mapping[str, list[float]],
) -> dict[str, Any]:
    """Log and register the first subject's pipeline; move ``champion`` only on improvement.

    Both the new version and the current champion are scored on the same held-out session (the
    registered subject's), so the comparison is like for like; both numbers become tags.
    """
    train, test = sessions
    subj = subjects[0]
    fold = subj.fold(train, (test,))
    seg = fold.evals[test]
    n_features, n_dof = seg.x.shape[1], seg.y.shape[1]
    pipe = DecodingPipeline.empty(cfg, n_features, n_dof)
    pipe.load_state_dict(pipe_state)
    pipe.eval()
    raw = fold.x_scale.inverse(seg.x)  # the raw window features the model takes
    with torch.no_grad():
        pred = pipe(torch.as_tensor(raw)).numpy()
    r2_new = float(np.mean(r2_per_output(seg.y, pred)))
    _log_report(spec, cfg, subj, sessions, tracker, run_id, (seg.y, pred), done)
    name = spec["registry"]["name"]
    tracking.use(tracker.uri)

    def r2_of(model: Any) -> float:
        return float(np.mean(r2_per_output(seg.y, np.asarray(model(torch.as_tensor(raw))))))

    r2_old, why = tracking.rescore_champion(tracker.client, name, r2_of, "the same session")
    tags = {
        "eval": f"{subj.subject}/{test} of {spec['data']} ({spec['fingerprint']})",
        "sweep": spec["tracking"]["tags"].get("emg.sweep", ""),
        "reason": why,
    }
    example = raw[: min(len(raw), 64)]
    version, promote = tracking.register(run_id, pipe, example, name, r2_new, r2_old, tags)
    tracker.set_tags(run_id, {"registry.version": version, "registry.champion": str(promote)})
    return {
        "registry_version": int(version),
        "became_champion": bool(promote),
        "registered_r2": r2_new,
        "champion_r2": math.nan if r2_old is None else r2_old,
        "champion_reason": why,
    }
