"""What Ray Tune + Ray Train + MLflow cost a KinEMbed trial, on this machine's 2 cores.

1. Overhead per epoch: the median contrastive epoch of one trial run by ``orchestration/sweep.py``
   (Tune driver -> TorchTrainer worker -> per-epoch Train report + MLflow metrics) against the
   same epochs through emgcore's entry point (``cv_score``) in one process, one thread each.
   Target: <= 1.10.
2. Throughput: a 6-trial stage with ``--max-concurrent 2`` vs ``--max-concurrent 1``, in trials
   per hour from the stage runs' wall times. Target: >= 1.6x.
3. The fixed start-up cost per trial: a sequential trial's share of the stage's wall time minus the
   time its worker function ran (``loop_s``): Tune trial + Train controller + worker process +
   process group + teardown.

Trials have the paper's shape (App. B.2: 5 subjects x 2-fold session CV = 10 units) on shorter
simulated sessions: 5 subjects with 5-minute sessions (epochs of ~22 batches of 256), 30
contrastive epochs per fold (no early stop), so a trial is ~1 minute of worker time. A real
stage-1 trial (up to 200 epochs on longer sessions) runs for minutes, where start-up weighs even
less. Ray's per-trial start-up is CPU-bound (~15 s of CPU across the Tune trial actor, the Train
controller and its helper actors, and the worker's imports), so with shorter trials it is
start-up, not training, that two concurrent trials share: ``--short`` runs the same stages with
1-subject trials (2 units, ~20 s of worker time) to show that worst case. Stages of 6 trials, so
the stage's own fixed cost (Tuner, leaderboard, plots) is shared as in a real stage (5 to 75
trials).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from emgcore.config import resolve_config  # noqa: E402
from emgcore.data import open_dataset  # noqa: E402
from emgcore.methods.kinembed import RunContext, cv_score, load_config, prepare  # noqa: E402
from orchestration import sweep  # noqa: E402
from orchestration.search_space import apply  # noqa: E402

SIM = {"duration_s": 300.0, "n_subjects": 5}
SHORT = {"duration_s": 600.0, "n_subjects": 1}  # --short: trials of 2 units
# 30 contrastive epochs per fold (no early stop) and a short decoder
OVERRIDES = {"kinembed.epochs": 30, "kinembed.patience": 1000, "decoder.epochs": 10}
GRID = [0.1, 0.15, 0.2, 0.3, 0.4, 0.5]
SPACE = """
method: kinembed
metric: cv_r2
mode: max
stages:
  - name: {name}
    grid:
      kinembed.temperature: {grid}
    fixed: {fixed}
"""


def in_process() -> float:
    """Median epoch wall time through emgcore alone (one thread, like a 1-CPU worker)."""
    import torch

    torch.set_num_threads(1)
    cfg = apply(load_config(resolve_config("kinembed-smoke")), OVERRIDES)
    recs = open_dataset("db8-like", **SIM)
    subjects, train, _ = prepare(recs, cfg)
    subj = subjects[0]  # an epoch's work is one subject's fold: one subject gives its median
    times: list[float] = []
    last = [time.perf_counter()]

    def hook(epoch: int, metrics: dict, model: object) -> None:
        now = time.perf_counter()
        times.append(now - last[0])  # a fold's first epoch also holds its setup: the median
        last[0] = now  # ignores those two

    cv_score("kinembed", {}, subj, train, cfg, 0, RunContext(hooks=(hook,)))
    return statistics.median(times)


def run_stage(tmp: Path, name: str, grid: list[float], concurrent: int) -> str:
    space = tmp / f"{name}.yaml"
    fixed = "{" + ", ".join(f"{k}: {v}" for k, v in OVERRIDES.items()) + "}"
    space.write_text(SPACE.format(name=name, grid=grid, fixed=fixed))
    code = sweep.main(
        [
            "kinembed",
            "--config",
            "kinembed-smoke",
            "--space",
            str(space),
            "--duration",
            str(SIM["duration_s"]),
            "--sim-subjects",
            str(SIM["n_subjects"]),
            "--max-concurrent",
            str(concurrent),
            "--skip-final",
            "--tracking-uri",
            f"sqlite:///{tmp}/mlflow.db",
            "--storage-path",
            str(tmp / "results"),
            "--experiment",
            f"bench-{name}",
        ]
    )
    if code != 0:
        raise SystemExit(f"sweep exited {code}")
    return f"bench-{name}"


def stage_stats(uri: str, experiment: str) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], max_results=100)
    stage = next(r for r in runs if r.info.run_name.startswith("stage"))
    trials = [r for r in runs if "emg.trial" in r.data.tags]  # named by their values
    epochs = []
    for t in trials:
        hist = sorted(c.get_metric_history(t.info.run_id, "epoch_s"), key=lambda m: m.step)
        epochs += [m.value for m in hist]
    return {
        "wall_s": (stage.info.end_time - stage.info.start_time) / 1000,
        "trials": len(trials),
        "epoch_s": statistics.median(epochs),
        "loop_s": statistics.mean(t.data.metrics["loop_s"] for t in trials),
    }


def main() -> None:
    if "--short" in sys.argv[1:]:
        SIM.update(SHORT)
    base = in_process()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        uri = f"sqlite:///{tmp}/mlflow.db"
        one = stage_stats(uri, run_stage(tmp, "serial", GRID, 1))
        two = stage_stats(uri, run_stage(tmp, "parallel", GRID, 2))
    overhead = one["epoch_s"] / base
    per_hour_1 = 3600 * one["trials"] / one["wall_s"]
    per_hour_2 = 3600 * two["trials"] / two["wall_s"]
    startup = one["wall_s"] / one["trials"] - one["loop_s"]
    print(f"trials of {SIM['n_subjects']} subject(s) x 2 folds, {SIM['duration_s']:.0f} s sessions")
    print(f"epoch, emgcore in one process   {base * 1000:7.1f} ms (median)")
    print(f"epoch, Tune + Train + MLflow    {one['epoch_s'] * 1000:7.1f} ms (median)")
    print(f"  overhead ratio                {overhead:7.3f}  (target <= 1.10)")
    print(f"trials/hour, 1 concurrent       {per_hour_1:7.1f}")
    print(
        f"trials/hour, 2 concurrent       {per_hour_2:7.1f}  (epoch {two['epoch_s'] * 1000:.1f} ms)"
    )
    print(f"  throughput ratio              {per_hour_2 / per_hour_1:7.2f}  (target >= 1.6)")
    trial_s = one["wall_s"] / one["trials"]
    print(
        f"start-up cost per trial         {startup:7.1f} s  "
        f"(trial wall {trial_s:.1f} s, worker loop {one['loop_s']:.1f} s)"
    )
    ok = overhead <= 1.10 and per_hour_2 / per_hour_1 >= 1.6
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
