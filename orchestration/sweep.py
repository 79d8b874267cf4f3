"""Staged hyper-parameter sweep:
``python orchestration/sweep.py kinembed | mae | cpep | embridge | jepa``.

One Ray Tune experiment per stage of ``search_spaces/<method>.yaml``; each trial is a Ray Train
``TorchTrainer`` run of the emgcore code path (:mod:`orchestration.trial` for KinEMbed,
:mod:`orchestration.pose_trial` for the pose-alignment family, :mod:`orchestration.jepa_trial`
for EMG-JEPA), launched by a small Tune driver function. Each stage fixes the winners of the
stages it inherits from. After the last stage the winner is retrained with every seed, scored on
the held-out data (KinEMbed: the held-out session; the pose family: the evaluation users;
EMG-JEPA: the test users), logged to MLflow and registered; the ``champion`` alias moves only on
improvement (the space's ``mode`` says which way: JA-MAE is an error, lower wins). ``cpep`` and
``embridge`` start from the registered ``mae-emg@champion`` and ``mae-pose@champion``
(pre-training them first when missing).

``--study NAME`` runs one of the space's studies instead (e.g. ``data_efficiency``): every point
of its grid retrained per seed and scored like the final run, tabulated and plotted against the
grid, nothing selected or registered.

Laptop: local Ray in-process, MLflow in ``./mlflow.db``, Ray results in ``./ray_results``.
Cluster: the same command through ``ray job submit``, with ``RAY_ADDRESS``/``--address``,
``MLFLOW_TRACKING_URI``/``--tracking-uri`` and a shared ``--storage-path``.

Exit status: 0 done, 1 the sweep failed, 2 bad input or tracking unreachable, 130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emgcore.errors import EmgDataError
from orchestration import launch, tracking
from orchestration import search_space as spaces

SMOKE = {"points_per_stage": 2, "seeds": (0, 1, 2)}


@dataclass(frozen=True)
class Family:
    """What a method's sweep needs to know about it beyond its search space."""

    config: str  # default base preset
    smoke_config: str  # --smoke preset
    data: str  # default --data (a simulator preset)
    smoke_sim: dict  # --smoke simulator size
    final_metric: str  # what the final run reports (mean, and ``_std`` over seeds)
    final_label: str  # how the summary screen names it
    worker: str  # the module whose ``train_loop`` the trials' Train workers run


KINEMBED = Family(
    "kinembed-sim",
    "kinembed-smoke",
    "db8-like",
    {"duration_s": 30.0, "n_subjects": 1},
    "heldout_r2",
    "held-out R^2",
    "orchestration.trial",
)
POSE = Family(  # 6 users: 2 train, 2 val (1 tune), 2 test; every stage, 4 s each
    "posealign-sim",
    "posealign-smoke",
    "emg2pose-like",
    {"duration_s": 4.0, "n_subjects": 6},
    "eval_zs_bacc",
    "eval zero-shot",
    "orchestration.pose_trial",
)
JEPA = Family(  # 6 users: 4 train, 1 validation, 1 test; one session of 4 s per stage
    "jepa-sim",
    "jepa-smoke",
    "emg2pose-like",
    {"duration_s": 4.0, "n_subjects": 6, "sessions": ("s0",)},
    "test_ja_mae",
    "test JA-MAE",  # degrees
    "orchestration.jepa_trial",
)
FAMILIES = {"kinembed": KINEMBED, "mae": POSE, "cpep": POSE, "embridge": POSE, "jepa": JEPA}


@dataclass
class Options:
    method: str
    data: str = ""  # empty: the method's simulator preset
    config: str | None = None
    space: str | None = None
    stages: tuple[str, ...] = ()
    smoke: bool = False
    resume: str | None = None
    max_concurrent: int | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    address: str | None = None
    storage_path: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    duration: float | None = None
    sim_subjects: int | None = None
    cache: str | None = None
    registry_name: str | None = None
    skip_final: bool = False
    study: str | None = None


def parse(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python orchestration/sweep.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("method", choices=sorted(spaces.CONFIGS), help="which method's search space")
    p.add_argument(
        "--data",
        default="",
        help="simulator preset or dataset path (default: the simulator: db8-like for kinembed, "
        "emg2pose-like for mae, cpep, embridge and jepa)",
    )
    p.add_argument(
        "--config",
        default=None,
        help="base config: YAML file or bundled preset (default: kinembed-sim, posealign-sim "
        "or jepa-sim; their -smoke presets with --smoke)",
    )
    p.add_argument("--space", default=None, help="search-space YAML (default: search_spaces/)")
    p.add_argument("--stages", default=None, help="comma-separated stages to run (default: all)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny budget: a small simulated dataset, 2 points per stage, the method's smoke "
        "preset; every stage still runs (a few minutes on 2 cores)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="SWEEP_ID",
        help="continue an interrupted sweep (default: the latest one of this method): "
        "finished trials are not rerun and no MLflow run is duplicated",
    )
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="cap on concurrent trials (default: what the cluster's CPUs/GPUs hold)",
    )
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers per trial")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray started in-process)",
    )
    p.add_argument(
        "--storage-path",
        default=None,
        help="Ray results and checkpoints (default: ./ray_results; shared storage, e.g. "
        "s3://... or an NFS path, on a multi-node cluster)",
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    p.add_argument(
        "--experiment", default=None, help="MLflow experiment name (default: the method)"
    )
    p.add_argument("--duration", type=float, default=None, help="seconds per simulated session")
    p.add_argument(
        "--sim-subjects", type=int, default=None, help="simulated users (simulator presets only)"
    )
    p.add_argument("--cache", default=None, help="preprocessing cache folder (shared)")
    p.add_argument(
        "--registry-name", default=None, help="registered model name (default: the method)"
    )
    p.add_argument(
        "--skip-final",
        action="store_true",
        help="stop after the stages: no retraining, held-out evaluation or registration",
    )
    p.add_argument(
        "--study",
        default=None,
        metavar="NAME",
        help="run one of the search space's studies (e.g. data_efficiency, batch_size) instead "
        "of its stages: every point scored like the final run and plotted; nothing registered",
    )
    a = p.parse_args(argv)
    return Options(
        method=a.method,
        data=a.data,
        config=a.config,
        space=a.space,
        stages=tuple(a.stages.split(",")) if a.stages else (),
        smoke=a.smoke,
        resume=a.resume,
        max_concurrent=a.max_concurrent,
        workers=a.workers,
        gpus_per_worker=a.gpus_per_worker,
        cpus_per_worker=a.cpus_per_worker,
        address=a.address,
        storage_path=a.storage_path,
        tracking_uri=a.tracking_uri,
        experiment=a.experiment,
        duration=a.duration,
        sim_subjects=a.sim_subjects,
        cache=a.cache,
        registry_name=a.registry_name,
        skip_final=a.skip_final,
        study=a.study,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse(argv)
    try:
        return Sweep(opts).run()
    except (EmgDataError, tracking.TrackingUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


class Interrupted(BaseException):
    """SIGTERM/SIGINT reached the driver: end every open run KILLED, then exit."""


class Sweep:
    def __init__(self, opts: Options):
        self.opts = opts
        path = Path(opts.space) if opts.space else spaces.path_for(opts.method)
        self.space = spaces.load(path)
        if unknown := set(opts.stages) - {s.name for s in self.space.stages}:
            raise EmgDataError(f"unknown stage(s) {sorted(unknown)}", source=path, field="--stages")
        if opts.study:
            self.space.study(opts.study)  # fails early, naming the space's studies
        self.uri = tracking.resolve_uri(opts.tracking_uri)
        tracking.check_reachable(self.uri)  # one line and exit 2 when down
        self.tracker = tracking.Tracker(self.uri)
        self.storage = _storage(opts.storage_path)
        self.family = FAMILIES[opts.method]
        fam = self.family
        if not opts.data:
            self.opts = opts = dataclasses.replace(opts, data=fam.data)
        self.config = opts.config or (fam.smoke_config if opts.smoke else fam.config)
        from emgcore.config import load_yaml
        from emgcore.experiment import resolve_config

        # fails early on a bad config
        self.base = load_yaml(spaces.CONFIGS[opts.method], resolve_config(self.config))
        self.sim: dict[str, Any] = dict(fam.smoke_sim) if opts.smoke else {}
        if opts.duration:
            self.sim["duration_s"] = opts.duration
        if opts.sim_subjects:
            self.sim["n_subjects"] = opts.sim_subjects
        self.cache = str(
            Path(opts.cache or os.environ.get("EMGCORE_CACHE", ".emgcore_cache")).resolve()
        )
        self.registry = opts.registry_name or opts.method
        self.mae: dict[str, str] = {}  # CPEP / EMBridge: the registered MAEs they start from

    # -- the whole sweep -------------------------------------------------------------------------

    def run(self) -> int:
        import ray

        state = self._open_state()
        self._check_subjects(state)  # bad data fails here, before Ray or MLflow runs start
        self._start_ray()
        t0 = time.time()
        sid = state["sweep_id"]
        exp = self.tracker.experiment(self.opts.experiment or self.opts.method)
        self.exp = exp
        tags = self._tags(sid, state)
        parent = self.tracker.open_run(exp, f"{sid}", f"sweep {sid}", tags)
        state["parent"] = parent
        self._save_state(state)
        self.tracker.set_tags(parent, {"emg.data_fingerprint": self.fingerprint})
        self.tracker.log_params(
            parent,
            {
                "sweep.data": self.opts.data,
                "sweep.config": self.config,
                "sweep.workers": self.opts.workers,
                "sweep.smoke": self.opts.smoke,
                **{f"sweep.sim.{k}": v for k, v in self.sim.items()},
            },
        )
        _print(
            f"sweep {sid}: {self.opts.method} on {self.opts.data}, {len(self.space.stages)} "
            f"stages, {self.concurrency} concurrent trial(s) x {self.opts.workers} worker(s); "
            f"MLflow {self.uri}"
        )
        status, code = "FINISHED", 0
        handlers = self._install_signals()
        try:
            self.mae = self._mae_dependency(state, parent, tags)
            if state.get("study"):
                self._run_study(self.space.study(state["study"]), state, parent, tags)
            for stage in self.space.stages if not state.get("study") else ():
                if self.opts.stages and stage.name not in self.opts.stages:
                    continue
                if state["stages"].get(stage.name, {}).get("done"):
                    _print(f"stage {stage.name}: done in an earlier run, winner kept")
                    continue
                self._run_stage(stage, state, parent, tags)
            skip = self.opts.skip_final or state.get("study")
            final = {} if skip else self._final(state, parent, tags)
            self._summary(state, final, time.time() - t0)
        except BaseException as e:
            if not (self.stop or isinstance(e, Interrupted | KeyboardInterrupt)):
                if not isinstance(e, Exception):
                    raise
                status, code = "FAILED", 1
                self.tracker.set_tags(parent, {"emg.error": f"{type(e).__name__}: {e}"[:5000]})
                _print(f"sweep failed: {type(e).__name__}: {e}")
            else:
                status, code = "KILLED", 130
                _print(
                    f"interrupted ({self.stop or 'SIGINT'}): open runs ended KILLED; "
                    f"continue with --resume {sid}"
                )
        finally:
            _restore_signals(handlers)
            self.tracker.end_orphans(exp, "emg.sweep", sid, "KILLED" if code else "FAILED")
            self.tracker.end(parent, status)
            state["status"] = status
            self._save_state(state)
            ray.shutdown()
        return code

    # -- stages ----------------------------------------------------------------------------------

    def _run_stage(self, stage: spaces.Stage, state: dict, parent: str, tags: dict) -> None:

        sid = state["sweep_id"]
        fixed = dict(stage.fixed)
        for name in stage.inherit:
            fixed |= state["stages"].get(name, {}).get("winner", {})
        points = self._points(stage)
        stage_key = f"{sid}/{stage.name}"
        run = self.tracker.open_run(
            self.exp,
            stage_key,
            f"stage {stage.name}",
            {**tags, "emg.stage": stage.name},
            parent=parent,
        )
        self.tracker.log_params(run, {f"fixed.{k}": v for k, v in fixed.items()})
        _print(f"stage {stage.name}: {len(points)} trial(s); fixed {fixed or '-'}")
        trial_tags = {**tags, "emg.stage": stage.name}
        spec = self._spec("cv", fixed, stage_key, run, trial_tags)
        grid = self._tune(stage.name, spec, points, sid, run, self.space.metric)
        rows = _leaderboard(grid, points, self.space.metric, self.space.mode)
        ok = [r for r in rows if r["status"] == "ok"]
        board = Path(self.storage_local(sid)) / f"leaderboard-{stage.name}.csv"
        _write_csv(board, rows)
        self.tracker.log_artifact(run, board, "leaderboards")
        self.tracker.log_artifact(parent, board, "leaderboards")
        plot = _stage_plot(rows, stage.name, self.space.metric, board.with_suffix(".png"))
        if plot:
            self.tracker.log_artifact(run, plot, "plots")
        if not ok:
            self.tracker.end(run, "FAILED")
            raise RuntimeError(f"stage {stage.name}: every trial failed ({rows[0]['error']})")
        best = ok[0]
        winner = {**{k: v for k, v in fixed.items()}, **json.loads(best["overrides"])}
        self.tracker.log_params(run, {f"winner.{k}": v for k, v in winner.items()})
        self.tracker.set_tags(run, {"winner.trial": best["trial"]})
        metric = self.space.metric
        logger = self.tracker.logger(run)
        logger.log({f"best_{metric}": best[metric], "trials_failed": len(rows) - len(ok)}, 0)
        logger.flush()
        self.tracker.end(run, "FINISHED")
        state["stages"][stage.name] = {
            "winner": winner,
            "score": best[metric],
            "trial": best["trial"],
            "done": True,
        }
        self._save_state(state)
        _print(
            f"stage {stage.name}: best {metric} {best[metric]:+.4f} with "
            f"{json.loads(best['overrides'])}; {len(rows) - len(ok)} failed"
        )

    def _tune(
        self, name: str, spec: dict, points: list[dict], sid: str, run: str, metric: str
    ) -> Any:
        """One Tune experiment: a trial per point over ``spec``, resumed if it was interrupted.
        Returns its ``ResultGrid``; an interrupted experiment ends ``run`` KILLED and raises."""
        from ray import tune

        spec["storage"] = f"{self.storage}/{sid}/{name}-train"
        driver = tune.with_resources(launch.tune_driver, {"CPU": 0, "memory": 2**20})
        param_space = {
            "spec": spec,
            "trainer": self._trainer_args(),
            "overrides": tune.grid_search(points),
        }
        path = f"{self.storage}/{sid}/{name}"
        if tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(
                path,
                driver,
                resume_unfinished=True,
                resume_errored=True,
            )
        else:
            tuner = tune.Tuner(
                driver,
                param_space=param_space,
                # not reuse_actors: with a function trainable Ray 2.60 logs "Could not re-use
                # actor ... requires reset_config()" and the stage can then hang (seen here)
                tune_config=tune.TuneConfig(max_concurrent_trials=self.concurrency),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=f"{self.storage}/{sid}",
                    callbacks=[_Progress(name, metric)],
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=0),
                ),
            )
        launch.release_leaked_placement_groups()
        self.in_tune = True
        try:
            grid = tuner.fit()
        finally:
            self.in_tune = False
        if self.stop or grid.num_terminated + grid.num_errors < len(grid):
            self.tracker.end(run, "KILLED")
            raise Interrupted(f"{name} was interrupted")  # Tune saved it for --resume
        return grid

    # -- studies ---------------------------------------------------------------------------------

    def _run_study(self, study: spaces.Stage, state: dict, parent: str, tags: dict) -> None:
        """Every point of ``study`` retrained per seed and scored like the final run (no model
        registered); the scores as a CSV table and a figure against the grid, in MLflow."""
        sid, name = state["sweep_id"], f"study-{study.name}"
        key, run_tags = f"{sid}/{name}", {**tags, "emg.stage": name}
        run = self.tracker.open_run(self.exp, key, f"study {study.name}", run_tags, parent=parent)
        seeds = SMOKE["seeds"] if self.opts.smoke else self.base.seeds
        points = self._points(study)
        self.tracker.log_params(
            run, {f"fixed.{k}": v for k, v in study.fixed.items()} | {"study.seeds": list(seeds)}
        )
        spec = self._spec("final", dict(study.fixed), key, run, run_tags)
        spec |= {"seeds": list(seeds), "subjects": state.get("subjects") or []}
        spec |= {"registry": None, "report": False}  # a study scores; it registers nothing
        _print(f"study {study.name}: {len(points)} point(s) x seeds {list(seeds)}")
        grid = self._tune(name, spec, points, sid, run, self.family.final_metric)
        rows = _study_rows(grid, points, self.family.final_metric)
        table = Path(self.storage_local(sid)) / f"{name}.csv"
        _write_csv(table, rows)
        files = [
            table,
            _study_plot(rows, study, self.family.final_metric, table.with_suffix(".png")),
        ]
        for f in filter(None, files):
            self.tracker.log_artifact(run, f, "study")
            self.tracker.log_artifact(parent, f, "study")
        failed = [r for r in rows if r["status"] != "ok"]
        self.tracker.end(run, "FAILED" if len(failed) == len(rows) else "FINISHED")
        if len(failed) == len(rows):
            raise RuntimeError(f"study {study.name}: every trial failed ({rows[0]['error']})")
        state["study_table"] = str(table)
        self._save_state(state)
        metric = self.family.final_metric
        for r in rows:
            point = {k: r[k] for k in study.grid}
            value = f"{r[metric]:+.4f} +- {r[metric + '_std']:.4f}" if r["status"] == "ok" else "-"
            _print(f"study {study.name}: {point} {metric} {value} {r['error']}")

    def _points(self, stage: spaces.Stage) -> list[dict[str, Any]]:
        """The stage's grid, plus ``budget`` seeded draws from its ``choice`` keys."""
        points = stage.grid_points()
        if stage.choice:
            rng = random.Random(f"{self.space.digest()}/{stage.name}")
            draws = [
                {k: rng.choice(list(v)) for k, v in stage.choice.items()}
                for _ in range(stage.budget or 1)
            ]
            points = [{**p, **d} for p in points for d in draws]
        if self.opts.smoke and len(points) > SMOKE["points_per_stage"]:
            points = [points[0], points[-1]]  # both ends of the grid
        return [{k: list(v) if isinstance(v, tuple) else v for k, v in p.items()} for p in points]

    # -- what CPEP and EMBridge start from ---------------------------------------------------

    def _mae_dependency(self, state: dict, parent: str, tags: dict) -> dict[str, str]:
        """``{"emg": uri, "pose": uri}``: the registered MAE champions a CPEP / EMBridge sweep
        starts from, pinned to their versions (a champion that moves mid-sweep changes nothing).
        When either is missing the MAEs are pre-trained first with the base config (one seed,
        scored and registered as ``sweep.py mae``'s final would)."""
        if self.opts.method not in ("cpep", "embridge"):
            return {}
        if state.get("mae"):
            return state["mae"]
        sid = state["sweep_id"]
        found = {k: tracking.champion(self.tracker.client, f"mae-{k}") for k in ("emg", "pose")}
        if any(v is None for v in found.values()):
            _print("no mae-emg@champion / mae-pose@champion: pre-training the MAEs first")
            key = f"{sid}/mae-pretraining"
            run_tags = {**tags, "emg.stage": "mae-pretraining"}
            run = self.tracker.open_run(self.exp, key, "mae pre-training", run_tags, parent=parent)
            spec = self._spec("final", {}, key, run, run_tags)
            spec |= {"method": "mae", "registry": {"name": "mae"}, "seeds": [self.base.seeds[0]]}
            spec["tracking"]["run_id"] = run
            self._fit_once(spec, f"{sid}-mae", sid)
            found = {k: tracking.champion(self.tracker.client, f"mae-{k}") for k in found}
        mae = {k: f"models:/mae-{k}/{v.version}" for k, v in found.items()}
        self.tracker.log_params(parent, {f"mae.{k}": uri for k, uri in mae.items()})
        _print(f"starting from {mae['emg']} and {mae['pose']}")
        state["mae"] = mae
        self._save_state(state)
        return mae

    # -- the final model -------------------------------------------------------------------------

    def _final(self, state: dict, parent: str, tags: dict) -> dict[str, Any]:
        """Retrain the winner with every seed on all training sessions; register the model."""
        sid = state["sweep_id"]
        winner: dict[str, Any] = {}
        for stage in self.space.stages:
            winner |= state["stages"].get(stage.name, {}).get("winner", {})
        key = f"{sid}/final"
        run = self.tracker.open_run(
            self.exp, key, "final", {**tags, "emg.stage": "final"}, parent=parent
        )
        seeds = SMOKE["seeds"] if self.opts.smoke else self.base.seeds
        spec = self._spec("final", winner, key, run, {**tags, "emg.stage": "final"})
        spec["seeds"] = list(seeds)
        spec["subjects"] = state.get("subjects") or []
        spec["tracking"]["run_id"] = run
        _print(f"final: winner retrained with seeds {list(seeds)} -> held-out data")
        m = self._fit_once(spec, f"{sid}-final", sid)
        state["final"] = {k: v for k, v in m.items() if isinstance(v, int | float | str | bool)}
        self._save_state(state)
        self.tracker.log_params(parent, {f"winner.{k}": v for k, v in winner.items()})
        logger = self.tracker.logger(parent)
        metric = self.family.final_metric
        logger.log({metric: m[metric], f"{metric}_std": m[f"{metric}_std"]}, 0)
        logger.flush()
        return m

    # -- pieces ----------------------------------------------------------------------------------

    def _fit_once(self, spec: dict, name: str, sid: str) -> dict[str, Any]:
        """One TorchTrainer run outside Tune (final retrain, MAE pre-training): its metrics."""
        trainer = launch.make_trainer(spec, self._trainer_args(), name, f"{self.storage}/{sid}")
        launch.release_leaked_placement_groups()
        m = dict(trainer.fit().metrics)
        launch.release_placement_group(m.get("placement_group", ""))
        return m

    def _install_signals(self) -> dict[int, Any]:
        """SIGTERM/SIGINT end the sweep cleanly: runs KILLED, Tune state saved for --resume.

        Inside ``tuner.fit()`` Tune owns SIGINT (it stops the trials and saves the experiment),
        so a SIGTERM there is handed to it as a SIGINT; elsewhere the handler raises.
        """

        def handler(signum: int, frame: Any) -> None:
            self.stop = signal.Signals(signum).name
            if self.in_tune:
                signal.raise_signal(signal.SIGINT)
                return
            raise Interrupted(self.stop)

        self.stop, self.in_tune = "", False
        return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _spec(self, mode: str, overrides: dict, key: str, parent: str, tags: dict) -> dict:
        """What a trial's workers need (:func:`orchestration.trial.trial_spec`)."""
        from orchestration.trial import trial_spec

        spec = trial_spec(
            method=self.opts.method,
            worker=self.family.worker,
            mode=mode,
            config=self.config,
            overrides=overrides,
            data=self.opts.data,
            sim=self.sim,
            cache=self.cache,
            subjects=list(self.subjects),
            threads=max(1, int(self.opts.cpus_per_worker)),
            fingerprint=self.fingerprint,
            registry=self.registry,
            materialised=self.materialised,
            tracking={
                "uri": self.uri,
                "experiment_id": self.exp,
                "parent": parent,
                "key": key,
                "name": key.split("/", 1)[1],
                "tags": tags,
            },
        )
        return spec | {"mae": self.mae}

    def _trainer_args(self) -> dict[str, Any]:
        o = self.opts
        res: dict[str, float] = {"CPU": o.cpus_per_worker}
        if o.gpus_per_worker:
            res["GPU"] = o.gpus_per_worker
        return {
            "scaling": {
                "num_workers": o.workers,
                "use_gpu": o.gpus_per_worker > 0,
                "resources_per_worker": res,
            },
            "max_failures": launch.MAX_WORKER_FAILURES,
        }

    def _start_ray(self) -> None:
        import ray

        address = self.opts.address or os.environ.get("RAY_ADDRESS")
        if address:
            # in a `ray job submit` the job's working dir is already on every worker's path
            ray.init(address=address, log_to_driver=False)
        else:
            local = launch.local_cluster_options()
            root = str(Path(__file__).resolve().parent.parent)
            local["runtime_env"]["env_vars"]["PYTHONPATH"] = root
            ray.init(
                include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False, **local
            )
        res = ray.cluster_resources()
        o = self.opts
        per_trial = {"CPU": o.workers * o.cpus_per_worker, "GPU": o.workers * o.gpus_per_worker}
        fits = [int(res.get(k, 0) // v) for k, v in per_trial.items() if v > 0]
        self.concurrency = max(1, min(fits) if fits else 1)
        if o.max_concurrent:
            self.concurrency = max(1, min(self.concurrency, o.max_concurrent))

    def _open_state(self) -> dict:
        root = Path(self.storage_local(""))
        if self.opts.resume:
            sid = self.opts.resume
            if sid == "latest":
                found = sorted(root.glob(f"{self.opts.method}-*/sweep.json"))
                if not found:
                    raise EmgDataError("no sweep to resume", source=root, field="--resume")
                sid = found[-1].parent.name
            path = root / sid / "sweep.json"
            if not path.exists():
                raise EmgDataError("no such sweep", source=path, field="--resume")
            state = json.loads(path.read_text())
            if state.get("status") == "FINISHED":
                raise EmgDataError(f"sweep {sid} already finished", source=path, field="--resume")
            _print(f"resuming sweep {sid}")
        else:
            sid = f"{self.opts.method}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
            state = {"sweep_id": sid, "stages": {}, "started": time.time()}
            if self.opts.study:
                state["study"] = self.opts.study
        self.sweep_id = sid
        state.setdefault("stages", {})
        return state

    def _save_state(self, state: dict) -> None:
        path = Path(self.storage_local(state["sweep_id"])) / "sweep.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, default=str))
        tmp.replace(path)

    def storage_local(self, sid: str) -> str:
        """Where the driver keeps sweep state and leaderboards: the storage path when local."""
        base = self.storage if "://" not in self.storage else str(Path("ray_results").resolve())
        return f"{base}/{sid}" if sid else base

    def _check_subjects(self, state: dict) -> None:
        """The space's subjects when the data has them; else every subject, said out loud."""
        from emgcore.recording import digest

        recs = self._load_data()
        have = sorted({r.subject for r in recs if r.kinematics is not None})
        if not have:
            raise EmgDataError(
                f"no recording has kinematics (joint angles, DoA or glove): {self.opts.method} "
                "learns from EMG paired with them",
                source=self.opts.data,
                field="kinematics",
            )
        wanted = [s for s in self.space.subjects if s in have]
        if self.space.subjects and len(wanted) < len(self.space.subjects):
            _print(
                f"data has no subject(s) {sorted(set(self.space.subjects) - set(have))}; "
                f"every trial is evaluated on all {len(have)}: {have}"
            )
            wanted = have
        self.subjects = wanted or have
        state["subjects"] = self.subjects
        self.fingerprint = digest(sorted(r.fingerprint for r in recs))[:12]

    def _load_data(self) -> list:
        """The recordings; a simulated dataset is written once into the cache (BYOD format).

        Trials then read that copy instead of each simulating it again (12 s of a 2-core
        machine for one DB8-like subject with 10-minute sessions). A worker on a node that cannot
        see the cache folder falls back to simulating.
        """
        from emgcore.data import PRESETS, load_byod, open_dataset, write_byod
        from emgcore.data.byod import MANIFEST
        from emgcore.recording import digest

        self.materialised = ""
        if self.opts.data not in PRESETS:
            return open_dataset(self.opts.data)
        folder = Path(self.cache) / "simulated" / f"{self.opts.data}-{digest(self.sim)[:12]}"
        if not (folder / MANIFEST).exists():
            tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
            write_byod(tmp, open_dataset(self.opts.data, **self.sim))
            try:
                tmp.replace(folder)  # atomic: a reader never sees half a dataset
            except OSError:  # another sweep wrote the same copy first
                shutil.rmtree(tmp, ignore_errors=True)
        self.materialised = str(folder)
        return load_byod(folder)

    def _tags(self, sid: str, state: dict) -> dict[str, str]:
        return {
            "emg.method": self.opts.method,
            "emg.sweep": sid,
            "emg.space_hash": self.space.digest(),
            "emg.git_commit": tracking.git_commit(),
            "emg.data": self.opts.data,
        } | ({"emg.study": state["study"]} if state.get("study") else {})

    def _summary(self, state: dict, final: dict[str, Any], seconds: float) -> None:
        metric = self.space.metric
        lines = ["", f"== sweep {state['sweep_id']} ({seconds / 60:.1f} min) =="]
        for name, st in state["stages"].items():
            lines.append(f"  {name:<14} {metric} {st['score']:+.4f}  {st['winner']}")
        if state.get("study_table"):
            lines.append(f"  study           {state['study']}: {state['study_table']} (+ .png)")
        if final:
            m, label = self.family.final_metric, self.family.final_label
            lines.append(
                f"  {label:<15} {final[m]:+.4f} +- {final[m + '_std']:.4f} "
                f"({'subjects x ' if m == 'heldout_r2' else ''}seeds)"
            )
            champ = "became champion" if final.get("became_champion") else "champion unchanged"
            what = final.get("registered") or f"{self.registry} v{final.get('registry_version')}"
            lines.append(f"  registry        {what}: {champ} ({final.get('champion_reason', '')})")
        lines.append(f"  MLflow UI       {_ui_command(self.uri)}")
        lines.append(
            f"  experiment      {self.opts.experiment or self.opts.method}, "
            f"run 'sweep {state['sweep_id']}'"
        )
        print("\n".join(lines), flush=True)


class _Progress:
    """Tune callback: one console line per trial event."""

    def __new__(cls, stage: str, metric: str) -> Any:
        from ray.tune import Callback

        class Progress(Callback):
            def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ANN001
                _print(f"  {stage} {trial.trial_id} started {trial.config['overrides']}")

            def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
                if "units_done" in result and "epoch" not in result and not result.get("done"):
                    _print(
                        f"  {stage} {trial.trial_id} unit {result['units_done']} done, "
                        f"{metric} so far {result.get(metric, math.nan):+.4f}"
                    )

            def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
                r = trial.last_result or {}
                _print(
                    f"  {stage} {trial.trial_id} finished: {metric} {r.get(metric, math.nan):+.4f}"
                )

            def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
                _print(f"  {stage} {trial.trial_id} FAILED: {_trial_error(trial)}")

        return Progress()


def _trial_error(trial: Any) -> str:
    """The last line of a failed trial's error (e.g. the NaN loss message)."""
    path = getattr(trial, "error_file", None) or ""
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reasons = [ln for ln in lines if "NonFiniteLossError" in ln]
    return (reasons or lines or ["unknown error"])[-1][:300]


def _result_error(r: Any) -> str:
    """A Tune result's error in one line ("" if none): the NaN-loss message when there is one."""
    if r.error is None:
        return ""
    text = str(r.error)
    found = [ln for ln in text.splitlines() if "NonFiniteLossError" in ln]
    return (found or [text.strip().splitlines()[-1] if text.strip() else "error"])[-1][:300]


def _leaderboard(grid: Any, points: list[dict], metric: str, mode: str) -> list[dict[str, Any]]:
    rows = []
    for r in grid:
        cfg = r.config or {}
        score = (r.metrics or {}).get(metric, math.nan)
        done = bool((r.metrics or {}).get("done"))
        err = _result_error(r)
        ok = r.error is None and done and isinstance(score, float) and math.isfinite(score)
        rows.append(
            {
                "trial": (r.metrics or {}).get("trial_id") or Path(str(r.path)).name,
                "overrides": json.dumps(cfg.get("overrides", {}), sort_keys=True),
                metric: score,
                "status": "ok" if ok else "failed",
                "error": err,
            }
        )
    sign = -1 if mode == "max" else 1
    rows.sort(key=lambda r: (r["status"] != "ok", sign * r[metric] if r["status"] == "ok" else 0))
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _stage_plot(rows: list[dict], stage: str, metric: str, path: Path) -> Path | None:
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(ok) + 1.2))
    labels = [r["overrides"][:60] for r in ok][::-1]
    ax.barh(range(len(ok)), [r[metric] for r in ok][::-1])
    ax.set_yticks(range(len(ok)), labels, fontsize=7)
    ax.set_xlabel(metric)
    ax.set_title(f"stage {stage}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _study_rows(grid: Any, points: list[dict], metric: str) -> list[dict[str, Any]]:
    """One row per study point, in grid order: the point, the final run's scores (``metric``
    and every ``eval_*`` the trial reported, with their ``_std`` over seeds), status."""
    order = {json.dumps(p, sort_keys=True): i for i, p in enumerate(points)}
    rows = []
    for r in grid:
        point = (r.config or {}).get("overrides", {})
        m = r.metrics or {}
        scores = {
            k: v
            for k, v in m.items()
            if (k.startswith(metric) or k.startswith("eval_")) and isinstance(v, int | float)
        }
        ok = r.error is None and bool(m.get("done")) and math.isfinite(scores.get(metric, math.nan))
        error = _result_error(r)
        rows.append({**point, **dict(sorted(scores.items())), "status": "ok" if ok else "failed"})
        rows[-1]["error"] = error
        rows[-1]["_order"] = order.get(json.dumps(point, sort_keys=True), len(order))
    rows.sort(key=lambda r: r.pop("_order"))
    keys = list(dict.fromkeys(k for r in rows for k in r))  # failed rows lack the scores
    return [{k: r.get(k, math.nan) for k in keys} for r in rows]


def _study_plot(rows: list[dict], study: spaces.Stage, metric: str, path: Path) -> Path | None:
    """Each score (mean +- std over seeds) against the study's grid: numbers on a numeric axis
    when the grid has one numeric key, else one tick per point."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(study.grid)
    numeric = len(keys) == 1 and all(isinstance(r[keys[0]], int | float) for r in ok)
    x = [r[keys[0]] for r in ok] if numeric else list(range(len(ok)))
    scores = [k for k in ok[0] if not k.endswith("_std") and f"{k}_std" in ok[0]]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k in scores:
        ax.errorbar(
            x,
            [r[k] for r in ok],
            yerr=[r[f"{k}_std"] for r in ok],
            marker="o",
            capsize=3,
            lw=2.5 if k == metric else 1.2,
            label=k,
        )
    if numeric:
        ax.set_xlabel(keys[0])
    else:
        ax.set_xticks(x, [", ".join(str(r[k]) for k in keys) for r in ok], fontsize=7)
        ax.set_xlabel(", ".join(keys))
    ax.set_ylabel("score (mean +- std over seeds)")
    ax.set_title(f"study {study.name}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _storage(path: str | None) -> str:
    if path and "://" in path:
        return path.rstrip("/")
    return str(Path(path or "ray_results").resolve())


def _ui_command(uri: str) -> str:
    if uri.startswith("sqlite:///"):
        return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    return f"open {uri}"


def _print(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", flush=True)


def _restore_signals(old: dict[int, Any]) -> None:
    for sig, h in old.items():
        signal.signal(sig, h)


if __name__ == "__main__":
    sys.exit(main())
