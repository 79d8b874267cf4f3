"""The sweep's state machine, behind ``python orchestration/sweep.py`` (the command line):
one :class:`Sweep` runs a method's stages as Ray Tune experiments (or a study), retrains and
registers the winner, and keeps ``sweep.json`` so that ``--resume`` continues it. It starts Ray
(a private local cluster, or ``--address``), ends every MLflow run it opened on any exit, and
turns SIGTERM/SIGINT into a clean stop. It never names a method: what it needs from one is
``emgcore.methods.METHODS[name]``; leaderboards and plots are :mod:`orchestration.results`'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from emgcore.errors import EmgDataError
from emgcore.methods import METHODS
from orchestration import launch, results, tracking
from orchestration import search_space as spaces
from orchestration.state import (
    HEARTBEAT_S,
    SweepStore,
    driver_gone,
    driver_id,
    new_sweep_id,
    sweep_id_example,
)

SMOKE = {"points_per_stage": 2, "seeds": (0, 1, 2)}
# the flags a sweep is started with that a bare ``--resume`` continues with (resource flags, the
# tracking URI and the storage path are the resume's own)
RESUMED_FLAGS = (
    "data",
    "config",
    "space",
    "stages",
    "subjects",
    "smoke",
    "duration",
    "sim_subjects",
    "study",
    "experiment",
    "registry_name",
    "skip_final",
    "mae_any_data",
    "cache",
)


@dataclass
class Options:
    method: str
    data: str = ""  # empty: the method's simulator preset
    config: str | None = None
    space: str | None = None
    stages: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()  # empty: the search space's ``subjects``
    smoke: bool | None = False  # None: not given (a resume takes the saved value)
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
    skip_final: bool | None = False
    study: str | None = None
    mae_any_data: bool | None = False


class Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGINT reached the driver: end every open run KILLED, then exit.

    A ``KeyboardInterrupt`` because Ray's blocking waits (``ray.get``) run signal handlers from
    C and let only ``KeyboardInterrupt`` and ``SystemExit`` through: any other exception raised
    there is reported as unraisable and dropped, and the wait goes on (a SIGTERM mid-training
    went unseen until the training ended, exit 0)."""


def _fit_off_the_main_thread(trainer: Any) -> Any:
    """``trainer.fit()`` in a helper thread, the main thread waiting: on the main thread Train
    V2 replaces SIGINT's handler with its own (it aborts the run and lets ``fit`` return, or
    exits 0 on the third Ctrl-C), so a Ctrl-C mid-training was no interruption to the driver.
    Off it, Train installs nothing (as under Tune) and the driver's handlers stay in charge;
    an interrupted driver leaves the thread waiting (a daemon) and ends Ray, which ends the run.
    Returns ``fit``'s result; raises what ``fit`` raised."""
    box: dict[str, Any] = {}

    def fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as e:  # handed to the caller below
            box["error"] = e

    thread = threading.Thread(target=fit, name="train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)  # short waits: a signal's handler runs between them
    if "error" in box:
        raise box["error"]
    return box["result"]


class Sweep:
    def __init__(self, opts: Options):
        self.opts = opts
        self.backend: str | None = None  # torch.distributed's; None: Ray's choice (start_ray)
        # under `ray job submit --working-dir` the defaults below would land in Ray's temporary
        # copy of the working directory: they go to $EMG_HOME instead, said in one line
        self.moved, note = job_defaults(opts)
        if note:
            _print(note)
        self.uri = tracking.resolve_uri(opts.tracking_uri or self.moved.get("tracking_uri"))
        # every tracking-store problem is one line and exit 2 here, before Ray or any training
        # (a new SQLite store is created here, once, under a lock)
        tracking.check_reachable(self.uri)
        self.tracker = tracking.Tracker(self.uri)
        self.store = SweepStore(_storage(opts.storage_path or self.moved.get("storage_path")))
        self.resumed = self._find_sweep() if opts.resume else None
        if self.resumed:  # the flags it started with, where this start leaves them out
            saved = self.resumed.get("flags", {})
            given = {k: saved[k] for k in RESUMED_FLAGS if k in saved and not getattr(opts, k)}
            for k in ("stages", "subjects"):  # JSON lists
                if k in given:
                    given[k] = tuple(given[k])
            opts = dataclasses.replace(opts, **given)
        opts = dataclasses.replace(
            opts,
            smoke=bool(opts.smoke),
            skip_final=bool(opts.skip_final),
            mae_any_data=bool(opts.mae_any_data),
        )
        self.opts = opts
        self.storage = self.store.storage
        self.method = m = METHODS[opts.method]
        if not opts.data:
            self.opts = opts = dataclasses.replace(opts, data=m.data)
        # paths travel to the Ray workers, whose working folder is not this one: absolute
        from emgcore.data import PRESETS

        data = opts.data if opts.data in PRESETS else _absolute(opts.data)  # presets win
        config = opts.config and _absolute(opts.config)  # files win (resolve_config)
        self.opts = opts = dataclasses.replace(opts, data=data, config=config)
        self.config = opts.config or (m.smoke_preset if opts.smoke else m.preset)
        from emgcore.config import load_yaml, resolve_config

        # fails early on a bad config
        self.base = load_yaml(m.config, resolve_config(self.config))
        path = Path(opts.space) if opts.space else spaces.path_for(opts.method)
        self.space = spaces.load(path, self.base)  # its values checked on the preset it runs
        self.space_path = str(path.resolve())
        if self.space.method != opts.method:
            raise EmgDataError(
                f"is {self.space.method}'s search space, not {opts.method}'s",
                source=path,
                field="method",
            )
        if opts.subjects:  # --subjects replaces the space's list (and so changes its digest)
            self.space = dataclasses.replace(self.space, subjects=tuple(opts.subjects))
        if unknown := set(opts.stages) - {s.name for s in self.space.stages}:
            raise EmgDataError(f"unknown stage(s) {sorted(unknown)}", source=path, field="--stages")
        if opts.study:
            self.space.study(opts.study)  # fails early, naming the space's studies
        self.tracker.check_experiment(opts.experiment or opts.method)  # not a deleted one
        self.sim: dict[str, Any] = dict(m.smoke_sim) if opts.smoke else {}
        if opts.duration:
            self.sim["duration_s"] = opts.duration
        if opts.sim_subjects:
            self.sim["n_subjects"] = opts.sim_subjects
        self.cache = str(
            Path(
                opts.cache
                or os.environ.get("EMGCORE_CACHE")
                or self.moved.get("cache", ".emgcore_cache")
            ).resolve()
        )
        self.registry = opts.registry_name or opts.method
        self.pretrained: dict[str, str] = {}  # the registered models it starts from (CPEP: MAEs)
        self.data_tags: dict[str, str] = {}  # the EMG's unit and channels, once data is read

    # -- the whole sweep -------------------------------------------------------------------------

    def run(self) -> int:

        handlers = self._install_signals()
        try:  # Ctrl-C / SIGTERM while starting: no run is open yet, one line says so
            state = self._open_state()
            self._check_subjects(state)  # bad data fails here, before Ray or MLflow runs start
            self._check_same_data(state)  # so does a resume on data that changed since
            self._check_pretrained(state)  # so does a starting model trained on other data
            self._end_dead_sweeps(state)  # and resuming a sweep that still runs
            self._save_state(state)  # and a storage path that takes no state, before any run
            self.start_ray()
            self._own_signals()  # Ray's start installed its own SIGTERM handler (exit 15)
            self._check_stop()
            self._warm_cache()  # a large data set: filtered once, across the cluster
            t0 = time.time()
            sid = state["sweep_id"]
            exp = self.tracker.experiment(self.opts.experiment or self.opts.method)
            self.exp = exp
            tags = self._tags(sid, state)
            self.deferred = True  # a signal from here waits for the try below to end the run
        except (Interrupted, KeyboardInterrupt):
            _restore_signals(handlers)
            name = self.stop or "SIGINT"
            _print(f"interrupted ({name}) while starting, before any run opened: start it again")
            return 128 + signal.Signals[name].value
        parent = self.tracker.open_run(exp, f"{sid}", f"sweep {sid}", tags)
        state["parent"] = parent
        state["status"], state["ended"] = "RUNNING", {}
        self._save_state(state)
        stop_heartbeat = self._heartbeat(parent)
        _print(
            f"sweep {sid}: {self.opts.method} on {self.opts.data}, {len(self.space.stages)} "
            f"stages, {self.concurrency} concurrent trial(s) x {self.opts.workers} worker(s); "
            f"MLflow {self.uri}"
        )
        status, code, how = "FINISHED", 0, "finished"
        try:  # from here on every failure ends the runs it reopened (never left RUNNING)
            self.deferred = False
            self._check_stop()  # one that arrived while the parent run opened
            self.links = self._ui(sid)
            _print(f"MLflow UI: {self.links.get('view', self.links['experiment'])}")
            self._log_sweep(state, parent)
            self.pretrained = self._pretrained_dependency(state, parent, tags)
            if state.get("study"):
                self._run_study(self.space.study(state["study"]), state, parent, tags)
            for stage in self.space.stages if not state.get("study") else ():
                if self.opts.stages and stage.name not in self.opts.stages:
                    continue
                self._check_stop()
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
                status, code, how = "FAILED", 1, f"failed: {type(e).__name__}: {e}"[:2000]
                self.tracker.set_tags(parent, {"emg.error": f"{type(e).__name__}: {e}"[:5000]})
                _print(f"sweep failed: {type(e).__name__}: {e}")
            else:
                # the shell's convention: 128 + the signal's number (SIGINT 130, SIGTERM 143)
                status, code = "KILLED", 128 + signal.Signals[self.stop or "SIGINT"].value
                how = f"interrupted by {self.stop or 'SIGINT'}"
                _print(
                    f"interrupted ({self.stop or 'SIGINT'}): open runs ended KILLED; continue "
                    f"with: {resume_command(self.opts.method, sid, self.store.storage, self.uri)}"
                )
        finally:
            _restore_signals(handlers)
            stop_heartbeat()
            self.tracker.end_orphans(exp, "emg.sweep", sid, "KILLED" if code else "FAILED")
            self.tracker.end(parent, status)
            _record_end(state, {"status": status, "how": how, "at": _now()})
            self._save_state(state)
            end_ray("this sweep's")
        return code

    # -- stages ----------------------------------------------------------------------------------

    def _run_stage(self, stage: spaces.Stage, state: dict, parent: str, tags: dict) -> None:

        sid = state["sweep_id"]
        fixed = dict(stage.fixed)
        for name in stage.inherit:
            fixed |= state["stages"].get(name, {}).get("winner", {})
        points = self._points(stage, fixed)
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
        spec["tracking"]["searched"] = [*stage.grid, *stage.choice]  # they name the trial runs
        grid = self._tune(stage.name, spec, points, sid, run, self.space.metric)
        rows = results.leaderboard(grid, points, self.space.metric, self.space.mode)
        ok = [r for r in rows if r["status"] == "ok"]
        board = self.store.local(sid) / f"leaderboard-{stage.name}.csv"
        results.write_csv(board, self._with_repeats(stage.name, rows))
        self.store.publish(sid, board)
        self.tracker.log_artifact(run, board, "leaderboards")
        self.tracker.log_artifact(parent, board, "leaderboards")
        plot = results.stage_plot(rows, stage.name, self.space.metric, board.with_suffix(".png"))
        if plot:
            self.store.publish(sid, plot)
            self.tracker.log_artifact(run, plot, "plots")
        if not ok:
            self.tracker.end(run, "FAILED")
            raise RuntimeError(f"stage {stage.name}: every trial failed ({rows[0]['error']})")
        best = ok[0]
        winner = {**{k: v for k, v in fixed.items()}, **json.loads(best["overrides"])}
        self.tracker.log_params(run, {f"winner.{k}": v for k, v in winner.items()})
        self.tracker.set_tags(run, {"winner.trial": best["trial"]})
        metric = self.space.metric
        # emg.winner on the winning trial's run and on the stage run, with a note linking them
        score = f"{metric} {best[metric]:+.4f}"
        trial_key = f"{stage_key}/{best['trial']}"
        self.tracker.mark_winner(self.exp, run, trial_key, best["trial"], score)
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
        from ray.tune.logger import JsonLoggerCallback

        spec["storage"] = f"{self.storage}/{sid}/{name}-train"
        driver = tune.with_resources(launch.tune_driver, launch.TUNE_DRIVER_RESOURCES)
        param_space = {
            "spec": spec,
            "method": launch.pack_method(self.method),
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
                    # the JSON logger explicitly: _quiet_ray turns Tune's defaults off
                    callbacks=[
                        _Progress(name, metric, lambda: bool(self.stop)),
                        JsonLoggerCallback(),
                    ],
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
        spec["tracking"]["searched"] = list(study.grid)  # they name the trial runs
        _print(f"study {study.name}: {len(points)} point(s) x seeds {list(seeds)}")
        grid = self._tune(name, spec, points, sid, run, self.method.final_metric)
        rows = results.study_rows(grid, points, self.method.final_metric)
        table = self.store.local(sid) / f"{name}.csv"
        results.write_csv(table, rows)
        files = [
            table,
            results.study_plot(rows, study, self.method.final_metric, table.with_suffix(".png")),
        ]
        for f in filter(None, files):
            self.store.publish(sid, f)
            self.tracker.log_artifact(run, f, "study")
            self.tracker.log_artifact(parent, f, "study")
        failed = [r for r in rows if r["status"] != "ok"]
        self.tracker.end(run, "FAILED" if len(failed) == len(rows) else "FINISHED")
        if len(failed) == len(rows):
            raise RuntimeError(f"study {study.name}: every trial failed ({rows[0]['error']})")
        state["study_table"] = f"{self.store.dir(sid)}/{table.name}"
        self._save_state(state)
        metric = self.method.final_metric
        for r in rows:
            point = {k: r[k] for k in study.grid}
            value = f"{r[metric]:+.4f} +- {r[metric + '_std']:.4f}" if r["status"] == "ok" else "-"
            _print(f"study {study.name}: {point} {metric} {value} {r['error']}")

    def _points(self, stage: spaces.Stage, fixed: dict | None = None) -> list[dict[str, Any]]:
        """The stage's grid, plus ``budget`` seeded draws from its ``choice`` keys, less the
        points that repeat another on the base config with ``fixed`` (the stage's fixed values
        and inherited winners): one line says how many and why, and ``self.repeats[stage]``
        keeps them for the leaderboard (:func:`orchestration.search_space.distinct`)."""
        points = stage.grid_points()
        if stage.choice:
            rng = random.Random(f"{self.space.digest()}/{stage.name}")
            draws = [
                {k: rng.choice(list(v)) for k, v in stage.choice.items()}
                for _ in range(stage.budget or 1)
            ]
            points = [{**p, **d} for p in points for d in draws]
        found = spaces.distinct(self.base, points, {**stage.fixed, **(fixed or {})})
        points = found.points
        if self.opts.smoke and len(points) > SMOKE["points_per_stage"]:
            points = [points[0], points[-1]]  # both ends of the grid
        if found.repeats:
            study = stage is self.space.studies.get(stage.name)
            _print(found.message(stage.name, "study" if study else "stage"))

        def plain(p: dict) -> dict:  # what Tune holds and the leaderboard's ``overrides`` show
            return {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()}

        self.repeats = getattr(self, "repeats", {}) | {
            stage.name: [(plain(p), plain(q)) for p, q in found.repeats if q in points]
        }
        return [plain(p) for p in points]

    def _with_repeats(self, stage: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Leaderboard ``rows`` plus a row per point :meth:`_points` skipped: status ``duplicate
        of <trial>`` and that trial's score, copied (the same experiment; not ``ok``, so it is
        never selected)."""
        ran = {r["overrides"]: r for r in rows}
        out = list(rows)
        for point, same in getattr(self, "repeats", {}).get(stage, []):
            src = ran.get(json.dumps(same, sort_keys=True), {})
            row = {k: src.get(k, "") for k in rows[0]} | {"trial": "", "error": ""}
            row |= {"overrides": json.dumps(point, sort_keys=True)}
            out.append(row | {"status": f"duplicate of {src.get('trial', '?')}"})
        return out

    # -- what a method starts from (CPEP and EMBridge: the registered MAEs) ---------------------

    def _pretrained_dependency(self, state: dict, parent: str, tags: dict) -> dict[str, str]:
        """``{key: uri}``: the registered champions of ``method.starts_from`` a sweep starts
        from (CPEP / EMBridge: ``mae-emg`` and ``mae-pose``), pinned to their versions (a
        champion that moves mid-sweep changes nothing). When any is missing that method is
        trained first with its base config (one seed, scored and registered as its sweep's
        final run would)."""
        source, keys = self.method.starts_from, self.method.pretrained_keys
        if source is None:
            return {}
        if state.get("pretrained"):
            return state["pretrained"]
        sid, client = state["sweep_id"], self.tracker.client
        found = {k: tracking.champion(client, f"{source}-{k}") for k in keys}
        names = " / ".join(f"{source}-{k}@champion" for k in keys)
        if any(v is None for v in found.values()):
            _print(f"no {names}: pre-training them first ({source})")
            key = f"{sid}/{source}-pretraining"
            run_tags = {**tags, "emg.stage": f"{source}-pretraining"}
            run = self.tracker.open_run(
                self.exp, key, f"{source} pre-training", run_tags, parent=parent
            )
            spec = self._spec("final", {}, key, run, run_tags)
            spec |= {"method": source, "registry": {"name": source}, "pretrained": {}}
            spec["seeds"] = [self.base.seeds[0]]
            spec["tracking"]["run_id"] = run
            self._fit_once(spec, METHODS[source], f"{sid}-{source}", sid)
            # the versions this run registered, champions or not (below chance they are not)
            tags = client.get_run(run).data.tags
            found = {k: tags[f"registry.{source}-{k}.version"] for k in keys}
        else:
            found = {k: v.version for k, v in found.items()}
        pinned = {k: f"models:/{source}-{k}/{v}" for k, v in found.items()}
        self.tracker.log_params(parent, {f"{source}.{k}": uri for k, uri in pinned.items()})
        _print(f"starting from {' and '.join(pinned.values())}")
        state["pretrained"] = pinned
        self._save_state(state)
        return pinned

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
        # every evaluation subject the config names (the paper reports them all), not only the
        # subjects that chose the hyper-parameters; the champion rule reads the selection score
        spec["subjects"] = []
        spec["selection"] = {"value": self._selection_score(state), "subjects": state["subjects"]}
        spec["tracking"]["run_id"] = run
        _print(f"final: winner retrained with seeds {list(seeds)} -> held-out data")
        m = self._fit_once(spec, self.method, f"{sid}-final", sid)
        state["final"] = {k: v for k, v in m.items() if isinstance(v, int | float | str | bool)}
        self._save_state(state)
        self.tracker.log_params(parent, {f"winner.{k}": v for k, v in winner.items()})
        logger = self.tracker.logger(parent)
        metric = self.method.final_metric
        logger.log({metric: m[metric], f"{metric}_std": m[f"{metric}_std"]}, 0)
        logger.flush()
        return m

    def retrain(
        self,
        recipe: Mapping[str, Any],
        seeds: Sequence[int],
        run: str,
        key: str,
        name: str,
        rescore: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Retrain a registered version's ``recipe`` (its ``recipe`` tag,
        :func:`orchestration.launch.recipe`) with ``seeds``, as its final run did, into the
        open MLflow run ``run`` (``key``: its ``emg.key``) of experiment ``self.exp``; nothing
        is registered. ``name``: the Train run's name, unique to this retrain, so a second
        start resumes it from its checkpoints (Train V2 resumes by name). Starts Ray when it
        is not running (a caller's own signal handlers then need installing again: Ray's start
        replaces SIGTERM's). Returns the trial's final metrics: its summary, with the per-seed
        scores (``seeds_<metric>``) and cost figures; with ``rescore`` (``{"name",
        "version"}``: the version the recipe came from) also that version's artifact scored
        again on the same split (``champion_rescored``, :func:`orchestration.worker.
        rescore_artifact`). The data must be the recipe's,
        fingerprint and all: other data raises :class:`EmgDataError` (a changed data set is
        not a regression)."""
        import ray

        from emgcore.recording import digest

        self.sim = dict(recipe.get("sim") or {})
        recs = self._load_data()
        self._check_data(recs)
        self.fingerprint = digest(sorted(r.fingerprint for r in recs))[:12]
        if recipe.get("fingerprint") and recipe["fingerprint"] != self.fingerprint:
            raise EmgDataError(
                f"the champion was trained on data {recipe['fingerprint']}, {self.opts.data} "
                f"is now {self.fingerprint}: the data changed, so its scores are not comparable "
                "(sweep again to register a champion on this data)",
                source=self.opts.data,
                field="fingerprint",
            )
        self.subjects = list(recipe.get("subjects") or [])
        self.pretrained = dict(recipe.get("pretrained") or {})
        if not ray.is_initialized():
            self.start_ray()
        tags = {"emg.method": self.opts.method, "emg.data": self.opts.data}
        spec = self._spec("final", dict(recipe.get("overrides") or {}), key, run, tags)
        spec |= {"seeds": list(seeds), "registry": None, "report": False, "selection": {}}
        spec["rescore"] = dict(rescore) if rescore else None
        spec["tracking"]["run_id"] = run
        return self._fit_once(spec, self.method, name, name)

    def _selection_score(self, state: dict) -> float:
        """The final configuration's selection score: the best trial of the last stage that ran
        (it holds every earlier stage's winner), or NaN when no stage ran."""
        done = [state["stages"][s.name] for s in self.space.stages if s.name in state["stages"]]
        return float(done[-1]["score"]) if done else math.nan

    # -- pieces ----------------------------------------------------------------------------------

    def _fit_once(self, spec: dict, method: Any, name: str, sid: str) -> dict[str, Any]:
        """One TorchTrainer run outside Tune (final retrain, MAE pre-training): its metrics."""
        # its reports reach this process through a file the Train controller (on this node)
        # appends to: one line per finished unit, and one a while during a long unit
        folder = Path(tempfile.mkdtemp(prefix="emg-progress-"))
        progress = _FitProgress(name.removeprefix(f"{sid}-"), method.final_metric)
        trainer = launch.make_trainer(
            spec,
            launch.pack_method(method),
            self._trainer_args(),
            name,
            f"{self.storage}/{sid}",
            (launch.progress_file(str(folder / "progress.jsonl")),),
        )
        launch.release_leaked_placement_groups()
        stop = progress.follow(folder / "progress.jsonl")
        try:
            m = dict(_fit_off_the_main_thread(trainer).metrics)
        finally:
            stop()
            shutil.rmtree(folder, ignore_errors=True)
        launch.release_placement_group(m.get("placement_group", ""))
        return m

    def _install_signals(self) -> dict[int, Any]:
        """SIGTERM/SIGINT end the sweep cleanly: runs KILLED, Tune state saved for --resume.

        This handler stays in charge inside ``tuner.fit()`` too: Tune's own SIGINT handler is
        turned off (``TUNE_DISABLE_SIGINT_HANDLER``; with it a Ctrl-C mid-stage went unseen
        here and the stage ended "every trial failed"), and a signal there is handed to Tune as
        SIGUSR1, its other stop signal (it stops the trials and saves the experiment), by the
        stage's :class:`_Progress` callback at Tune's next step. Outside
        Tune the handler raises :class:`Interrupted`, or, while the parent run opens, leaves
        ``self.stop`` for :meth:`_check_stop`. An ``Interrupted`` that lands where Python
        ignores exceptions (an at-fork hook while Ray starts) is kept quiet; ``self.stop``
        still ends the sweep at the next check.
        """

        def handler(signum: int, frame: Any) -> None:
            if self.stop:  # already ending: the open runs end KILLED first (SIGKILL forces)
                return
            self.stop = signal.Signals(signum).name
            if not (self.in_tune or self.deferred):
                raise Interrupted(self.stop)

        def unraisable(u: Any) -> None:
            if not isinstance(u.exc_value, Interrupted):
                unraisable.before(u)  # type: ignore[attr-defined]

        unraisable.before = sys.unraisablehook  # type: ignore[attr-defined]
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        sys.unraisablehook = unraisable
        self.stop, self.in_tune, self.deferred = "", False, False
        self._handler = handler
        return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _own_signals(self) -> None:
        """Put this sweep's handlers back: Ray's start installs its own on SIGTERM (it exits
        with status 15, no run ended; its native one, which aborted, is off: :meth:`_start_ray`)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _check_stop(self) -> None:
        """Raise :class:`Interrupted` for a signal that arrived where it could not raise."""
        if self.stop:
            raise Interrupted(self.stop)

    def _spec(self, mode: str, overrides: dict, key: str, parent: str, tags: dict) -> dict:
        """What a trial's workers need (:func:`orchestration.launch.trial_spec`)."""
        from orchestration.launch import trial_spec

        spec = trial_spec(
            method=self.opts.method,
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
        return spec | {"pretrained": self.pretrained}

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
            "backend": self.backend,
        }

    def start_ray(self) -> None:
        """Start a private local Ray, or connect to ``--address`` / ``$RAY_ADDRESS``; work out
        how many trials run at once.

        While Ray starts, its own SIGTERM handler is in place (it exits with status 15): such an
        exit is turned into :class:`Interrupted`, so the caller ends as interrupted (143). The
        caller installs its own handlers again right after (:meth:`_own_signals`)."""
        try:
            self._start_ray()
        except SystemExit as e:
            if e.code != signal.SIGTERM:
                raise
            self.stop = "SIGTERM"
            raise Interrupted("SIGTERM") from None

    def _start_ray(self) -> None:
        import logging

        import ray
        from ray._private import ray_constants

        # Ray's C++ failure-signal handler (stack traces on crashes) also takes SIGTERM while
        # ray.init starts this process's core worker, and aborts it (exit -6) before any run is
        # ended. This driver handles its own signals: off here, in this process only (a module
        # setting read at the core worker's start, not the environment its workers inherit).
        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
        _quiet_ray()
        address = self.opts.address or os.environ.get("RAY_ADDRESS")
        if address:
            # in a `ray job submit` the job's working dir is already on every worker's path
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            where = f"connected to the Ray cluster at {address}"
        else:
            local = launch.local_cluster_options()
            root = str(Path(__file__).resolve().parent.parent)
            local["runtime_env"]["env_vars"]["PYTHONPATH"] = root
            # address="local": a new private cluster even when a `ray start` one runs here (a
            # bare ray.init() would attach to it via ray_current_cluster, and then refuse the
            # _system_config); it ends with this process
            ray.init(
                address="local",
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                log_to_driver=False,
                logging_level=logging.WARNING,
                **local,
            )
            where = "started a private local Ray cluster (no --address or RAY_ADDRESS given)"
        logs = _ray_logs()
        _divert_raylet_messages(Path(logs) / f"sweep-driver-{os.getpid()}-raylet.log")
        _print(f"{where}; Ray's own messages go to its logs: {logs}")
        res = ray.cluster_resources()
        o = self.opts
        per_trial = {"CPU": o.workers * o.cpus_per_worker, "GPU": o.workers * o.gpus_per_worker}
        # fractional GPUs pack: --gpus-per-worker 0.25 runs four one-worker trials per GPU.
        # --max-concurrent wins, above what fits now too: on an autoscaling cluster the nodes
        # come for trials that wait for them
        fits = max(1, min(int(res.get(k, 0) // v) for k, v in per_trial.items() if v > 0))
        self.concurrency = o.max_concurrent or fits
        if self.concurrency > fits:
            _print(
                f"{self.concurrency} trials at once (--max-concurrent); the cluster holds {fits} "
                "now: the others wait for nodes (an autoscaler adds them; without one they wait "
                "for a trial to end)"
            )
        if o.gpus_per_worker and not res.get("GPU"):
            if not address:  # a private local Ray: no GPU ever joins it
                raise EmgDataError(
                    "this machine has no GPU, so no trial asking for one could start: leave "
                    "--gpus-per-worker out to train on CPU, or give the --address of a cluster "
                    "with GPUs",
                    field="--gpus-per-worker",
                )
            _print("the cluster has no GPU now: trials wait for an autoscaler to add GPU nodes")
        if o.gpus_per_worker and launch.declared_gpus_only(ray.nodes()):
            # Ray's default backend for GPU workers, NCCL, would fail every trial on a CPU
            self.backend = "gloo"
            _print(
                "the cluster's GPUs are declared, not detected (ray start --num-gpus on a CPU "
                "machine, or a container started without --gpus all): trials are packed by "
                f"--gpus-per-worker {o.gpus_per_worker:g} and train on CPU"
            )

    def _find_sweep(self) -> dict:
        """The state of the sweep ``--resume`` names (``latest``: this method's newest) under
        the storage path. When no ``--storage-path`` was given and ``./ray_results`` does not
        hold it, the tracking server says where the sweep keeps it (its parent run's
        ``emg.storage``): a resume works from any directory or machine that sees the same
        storage path and tracking server."""
        o = self.opts
        sid = None if o.resume == "latest" else o.resume
        if sid is not None and (not re.fullmatch(r"[\w.-]+", sid) or ".." in sid):
            raise EmgDataError(
                f"{sid!r} is not a sweep id (e.g. {sweep_id_example(o.method)})",
                source=self.store.storage,
                field="--resume",
            )
        sid = sid or self.store.latest(o.method)
        state = self.store.read(sid) if sid else None
        if state is None and not o.storage_path:
            for run in self.tracker.sweeps(sweep=sid, method=o.method)[:1]:
                store = SweepStore(run.data.tags["emg.storage"])
                found = store.read(run.data.tags[tracking.KEY])
                if found is not None:
                    self.store, state, sid = store, found, found["sweep_id"]
        if state is None:
            what = f"no sweep {sid}" if sid else f"no {o.method} sweep to resume"
            raise EmgDataError(
                f"{what} in {self.store.storage} (nor one the tracking server {self.uri} knows):"
                " give the --storage-path it ran with",
                source=self.store.dir(sid or ""),
                field="--resume",
            )
        if state.get("status") == "FINISHED":
            raise EmgDataError(
                f"sweep {sid} already finished", source=self.store.dir(sid), field="--resume"
            )
        return state

    def _open_state(self) -> dict:
        defining = self._defining()
        if self.resumed is not None:
            state = self.resumed
            sid = state["sweep_id"]
            if "mae" in state:  # saved before the method registry named it generically
                state["pretrained"] = state.pop("mae")
            self._check_same_sweep(state, Path(self.store.dir(sid)) / "sweep.json")
            _print(f"resuming sweep {sid} from {self.store.dir(sid)}")
        else:
            sid = new_sweep_id(self.opts.method)  # unique even when started in the same second
            state = {"sweep_id": sid, "stages": {}, "started": time.time()}
            state["defining"] = defining
            if self.opts.study:
                state["study"] = self.opts.study
        # what a bare --resume continues with, resolved so that it means the same from anywhere
        state["flags"] = {k: getattr(self.opts, k) for k in RESUMED_FLAGS} | {
            "data": defining["--data"],
            "config": self.config,
            "space": self.space_path,
            "cache": self.cache,
        }
        self.sweep_id = sid
        state.setdefault("stages", {})
        return state

    def _log_sweep(self, state: dict, parent: str) -> None:
        """The parent run's params: what defines the sweep, logged once (a resume cannot change
        them). The resources of each start are a tag, ``emg.resume.<n>`` for the n-th resume."""
        self.tracker.set_tags(parent, {"emg.data_fingerprint": self.fingerprint} | self.data_tags)
        params = {
            "sweep.data": self.opts.data,
            "sweep.config": self.config,
            "sweep.smoke": self.opts.smoke,
            **({"sweep.subjects": ",".join(self.opts.subjects)} if self.opts.subjects else {}),
            **{f"sweep.sim.{k}": v for k, v in self.sim.items()},
            **{f"split.{k}": v for k, v in state.get("split", {}).items()},
        }
        if not self.opts.resume:
            params["sweep.workers"] = self.opts.workers
        self.tracker.log_params(parent, params)
        if self.opts.resume:
            state["resumes"] = n = int(state.get("resumes", 0)) + 1
            self._save_state(state)
            self.tracker.set_tags(parent, {f"emg.resume.{n}": self._resources()})

    def _resources(self) -> str:
        """The flags that only change resources (free to differ on a resume), as given."""
        o = self.opts
        return " ".join(
            f"--{k.replace('_', '-')} {getattr(o, k)}"
            for k in ("workers", "gpus_per_worker", "cpus_per_worker", "max_concurrent", "address")
            if getattr(o, k) is not None
        )

    def _defining(self) -> dict[str, Any]:
        """The flags that change results, resolved (``--data``/``--config`` to their defaults),
        and the search space's digest: saved at the first start, the same on every resume."""
        o = self.opts
        return {
            "--data": str(Path(o.data).resolve()) if Path(o.data).exists() else o.data,
            "--config": self.config,
            "--subjects": ",".join(o.subjects) or None,
            "--smoke": o.smoke,
            "--duration": o.duration,
            "--sim-subjects": o.sim_subjects,
            "--study": o.study,
            "search space": self.space.digest(),
        }

    def _check_same_sweep(self, state: dict, path: Path) -> None:
        """A resume refuses, in one line before anything starts, flags or a search space that
        differ from the sweep's first start (a sweep state from before they were saved: no
        check). ``--study`` may be left out: the state names it."""
        saved = state.get("defining")
        if not saved:
            return
        now = self._defining()
        if self.opts.study is None:
            now["--study"] = saved.get("--study")
        changed = [k for k in saved if saved[k] != now.get(k)]
        if changed:
            what = ", ".join(f"{k} {saved[k]!r} -> {now.get(k)!r}" for k in changed)
            raise EmgDataError(
                f"sweep {state['sweep_id']} was started otherwise ({what}): leave those flags out "
                "to continue with the ones it started with; only --workers, --gpus-per-worker, "
                "--cpus-per-worker, --max-concurrent and --address may change",
                source=path,
                field="--resume",
            )

    def _check_same_data(self, state: dict) -> None:
        """The data fingerprint is saved at the first start; a resume on changed data (the same
        --data, other recordings) refuses in one line, before Ray starts."""
        saved = state.setdefault("data_fingerprint", self.fingerprint)
        if saved != self.fingerprint:
            raise EmgDataError(
                f"sweep {state['sweep_id']} started on data {saved}, {self.opts.data} is now "
                f"{self.fingerprint}: the data changed; start a new sweep",
                source=self.opts.data,
                field="--resume",
            )

    def _save_state(self, state: dict) -> None:
        self.store.write(state["sweep_id"], state)

    def _end_dead_sweeps(self, state: dict) -> None:
        """Sweeps whose driver died without ending its runs (SIGKILL, an OOM kill, a lost node)
        left them RUNNING: end them KILLED and record how in their state, before this sweep
        starts. Resuming a sweep whose driver is still alive is refused in one line."""
        sid = state["sweep_id"]
        for run in self.tracker.sweeps(running=True):
            tags = run.data.tags
            other, beat = tags.get(tracking.KEY, ""), tags.get("emg.heartbeat")
            why = driver_gone(tags["emg.driver"], float(beat) if beat else None)
            if not why:
                if other == sid:
                    raise EmgDataError(
                        f"sweep {sid} is still running (driver {tags['emg.driver']}): stop it "
                        "before resuming it",
                        source=self.store.dir(sid),
                        field="--resume",
                    )
                continue
            n = self.tracker.end_orphans(run.info.experiment_id, "emg.sweep", other, "KILLED")
            ended = {"status": "KILLED", "how": why, "at": _now(), "found_by": sid}
            self.tracker.set_tags(run.info.run_id, {"emg.ended": f"KILLED: {why}"})
            note = ""
            try:  # its state records how it ended, where its storage path can be reached
                if other == sid:  # the sweep this start resumes
                    _record_end(state, ended)
                    self._save_state(state)
                else:
                    store = SweepStore(tags.get("emg.storage", ""))
                    if (old := store.read(other)) is not None:
                        store.write(other, _record_end(old, ended))
            except Exception as e:  # another machine's storage: say so, go on
                note = f"; its sweep.json was not updated ({type(e).__name__}: {e})"
            _print(f"sweep {other} was left RUNNING ({why}): {n} run(s) ended KILLED{note}")

    def _heartbeat(self, parent: str) -> Callable[[], None]:
        """Mark the parent run as this driver's (:func:`heartbeat`, with ``emg.storage``), so
        that a later start can tell a dead driver's RUNNING runs from a live one's."""
        return heartbeat(self.tracker, parent, {"emg.storage": self.store.storage})

    def _check_subjects(self, state: dict) -> None:
        """The space's subjects when the data has them; else every subject, said out loud."""
        from emgcore.recording import digest

        recs = self._load_data()
        self.recordings = recs  # lazily loaded files are paths and offsets; the cache warms them
        paired = self.method.needs_kinematics
        have = sorted({r.subject for r in recs if r.kinematics is not None or not paired})
        if not have:
            raise EmgDataError(
                f"no recording has kinematics (joint angles, DoA or glove): {self.opts.method} "
                "learns from EMG paired with them",
                source=self.opts.data,
                field="kinematics",
            )
        wanted = [s for s in self.space.subjects if s in have]
        if self.space.subjects and len(wanted) < len(self.space.subjects):
            if self.opts.subjects:  # asked for by name: refused, never replaced by every subject
                raise EmgDataError(
                    f"data has no subject(s) {sorted(set(self.space.subjects) - set(have))}; "
                    f"it has {have}",
                    source=self.opts.data,
                    field="--subjects",
                )
            _print(self._subjects_note(have))
            wanted = have
        self.subjects = wanted or have
        state["subjects"] = self.subjects
        self._check_data(recs)
        self.fingerprint = digest(sorted(r.fingerprint for r in recs))[:12]
        self.data_tags = data_tags(recs)
        if self.method.session_split:  # which session is held out is chosen on purpose
            train, test = self.method.session_split({r.session for r in recs}, self.base)
            state["split"] = {"train_sessions": ",".join(train), "test_session": test}
            _print(
                f"split: sessions {', '.join(train)} train (session CV selects on them), "
                f"{test} held out for the test score only"
            )

    def _check_data(self, recs: list) -> None:
        """The method's own needs of the data (``Method.check_data``), its error naming the
        data when the method's does not."""
        if self.method.check_data is None:
            return
        try:
            self.method.check_data(self.base, recs)
        except EmgDataError as e:
            if e.source is None:
                e.source = str(self.opts.data)
                e.args = (str(e),)
            raise

    def _subjects_note(self, have: list[str]) -> str:
        """Information, not an error: the space names subjects (e.g. the published data set's)
        the data lacks, so every trial is scored on all of the data's subjects instead."""
        from emgcore.data import PRESETS

        named, missing = self.space.subjects, [s for s in self.space.subjects if s not in have]
        data = self.opts.data
        source = f"the simulator's {data} data" if data in PRESETS else f"the data {data}"
        lacks = "has none of them" if len(missing) == len(named) else f"lacks {', '.join(missing)}"
        return (
            f"subjects: the search space scores trials on {', '.join(named)}; {source} {lacks}, "
            f"so every trial is scored instead on {_all_of(have)}"
        )

    def _check_pretrained(self, state: dict) -> None:
        """A method starts from the registered champions of ``starts_from`` only when those
        were trained on this sweep's data and split (their ``data_fingerprint`` and ``split``
        tags), unless ``--mae-any-data``; else one line naming the model, exit 2."""
        source, m = self.method.starts_from, self.method
        if source is None or state.get("pretrained"):
            return
        want = (self.fingerprint, m.split_id(self.base) if m.split_id else "?")
        for k in m.pretrained_keys:
            v = tracking.champion(self.tracker.client, f"{source}-{k}")
            if v is None or self.opts.mae_any_data:
                continue  # a missing one is trained on this data first
            have = (v.tags.get("data_fingerprint", "?"), v.tags.get("split", "?"))
            if have != want:
                raise EmgDataError(
                    f"{source}-{k}@champion v{v.version} was pre-trained on data {have[0]} split "
                    f"{have[1]}, this sweep's is data {want[0]} split {want[1]}: run "
                    f"'sweep.py {source}' on this data first, or pass --mae-any-data",
                    source=self.uri,
                    field=f"{source}-{k}@champion",
                )

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

    def _warm_cache(self) -> None:
        """Build the preprocessing cache with Ray Data before the trials start, when the
        method reads one and the data is large (:mod:`orchestration.cache`)."""
        from orchestration import cache

        plan = self.method.cache_plan
        if plan is None:
            return
        pairs = plan(self.base, self.recordings)
        size = cache.emg_bytes(pairs) / 2**30
        if size <= cache.warm_threshold():
            return
        if not cache.shared_everywhere(self.cache):
            _print(f"preprocessing cache: {size:.2g} GB of EMG; {self.cache} is not on storage "
                   "every node sees, so each node builds what its trials read")  # fmt: skip
            return
        _print(f"preprocessing cache: {len(pairs)} recordings, {size:.2g} GB of EMG, built with "
               f"Ray Data before the trials start ({self.cache})")  # fmt: skip
        got = cache.warm(pairs, self.cache)
        _print(
            f"preprocessing cache: {got['built']:.0f} built ({got['hours']:.2g} recording-h) in "
            f"{got['seconds']:.0f} s, {got['cached']:.0f} already there"
        )

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
            m, label = self.method.final_metric, self.method.final_label
            lines.append(
                f"  {label:<15} {final[m]:+.4f} +- {final[m + '_std']:.4f} "
                f"(mean +- population sd over {self.method.final_over})"
            )
            if state.get("split"):  # a held-out session: who chose, who was scored
                scored = final.get("scored", "").split(",")
                lines.append(
                    f"  chosen on       {', '.join(state['subjects'])} (session CV on "
                    f"{state['split']['train_sessions']}); held-out "
                    f"{state['split']['test_session']} scored on all {len(scored)}: "
                    f"{', '.join(scored)}"
                )
            champ = "became champion" if final.get("became_champion") else "champion unchanged"
            what = final.get("registered") or f"{self.registry} v{final.get('registry_version')}"
            lines.append(f"  registry        {what}: {champ} ({final.get('champion_reason', '')})")
        links = getattr(self, "links", {})
        if "command" in links:
            lines.append(f"  MLflow UI       {links['command']}")
        lines.append(
            f"  experiment      {self.opts.experiment or self.opts.method}, "
            f"run 'sweep {state['sweep_id']}'"
        )
        for what, label in (("view", "runs"), ("experiment", "all runs"), ("model", "model")):
            if what in links:  # model-training mode: the UI opens in GenAI mode otherwise
                lines.append(f"  {label:<15} {links[what]}")
        print("\n".join(lines), flush=True)
        if state.get("parent"):  # the parent run's description: the same summary
            note = "\n".join(["```", *lines[2:], "```"])
            self.tracker.set_tags(state["parent"], {tracking.NOTE: note})

    def _ui(self, sid: str) -> dict[str, str]:
        """Save this sweep's view of its runs in the experiment (its metric, searched-value
        and winner columns, :func:`tracking.sweep_view`) and return the UI links that open it
        (:func:`tracking.ui_links`): the summary prints them."""
        final = [self.method.final_metric, f"{self.method.final_metric}_std"]
        searched = [k for s in self.space.stages for k in (*s.grid, *s.choice)]
        searched += [k for s in self.space.studies.values() for k in s.grid]
        state = tracking.sweep_view(
            sid, self.space.metric, self.space.mode, final, list(dict.fromkeys(searched))
        )
        key = self.tracker.save_view(self.exp, sid, f"sweep {sid}", state)
        registry = None if self.opts.skip_final or self.opts.study else self.registry
        return tracking.ui_links(self.uri, self.exp, key, registry)


def end_ray(whose: str) -> None:
    """Leave nothing running: Train's detached helper actors (on a cluster the job was
    submitted to, they outlive the driver), then this process's Ray. ``whose`` names them in
    the line said when they cannot be ended (the run's outcome stands)."""
    import ray

    if not ray.is_initialized():
        return
    try:
        launch.end_detached_actors()
    except Exception as e:
        _print(f"could not end {whose} detached Ray actors: {type(e).__name__}: {e}")
    ray.shutdown()


def heartbeat(
    tracker: tracking.Tracker, run_id: str, tags: Mapping[str, str] | None = None
) -> Callable[[], None]:
    """Mark ``run_id`` as this process's (``emg.driver``, :func:`driver_id`, and ``tags``) and
    refresh its ``emg.heartbeat`` every ``HEARTBEAT_S`` from a daemon thread, so that another
    process can tell a dead driver's RUNNING run from a live one's (:func:`driver_gone`: the
    pid on this host, the heartbeat elsewhere). Returns the function that stops it."""
    tracker.set_tags(
        run_id, {"emg.driver": driver_id(), **(tags or {}), "emg.heartbeat": f"{time.time():.0f}"}
    )
    done = threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a tracking outage: the next beat retries
                tracker.set_tags(run_id, {"emg.heartbeat": f"{time.time():.0f}"})

    threading.Thread(target=beat, name="emg-heartbeat", daemon=True).start()
    return done.set


class _Progress:
    """Tune callback: one console line per trial event; and the sweep's stop request
    (``stopping()`` true) handed to Tune as SIGUSR1, its stop signal, from Tune's own loop,
    where Tune's handler for it is certainly installed (the default action of SIGUSR1 would
    end the process)."""

    def __new__(cls, stage: str, metric: str, stopping: Callable[[], bool]) -> Any:
        from ray.tune import Callback

        class Progress(Callback):
            told = False

            def on_step_begin(self, iteration, trials, **info):  # noqa: ANN001
                if stopping() and not self.told:
                    self.told = True
                    signal.raise_signal(signal.SIGUSR1)

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
                # the reason here; the whole traceback in the trial's error file (not on the
                # console: _quiet_ray)
                where = f" (traceback: {trial.error_file})" if trial.error_file else ""
                _print(f"  {stage} {trial.trial_id} FAILED: {results.trial_error(trial)}{where}")

        return Progress()


# Where a sweep run as a Ray job keeps what would otherwise be lost (job_defaults).
EMG_HOME = "EMG_HOME"
JOB_HOME = "~/emg-orchestra"


def ray_job_copy(env: Mapping[str, str] | None = None, cwd: str | Path | None = None) -> str:
    """The submission id of the Ray job this process runs as, when its working directory is
    Ray's temporary copy (``ray job submit --working-dir``: deleted with the Ray session); else
    ``""``. Told by the job's config, which Ray's job supervisor hands the entrypoint in
    ``RAY_JOB_CONFIG_JSON_ENV_VAR`` (its runtime env names the ``working_dir``), or by a working
    directory under a Ray session's ``runtime_resources/``."""
    env = os.environ if env is None else env
    where = Path(cwd or os.getcwd())
    try:
        config = json.loads(env.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except ValueError:
        config = {}
    config = config if isinstance(config, dict) else {}
    job = str((config.get("metadata") or {}).get("job_submission_id") or "")
    copied = bool((config.get("runtime_env") or {}).get("working_dir"))
    if copied or "runtime_resources" in where.parts:
        return job or "(no submission id)"
    return ""


def job_defaults(
    opts: Options, env: Mapping[str, str] | None = None, cwd: str | Path | None = None
) -> tuple[dict[str, str], str]:
    """The local defaults a sweep run as a Ray job would lose, moved to a persistent folder,
    and the line that says where; ``({}, "")`` outside such a job or when nothing is moved.

    The choice (rather than refusing): the README's short job command keeps working and its
    results stay. The folder is ``$EMG_HOME``, else ``~/emg-orchestra`` (on the node that runs
    the job's driver). Moved are only the defaults that would land in the working directory:
    the MLflow store (``mlflow.db``, ``mlartifacts/`` beside it) unless ``--tracking-uri`` or
    ``$MLFLOW_TRACKING_URI``, ``ray_results/`` unless ``--storage-path``, the preprocessing cache
    unless ``--cache`` or ``$EMGCORE_CACHE``. A multi-node cluster still needs a tracking server
    and shared storage (README, "The sweep")."""
    env = os.environ if env is None else env
    job = ray_job_copy(env, cwd)
    if not job:
        return {}, ""
    home = Path(env.get(EMG_HOME) or JOB_HOME).expanduser().resolve()
    moved: dict[str, str] = {}
    if not opts.tracking_uri and not env.get("MLFLOW_TRACKING_URI"):
        moved["tracking_uri"] = f"sqlite:///{home / tracking.DEFAULT_DB}"
    if not opts.storage_path:
        moved["storage_path"] = str(home / "ray_results")
    if not opts.cache and not env.get("EMGCORE_CACHE"):
        moved["cache"] = str(home / ".emgcore_cache")
    if not moved:
        return {}, ""
    home.mkdir(parents=True, exist_ok=True)
    what = {
        "tracking_uri": ("MLflow store", "--tracking-uri"),
        "storage_path": ("Ray results", "--storage-path"),
        "cache": ("cache", "--cache"),
    }
    return moved, (
        f"Ray job {job} runs in Ray's temporary copy of the working directory, deleted with the "
        f"Ray session: its {', '.join(what[k][0] for k in moved)} go to {home} instead (set "
        f"${EMG_HOME} or pass {', '.join(what[k][1] for k in moved)} to choose)"
    )


class _FitProgress:
    """Console lines for a Train run outside Tune (the final retrain), from its reports:
    ``<label> unit <n>[/<total>] done, <metric> so far <v> (<min>)`` when a unit's checkpoint
    arrives, and ``<label> unit <n> running, epoch <e> (<min>)`` when nothing was said for
    ``quiet_s``. The total shows when the reports carry ``units_total``."""

    def __init__(self, label: str, metric: str, quiet_s: float = 30.0):
        self.label, self.metric, self.quiet_s = label, metric, quiet_s
        self.t0 = self.said = time.time()
        self.units = 0

    def feed(self, report: Mapping[str, Any], now: float | None = None) -> str:
        """The line ``report`` calls for, or ``""``."""
        now = time.time() if now is None else now
        done, total = int(report.get("units_done", 0)), report.get("units_total")
        of = f"/{total}" if total else ""
        when = f"({(now - self.t0) / 60:.1f} min)"
        if "epoch" not in report and done > self.units:  # a unit's checkpoint, or the end
            self.units, self.said = done, now
            value = report.get(self.metric, math.nan)
            so_far = "" if report.get("done") else " so far"
            return f"  {self.label} unit {done}{of} done, {self.metric}{so_far} {value:+.4f} {when}"
        if "epoch" in report and now - self.said >= self.quiet_s:
            self.said = now
            unit = int(report.get("unit", done)) + 1
            return f"  {self.label} unit {unit}{of} running, epoch {report['epoch']} {when}"
        return ""

    def follow(self, path: Path, every: float = 1.0) -> Callable[[], None]:
        """Print the lines of the reports appended to ``path`` from a daemon thread until the
        returned function is called."""
        done = threading.Event()

        def run() -> None:
            pos, stopping = 0, False
            while not stopping:
                stopping = done.wait(every)  # then one last read: the run's final report
                with contextlib.suppress(OSError):
                    with path.open() as f:
                        f.seek(pos)
                        text = f.read()
                    complete = text[: text.rfind("\n") + 1]  # a line half written waits
                    pos += len(complete)
                    for line in complete.splitlines():
                        with contextlib.suppress(ValueError):
                            if msg := self.feed(json.loads(line)):
                                _print(msg)

        thread = threading.Thread(target=run, name="emg-fit-progress", daemon=True)
        thread.start()

        def stop() -> None:
            done.set()
            thread.join(timeout=5)

        return stop


def _all_of(subjects: list[str]) -> str:
    if len(subjects) == 1:
        return f"its one subject, {subjects[0]}"
    return f"all {len(subjects)} of its subjects: {', '.join(subjects)}"


def _quiet_ray() -> None:
    """Keep the console to the sweep's own lines; Ray's detail stays in its logs and files.

    Checked against Ray 2.60: Tune's new console reporter prints, even at
    ``RunConfig(verbose=0)``, a configuration table, the results path and a TensorBoard hint at
    every stage start (``tune/experimental/output.py``); the legacy one
    (``RAY_AIR_NEW_OUTPUT=0``) prints nothing at ``verbose=0``. Tune adds CSV, JSON and
    TensorBoardX logger callbacks unless ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``; TensorBoardX
    is not installed, so that cost a warning per stage: nothing reads those files, except
    ``ResultGrid``'s metrics dataframes, which read ``result.json`` (the JSON logger is passed
    explicitly, :meth:`Sweep._tune`). ``ray.init(logging_level=WARNING)`` drops Ray's INFO lines
    (the cluster started, the dashboard's address); ``log_to_driver=False`` keeps the workers'
    output in their log files. A failed trial's traceback, which Tune logs as an error, is in
    the trial's error file, which the sweep's FAILED line names with the reason. A variable
    already set in the environment wins."""
    import logging

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # at every start of a local cluster: "Token authentication is enabled ..." (the default,
    # nothing to act on; README "Safe defaults")
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        tune_log = logging.getLogger(name)
        if not any(isinstance(f, _TrialFailureLog) for f in tune_log.filters):
            tune_log.addFilter(_TrialFailureLog())


class _TrialFailureLog:
    """A logging filter for Tune's records that the sweep says better itself: ``Trial task
    failed for trial ...`` (the traceback the trial's error file holds; the FAILED line names
    it) and, on an interrupt, ``Resume experiment with: Tuner.restore(...)`` (not how a sweep
    resumes: the interrupted line prints the sweep's own command). Every other record is shown.
    """

    HIDDEN = ("Trial task failed for trial", "Experiment has been interrupted", "Training has been")

    def filter(self, record: Any) -> bool:
        return not str(record.msg).startswith(self.HIDDEN)


def _divert_raylet_messages(path: Path) -> None:
    """What the raylet pushes to a driver (e.g. its worker-pool size warning) Ray's error
    listener thread prints to stdout as ``(raylet) ...`` lines, whatever ``log_to_driver``; here
    they are appended to ``path`` (in Ray's log folder) instead. The listener calls
    ``ray._private.worker.print_to_stdstream`` by name (Ray 2.60), so that is what is wrapped;
    every other message goes on as before. A failed trial still reaches the console: its
    reason is the sweep's FAILED line."""
    import ray._private.worker as ray_worker

    shown = getattr(ray_worker.print_to_stdstream, "__wrapped__", ray_worker.print_to_stdstream)

    def print_to_stdstream(data: dict, ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            shown(data, ignore_prefix)
            return
        with contextlib.suppress(OSError), path.open("a") as f:
            f.write("".join(f"{line}\n" for line in data.get("lines", [])))

    print_to_stdstream.__wrapped__ = shown  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = print_to_stdstream


def _ray_logs() -> str:
    """This node's Ray log folder (``<session>/logs``), as far as Ray tells it."""
    try:
        import ray

        return ray._private.worker._global_node.get_logs_dir_path()
    except Exception:  # another Ray layout: its default place
        # Ray's own rule: $RAY_TMPDIR, else the system temp folder, then ray/session_latest
        root = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
        return str(Path(root) / "ray" / "session_latest" / "logs")


def data_tags(recordings: Sequence[Any]) -> dict[str, str]:
    """What the data's EMG is, for the parent run: ``emg.emg_unit`` (the recordings' units,
    e.g. ``mV``; several joined by ``,``) and ``emg.channels`` (the count, then the channel or
    muscle names when the recordings name them, e.g. ``4: VL, VM, BF, ST``; several layouts
    joined by `` | ``)."""
    units = sorted({r.emg_unit for r in recordings})
    layouts = sorted({(r.n_channels, tuple(r.channel_names)) for r in recordings})
    channels = " | ".join(f"{c}: {', '.join(n)}" if n else str(c) for c, n in layouts)
    return {"emg.emg_unit": ",".join(units), "emg.channels": channels[:5000]}  # a tag holds 8000


def resume_command(method: str, sid: str, storage: str, tracking_uri: str) -> str:
    """The exact command that continues sweep ``sid``, from any directory: its storage path and
    tracking URI spelled out (the defaults are relative to where it started); the saved flags
    come from the sweep's state."""
    argv = [method, "--resume", sid, "--storage-path", storage, "--tracking-uri", tracking_uri]
    return "python orchestration/sweep.py " + shlex.join(argv)


def _storage(path: str | None) -> str:
    if path and "://" in path:
        return path.rstrip("/")
    return str(Path(path or "ray_results").resolve())


def _record_end(state: dict, ended: dict) -> dict:
    """``state`` with how the sweep ended: ``status``, ``ended``, and every ending in order in
    ``history`` (a resumed sweep may have been interrupted several times)."""
    state["status"], state["ended"] = ended["status"], ended
    state.setdefault("history", []).append(ended)
    return state


def _now() -> str:
    return f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"


def _absolute(name: str) -> str:
    """``name`` made absolute when it is an existing path here (``--data``, ``--config``), else
    as given (a simulator preset, a bundled preset, or a path that fails later with its name)."""
    path = Path(name).expanduser()
    return str(path.resolve()) if name and path.exists() else name


def _print(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", flush=True)


def _restore_signals(old: dict[int, Any]) -> None:
    """Undo :meth:`Sweep._install_signals`: the handlers and the unraisable-exception hook."""
    for sig, h in old.items():
        signal.signal(sig, h)
    sys.unraisablehook = getattr(sys.unraisablehook, "before", sys.unraisablehook)
