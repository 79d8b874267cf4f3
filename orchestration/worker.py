"""What the pose families' Train workers share (:mod:`orchestration.pose_trial`,
:mod:`orchestration.jepa_trial`): the trial's MLflow run on rank 0, per-epoch hooks that log to
it and report to Train, and the trial's end (finished, failed or killed)."""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Mapping
from typing import Any

import ray.train

from emgcore.distributed import DataParallel
from emgcore.kinembed import EpochHook
from orchestration import launch, tracking


class TrialRun:
    """One worker's view of its trial: rank 0 holds the MLflow run (``tracker``, ``run_id``),
    every rank reports to Train. As a context manager it ends the run FAILED (KILLED on an
    interrupt) when its block raises, and lets the error through::

        with TrialRun(spec, cfg, parallel, rank) as trial:
            summary = train(hooks=trial.hooks("model"))
            trial.finish(summary)
    """

    def __init__(self, spec: Mapping[str, Any], cfg: Any, parallel: DataParallel, rank: int):
        self.parallel, self.rank = parallel, rank
        self.t_start = time.perf_counter()
        self.tracker: tracking.Tracker | None = None
        self.run_id: str | None = None
        self.log: tracking.MetricLogger | None = None
        if rank == 0:
            params = tracking.flatten(cfg) | {"trial.workers": parallel.world_size}
            self.tracker, self.run_id, self.log = tracking.open_trial_run(spec["tracking"], params)
        self.step, self.t_report = 0, -math.inf

    def hooks(self, name: str) -> tuple[EpochHook]:
        """Epoch hook of model ``name``: every epoch to MLflow as ``name.<metric>``; the latest
        to Train at most every :data:`launch.REPORT_S` (a report is a collective, so the
        workers agree on making one)."""

        def on_epoch(epoch: int, metrics: Mapping[str, float], model: Any) -> None:
            self.step += 1
            if self.log is not None:
                self.log.log({f"{name}.{k}": v for k, v in metrics.items()}, self.step)
            now = time.perf_counter()
            if self.parallel.agree(now - self.t_report >= launch.REPORT_S):
                self.t_report = now
                ray.train.report({"model": name, "epoch": epoch, **metrics})

        return (on_epoch,)

    def finish(self, summary: dict[str, Any]) -> None:
        """The trial's result: logged and the run ended FINISHED (rank 0), reported to Train."""
        summary |= {
            "loop_s": time.perf_counter() - self.t_start,
            "done": True,
            **launch.placement(),
        }
        if self.log is not None and self.tracker is not None:
            self.log.log({k: v for k, v in summary.items() if isinstance(v, float)}, self.step)
            self.log.flush()
            self.tracker.set_tags(self.run_id, {"emg.status": "finished"})
            self.tracker.end(self.run_id, "FINISHED")
        launch.report_last(summary, self.rank)

    def __enter__(self) -> TrialRun:
        return self

    def __exit__(self, kind: type | None, e: BaseException | None, tb: Any) -> bool:
        if e is not None:
            if self.tracker is not None and self.run_id is not None and self.log is not None:
                tracking.end_with_error(self.tracker, self.run_id, self.log, e)
            traceback.print_exc()
        return False  # the error goes on to Train
