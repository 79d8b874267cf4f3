"""The one Train worker loop: any method's trial, made resumable and tracked.

Every method's trial (:class:`emgcore.methods.base.Trial`) is a list of units. On every worker:

1. the trial's configuration (the base preset, the trial's dotted-key overrides, the final run's
   seeds and subjects) and data; rank 0 opens the trial's MLflow run and logs the configuration;
2. each unit in order, skipping those the last checkpoint holds (a restarted worker resumes at
   the first unfinished unit; units are deterministic for their seed, so a resumed trial ends
   with exactly an uninterrupted one's result). Every epoch goes to MLflow (rank 0) and, at
   most every :data:`launch.REPORT_S`, to Train and through it to Tune; after each unit but
   the last, a checkpoint of the finished units' values (and the states the final run needs);
3. the summary: a final run's report and registration (:func:`register`) on rank 0, then the
   last report, with a checkpoint, whose metrics are the trial's result; the run ends
   FINISHED, or FAILED / KILLED when anything raised.

Nothing here names a method: it is ``spec["method"]`` as the sweep packed it
(:func:`orchestration.launch.pack_method`).
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from emgcore.config import flatten, load_yaml, override, resolve_config
from emgcore.distributed import DataParallel
from emgcore.methods.base import Method, Registration, TrialSetup, seed_tags
from emgcore.streaming import peak_rss
from emgcore.training import EpochHook
from orchestration import launch, tracking

PROGRESS, STATES = "progress.json", "states.pt"


def configure(method: Method, spec: Mapping[str, Any]) -> Any:
    """The trial's configuration: the base preset with the trial's dotted-key overrides, and
    the seeds and subjects the sweep gives a final run or a study."""
    cfg = override(load_yaml(method.config, resolve_config(spec["config"])), spec["overrides"])
    names = {f.name for f in fields(cfg)}
    for key in ("seeds", "subjects"):
        if spec.get(key) and key in names:
            cfg = replace(cfg, **{key: tuple(spec[key])})
    return cfg


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: ``config`` is ``{"spec": ..., "method": packed}``
    (:func:`orchestration.launch.make_trainer`)."""
    spec, method = config["spec"], launch.unpack_method(config["method"])
    rank = ray.train.get_context().get_world_rank()
    parallel = DataParallel.current()
    torch.set_num_threads(max(1, int(spec.get("threads", 1))))
    setup = TrialSetup(
        mode=spec["mode"],
        parallel=parallel,
        device=launch.train_device(),
        cache=spec.get("cache"),
        data=spec["data"],
        fingerprint=spec.get("fingerprint", ""),
        selection=spec.get("selection") or {},
        pretrained=_pretrained(method, spec),
    )
    trial = method.trial(configure(method, spec), launch.load_recordings(spec), setup)
    run = TrialRun(spec, trial.config, parallel, rank)
    with run:
        if run.tracker is not None:
            # where this start runs (a restarted trial moves: the latest), and the versions it
            # started from
            tags = {"emg.device": setup.device, "emg.host": os.uname()[1], **trial.tags}
            tags["emg.node"] = ray.get_runtime_context().get_node_id()
            for k, v in (spec.get("pretrained") or {}).items():
                tags[f"emg.{method.starts_from}.{k}"] = v
            run.tracker.set_tags(run.run_id, tags)
        values, states = run.resume()
        resumed = len(values)  # units a checkpoint already held: this start's cost is a part's
        for i, unit in enumerate(trial.units):
            if unit in values:
                if unit in states:
                    trial.restore(unit, states[unit])
                continue
            run.unit = i
            result = trial.run(unit, run.hooks)
            values[unit] = result.value
            if result.state is not None:
                states[unit] = result.state
            run.unit_done(result.metrics)
            if i < len(trial.units) - 1:  # the last unit's result goes straight on
                run.checkpoint(values, states, trial.summary(values))
        summary = trial.summary(values)
        if spec["mode"] == "final":  # for the registered version and the nightly gate
            summary |= seed_tags(trial.seeds(values))
        summary["units_resumed"] = float(resumed)
        if rank == 0 and spec["mode"] == "final":
            summary |= run.publish(trial, values, resumed=resumed > 0)
        run.finish(summary, values, states)


class TrialRun:
    """One worker's view of its trial: rank 0 holds the MLflow run (``tracker``, ``run_id``),
    every rank reports to Train. As a context manager it ends the run FAILED (KILLED on an
    interrupt) when its block raises, and lets the error through."""

    def __init__(self, spec: Mapping[str, Any], cfg: Any, parallel: DataParallel, rank: int):
        self.spec, self.parallel, self.rank = spec, parallel, rank
        self.t_start = time.perf_counter()
        self.tracker: tracking.Tracker | None = None
        self.run_id: str | None = None
        self.log: tracking.MetricLogger | None = None
        if rank == 0:
            params = flatten(cfg) | {"trial.workers": parallel.world_size}
            self.tracker, self.run_id, self.log = tracking.open_trial_run(
                spec["tracking"], params, spec["overrides"]
            )
        self.step, self.unit, self.units_done = 0, 0, 0
        self.epoch_s: list[float] = []  # every epoch's wall time, for the run's cost figures
        self.samples_s: list[float] = []  # every epoch's training samples per second
        self.t_report = self.t_epoch = -math.inf

    def hooks(self, model: str | None) -> tuple[EpochHook]:
        """Epoch hook of ``model`` (None: the method's only one): every epoch to MLflow, as
        ``<model>.<metric>`` when named, with its wall time ``epoch_s``; the latest to Train at
        most every :data:`launch.REPORT_S` (a report is a collective, so the workers agree on
        making one)."""
        self.t_epoch = time.perf_counter()

        def on_epoch(epoch: int, metrics: Mapping[str, float], m: Any) -> None:
            self.step += 1
            now = time.perf_counter()
            took, self.t_epoch = now - self.t_epoch, now  # hooks included
            metrics = {**metrics, "epoch_s": took}
            self.epoch_s.append(took)
            if samples := metrics.pop("samples", 0.0):  # the throughput, hooks included
                metrics["samples_s"] = samples / took
                self.samples_s.append(metrics["samples_s"])
            if self.log is not None:
                prefix = f"{model}." if model else ""
                self.log.log({f"{prefix}{k}": v for k, v in metrics.items()}, self.step)
            if self.parallel.agree(now - self.t_report >= launch.REPORT_S):
                self.t_report = now
                named = {"model": model} if model else {}
                ray.train.report(
                    {
                        **metrics,
                        **named,
                        "epoch": epoch,
                        "unit": self.unit,
                        "units_done": self.units_done,
                    }
                )
            _maybe_fault(self.spec, self.unit, epoch)

        return (on_epoch,)

    def unit_done(self, metrics: Mapping[str, float]) -> None:
        """Count the unit finished and log its ``metrics`` (rank 0)."""
        self.units_done += 1
        if self.log is not None:
            # a unit key may hold data names ("P01 (pilot)"): the logger makes it one MLflow
            # takes and tags the readable one (tracking.mlflow_key)
            self.log.log(dict(metrics), self.step)
            self.log.flush()

    def resume(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The finished units' values and kept states from the last checkpoint, if any."""
        ckpt = ray.train.get_checkpoint()
        if not ckpt:
            return {}, {}
        with ckpt.as_directory() as d:
            progress = json.loads((Path(d) / PROGRESS).read_text())
            states = (
                torch.load(Path(d) / STATES, weights_only=True)
                if (Path(d) / STATES).exists()
                else {}
            )
        self.step = progress["step"]
        self.units_done = len(progress["values"])
        return progress["values"], states

    def checkpoint(
        self,
        values: Mapping[str, Any],
        states: Mapping[str, Any],
        metrics: dict[str, Any],
        before_report: Callable[[Path], None] | None = None,
    ) -> None:
        """Report with a checkpoint of the finished units (rank 0 writes the files, and hands
        their folder to ``before_report`` first)."""
        metrics = {**metrics, "unit": self.unit, "units_done": len(values), **launch.placement()}
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / PROGRESS).write_text(json.dumps({"values": values, "step": self.step}))
            if states:
                torch.save(dict(states), Path(d) / STATES)
            if before_report is not None:
                before_report(Path(d))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    def publish(
        self, trial: Any, values: Mapping[str, Any], resumed: bool = False
    ) -> dict[str, Any]:
        """A final run's report (unless a study's) and registration (unless ``registry`` is
        None), or the nightly's re-score of a champion (``rescore``): rank 0, after every unit.
        ``resumed``: units came from a checkpoint (their models may not be in it)."""
        assert self.tracker is not None and self.run_id is not None
        if self.spec.get("report", True):
            with tempfile.TemporaryDirectory() as d:
                for f in trial.report(values, Path(d)):
                    self.tracker.log_artifact(self.run_id, f, "report")
        if self.spec.get("rescore"):  # the nightly: the champion's artifact scored again
            try:
                reg = trial.registration(values)
            except Exception as e:
                if not resumed:
                    raise
                # a start that found every unit done: the models a registration scores on
                # are not all kept in checkpoints (EMG-JEPA's, the pose family's)
                why = f"{type(e).__name__} {e}".strip()[:200]
                return {"champion_rescore_skipped": f"resumed from a finished checkpoint ({why})"}
            return rescore_artifact(self.spec["rescore"], reg, self.tracker)
        if not self.spec.get("registry"):  # a study registers nothing
            return {}
        reg = trial.registration(values)
        reg = replace(reg, tags={**reg.tags, **seed_tags(trial.seeds(values))})
        return register(self.spec, reg, self.tracker, self.run_id)

    def finish(
        self, summary: dict[str, Any], values: Mapping[str, Any], states: Mapping[str, Any]
    ) -> None:
        """The trial's result: logged, its last checkpoint copied into the run's artifacts
        (``checkpoint/``, :meth:`tracking.Tracker.log_checkpoint`), the run ended FINISHED
        (rank 0), and reported to Train with that checkpoint (Train V2's ``Result.metrics`` are
        the latest checkpointed report's: the sweep reads the trial's numbers from there)."""
        summary |= {"loop_s": time.perf_counter() - self.t_start, "done": True} | self.cost()

        def close(folder: Path) -> None:  # rank 0, once the checkpoint's files are written
            if self.log is not None and self.tracker is not None:
                self.log.log({k: v for k, v in summary.items() if isinstance(v, float)}, self.step)
                self.log.flush()
                self.tracker.log_checkpoint(self.run_id, folder)
                self.tracker.set_tags(self.run_id, {"emg.status": "finished"})
                self.tracker.end(self.run_id, "FINISHED")

        self.checkpoint(values, states, summary, close)

    def cost(self) -> dict[str, float]:
        """What this worker's trial cost: the median epoch's wall time (s, hooks included) and
        the median epoch's training samples per second (all workers' samples over the epoch's
        wall time) and the process's peak resident memory (MiB, imports and data included;
        :func:`emgcore.streaming.peak_rss`), which the nightly compares night to night."""
        peak = peak_rss() / 2**20
        median = statistics.median(self.epoch_s) if self.epoch_s else math.nan
        rate = statistics.median(self.samples_s) if self.samples_s else math.nan
        return {"epoch_s_median": median, "samples_s_median": rate, "peak_rss_mb": float(peak)}

    def __enter__(self) -> TrialRun:
        return self

    def __exit__(self, kind: type | None, e: BaseException | None, tb: Any) -> bool:
        if e is not None:
            if self.tracker is not None and self.run_id is not None and self.log is not None:
                tracking.end_with_error(self.tracker, self.run_id, self.log, e)
            traceback.print_exc()
        return False  # the error goes on to Train


def rescore_artifact(
    which: Mapping[str, str], reg: Registration, tracker: tracking.Tracker
) -> dict[str, Any]:
    """Score the registered version ``which`` (``{"name", "version"}``) again, from its own
    files, in this environment, on the split this trial (a retrain of its recipe) scored it on:
    its test score through the export's ``retest`` (compared with ``registered_<test
    metric>``), else its selection score through ``rescore`` (``registered_<selection
    metric>``). Returns ``champion_rescored`` (NaN when it cannot be evaluated),
    ``champion_recorded``, ``champion_rescored_metric`` and ``champion_rescored_why``; nothing
    for an export that says neither how (an encoder alone has no score)."""
    tracking.use(tracker.uri)  # models:/ resolves through the fluent API's registry
    name, version = which["name"], str(which["version"])
    # the export registered under ``name``: its suffix ends the name (the longest that does)
    ex = max((e for e in reg.exports if name.endswith(e.suffix)), default=None,
             key=lambda e: len(e.suffix))  # fmt: skip
    if ex is None or not (ex.retest or ex.rescore):
        return {}
    score = reg.test if ex.retest else reg.selection
    out: dict[str, Any] = {"champion_rescored_metric": score.metric}
    uri = f"models:/{name}/{version}"
    try:
        import torch

        tags = tracking.retry(tracker.client.get_model_version, name, version).tags
        # versions registered before the score tags were prefixed carry the bare metric name
        recorded = tags.get(f"registered_{score.metric}", tags.get(score.metric))
        out["champion_recorded"] = float(recorded) if recorded is not None else math.nan

        with torch.no_grad():
            if ex.retest:
                value = ex.retest(tracking.model_files(uri))
            else:
                model = ex.load(tracking.model_files(uri)) if ex.load else tracking.load_model(uri)
                value = ex.rescore(model)
        out |= {"champion_rescored": float(value), "champion_rescored_why": score.split}
    except Exception as e:  # reported by the nightly as the artifact's failure, not raised
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
        out.setdefault("champion_recorded", math.nan)
        out |= {"champion_rescored": math.nan, "champion_rescored_why": why}
    return out


def register(
    spec: Mapping[str, Any], reg: Registration, tracker: tracking.Tracker, run_id: str
) -> dict[str, Any]:
    """Log and register each of the trial's exports as ``<registry name><suffix>``; its
    ``champion`` alias moves only if the version earns it (:func:`tracking.register`: better on
    the selection split than the champion, scored again here when the export says how, else its
    recorded score; and better than the trivial baseline on both splits). Returns what the
    trial's summary adds: version, decision and reason (of the last export), the names
    registered, and the selection and test scores."""
    tracking.use(tracker.uri)
    base = spec["registry"]["name"]
    common = {
        "sweep": spec["tracking"]["tags"].get("emg.sweep", ""),
        "data_fingerprint": spec["fingerprint"],
        "recipe": json.dumps(launch.recipe(spec), sort_keys=True),
    }
    out: dict[str, Any] = {}
    for ex in reg.exports:
        name = f"{base}{ex.suffix}"
        if ex.rescore is None:
            old, why = tracking.recorded_champion(tracker.client, name, reg.selection)
        else:
            load = (lambda uri, f=ex.load: f(tracking.model_files(uri))) if ex.load else None
            old, why = tracking.rescore_champion(
                tracker.client, name, ex.rescore, ex.rescored_on, load
            )
        why = tracking.champion_reason(reg.selection, reg.test, old, why)
        with tempfile.TemporaryDirectory() as d:
            files = list(ex.write_files(Path(d))) if ex.write_files else []
            version, promote = tracking.register(
                run_id,
                ex.model,
                ex.example,
                name,
                reg.selection,
                old,
                reg.test,
                {**common, **reg.tags, "reason": why},
                files,
            )
        tracker.set_tags(
            run_id,
            {
                f"registry.{name}.version": version,
                "registry.version": version,
                "registry.champion": str(promote),
            },
        )
        out |= {
            "registry_version": int(version),
            "became_champion": bool(promote),
            "champion_reason": why,
            f"champion_{reg.selection.metric}": math.nan if old is None else old,
            "registered": ",".join(filter(None, [out.get("registered", ""), f"{name} v{version}"])),
        }
    sel, test = reg.selection, reg.test
    return out | {
        f"registered_{sel.metric}": sel.value,
        f"registered_{test.metric}": test.value,
        f"trivial_{sel.metric}": sel.trivial,
        f"trivial_{test.metric}": test.trivial,
    }


def _pretrained(method: Method, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The registered models the trial starts from (``spec["pretrained"]``: model URIs the
    sweep pinned to versions), loaded; empty when the trial trains its own."""
    uris = spec.get("pretrained") or {}
    if not uris:
        return {}
    assert method.load_pretrained is not None, f"{method.name} starts from nothing"
    tracking.use(spec["tracking"]["uri"])
    return {k: method.load_pretrained(tracking.model_files(uri)) for k, uri in uris.items()}


def _maybe_fault(spec: Mapping[str, Any], unit: int, epoch: int) -> None:
    """Fault injection for the tests: SIGKILL this worker once, in unit ``kill_in_unit`` at
    epoch ``at_epoch``, after the previous unit's checkpoint (a report returns before the
    controller has registered its checkpoint, hence the pause)."""
    fault = spec.get("fault") or {}
    marker = Path(fault.get("marker", "/nonexistent"))
    hit = fault.get("kill_in_unit") == unit and fault.get("at_epoch", 2) == epoch
    if hit and not marker.exists():
        time.sleep(2.0)  # past the controller's next poll: the last checkpoint is registered
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
