"""``sweep.py jepa`` end to end on local Ray: trials pre-train then fine-tune and are selected by
the lowest validation JA-MAE, the final run scores the test users per seed, logs its report and
registers ``jepa``; the registered graph reproduces its score on the same users, and a second
sweep's version takes the alias only with a lower error on those users."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from emgcore.methods.base import seed_scores
from tests.orchestration.test_sweep import SWEEP, _client, _env

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.mlflow]

# one point, the supervised baseline with a 1-epoch head: a second model scored on the same users
SECOND = """
method: jepa
metric: val_ja_mae
mode: min
stages:
  - name: baseline
    grid:
      pretrain: [false]
      head.epochs: [1]
"""


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SWEEP), "jepa", "--smoke", *args, "--cache", str(tmp / "cache")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=tmp, env=_env())


def test_jepa_sweep_selects_the_lowest_error_and_registers_by_it(tmp_path):
    import mlflow.pytorch
    import torch

    from emgcore.config import load_yaml, resolve_config
    from emgcore.data import open_dataset
    from emgcore.methods import METHODS
    from emgcore.methods.jepa import PoseEstConfig, prepare
    from emgcore.models.jepa import ja_mae
    from emgcore.training import batched

    first = _run(tmp_path, "--stages", "masks")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "test JA-MAE     +" in first.stdout and "jepa v1: " in first.stdout

    # the stage kept the trial with the lowest validation JA-MAE
    (board,) = (tmp_path / "ray_results").glob("jepa-*/leaderboard-masks.csv")
    rows = list(csv.DictReader(board.open()))
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    errors = [float(r["val_ja_mae"]) for r in rows]
    assert errors == sorted(errors) and 0.0 < errors[0] < 90.0
    state = json.loads((board.parent / "sweep.json").read_text())
    assert state["stages"]["masks"]["winner"] == json.loads(rows[0]["overrides"])
    final = state["final"]
    assert len(final["scores"].split(",")) == 3  # one per smoke seed
    assert final["test_ja_mae"] == pytest.approx(
        sum(map(float, final["scores"].split(","))) / 3, abs=1e-3
    )
    assert "seeds" not in final  # per-seed lists go to the version, not the metrics

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = _client(uri)
    exp = c.get_experiment_by_name("jepa")
    runs = c.search_runs([exp.experiment_id], max_results=100)
    assert all(r.info.status == "FINISHED" for r in runs)
    trials = [r for r in runs if "emg.trial" in r.data.tags]  # named by their values
    assert len(trials) == 2
    for t in trials:  # each trial pre-trained, then fine-tuned with early stopping
        assert "pretrain.train_loss" in t.data.metrics and "finetune.val_ja_mae" in t.data.metrics
    run = next(r for r in runs if r.info.run_name == "final")
    names = {a.path for a in c.list_artifacts(run.info.run_id, "report")}
    assert names == {"report/test_per_joint.csv", "report/test_trajectories.png"}

    # the registered graph, on the test users it was scored on, gives its tagged score; it is
    # champion unless it is no better than the mean pose (then flagged)
    v1 = c.get_model_version("jepa", "1")
    v1_champion = v1.tags["below_trivial"] == "false"
    assert v1.tags["became_champion"] == str(v1_champion).lower()
    cfg = load_yaml(PoseEstConfig, resolve_config("jepa-smoke"))
    data = prepare(open_dataset(METHODS["jepa"].data, **METHODS["jepa"].smoke_sim), cfg.data)
    assert v1.tags["test_split"].startswith(f"test users {','.join(sorted(set(data.test.user)))} ")
    assert v1.tags["selection_split"].startswith(
        f"validation users {','.join(sorted(set(data.val.user)))} "
    )
    assert v1.tags["selection_metric"] == "val_ja_mae"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    served = mlflow.pytorch.load_model("models:/jepa/1")
    with torch.no_grad():
        pred = batched(served, data.test.emg, batch=7)  # not the example's batch of 4
    assert pred.shape == data.test.pose.shape
    score = ja_mae(pred, data.test.pose, data.unit)
    assert score == pytest.approx(float(v1.tags["registered_test_ja_mae"]), abs=1e-3)
    seeds = seed_scores(v1.tags, "test_ja_mae")  # per seed, for the nightly gate; seed 0 first
    assert seeds is not None and len(seeds) == 3
    assert seeds[0] == float(v1.tags["registered_test_ja_mae"])
    assert len(seed_scores(v1.tags, "val_ja_mae") or ()) == 3
    with torch.no_grad():
        val_score = ja_mae(batched(served, data.val.emg), data.val.pose, data.unit)
    assert val_score == pytest.approx(float(v1.tags["registered_val_ja_mae"]), abs=1e-3)
    mean_pose = data.train.pose.mean(0).expand_as(data.test.pose)
    assert float(v1.tags["trivial_test_ja_mae"]) == pytest.approx(
        ja_mae(mean_pose, data.test.pose, data.unit), abs=1e-3
    )

    # a second sweep: its model and the champion are scored on the same validation users
    # (never the test users), lower wins
    space = tmp_path / "second.yaml"
    space.write_text(SECOND)
    second = _run(tmp_path, "--space", str(space))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    v2 = c.get_model_version("jepa", "2")
    if v1_champion:
        assert float(v2.tags["champion_val_ja_mae"]) == pytest.approx(val_score, abs=1e-3)
    won = v2.tags["below_trivial"] == "false" and (
        not v1_champion or float(v2.tags["registered_val_ja_mae"]) < val_score
    )
    assert v2.tags["became_champion"] == str(won).lower()
    champ = "2" if won else ("1" if v1_champion else None)
    if champ is not None:
        assert str(c.get_model_version_by_alias("jepa", "champion").version) == champ
