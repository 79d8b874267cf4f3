"""``sweep.py mae | cpep`` end to end on local Ray: trials selected by tune_zs_bacc, the final
retrain per seed, the report artifacts, the registry (``mae-emg``/``mae-pose``, ``cpep``), and a
study (``--study data_efficiency``) that scores without registering."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emgcore.methods.base import seed_scores
from tests.orchestration.test_sweep import SWEEP, _client, _env

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.mlflow]


def _run(tmp: Path, method: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SWEEP), method, "--smoke", *args, "--cache", str(tmp / "cache")],
        capture_output=True, text=True, timeout=1500, cwd=tmp, env=_env() | env,
    )  # fmt: skip


def test_mae_then_cpep_sweeps_register_their_models(tmp_path):
    # as on a large data set: the cache is built with Ray Data before the trials start
    warm = {"EMG_WARM_CACHE_ABOVE_GB": "0"}
    mae = _run(tmp_path, "mae", "--stages", "patch_mask", **warm)
    assert mae.returncode == 0, mae.stdout[-3000:] + mae.stderr[-3000:]
    assert "eval zero-shot" in mae.stdout and "mae-emg" in mae.stdout
    built = re.search(r"preprocessing cache: (\d+) built .* (\d+) already there", mae.stdout)
    assert built and int(built[1]) > 0 and built[2] == "0", mae.stdout[-3000:]
    cpep = _run(tmp_path, "cpep", "--stages", "optimiser", **warm)
    assert cpep.returncode == 0, cpep.stdout[-3000:] + cpep.stderr[-3000:]
    assert "preprocessing cache: 0 built (0 recording-h) in" in cpep.stdout
    assert f"{built[1]} already there" in cpep.stdout  # the same recordings, the same pipeline

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = _client(uri)
    for name in ("mae-emg", "mae-pose", "cpep"):
        v1 = c.get_model_version(name, "1")
        # selected on the tune users, the eval users only recorded; at or below chance on
        # either: flagged and never champion
        assert (
            v1.tags["selection_metric"] == "tune_zs_bacc"
            and "tune users" in v1.tags["selection_split"]
        )
        assert 0.0 <= float(v1.tags["registered_eval_zs_bacc"]) <= 1.0
        above = all(
            float(v1.tags[f"registered_{m}"]) > float(v1.tags[f"trivial_{m}"])
            for m in ("tune_zs_bacc", "eval_zs_bacc")
        )
        assert v1.tags["below_trivial"] == str(not above).lower()
        assert v1.tags["became_champion"] == str(above).lower()
        seeds = seed_scores(v1.tags, "eval_zs_bacc")  # per seed, for the nightly gate
        assert seeds is not None and len(seeds) == 3 and all(0 <= x <= 1 for x in seeds)
    exp = c.get_experiment_by_name("cpep")
    runs = c.search_runs([exp.experiment_id], max_results=100)
    trials = [r for r in runs if "emg.trial" in r.data.tags]  # named by their values
    assert len(trials) == 2 and all("tune_zs_bacc" in r.data.metrics for r in trials)
    # how each trial held its windows, and why: the smoke set is small, so in memory
    assert all(r.data.tags["emg.windows"].startswith("memory (") for r in trials)
    assert all(r.info.status == "FINISHED" for r in runs)
    final = next(r for r in runs if r.info.run_name == "final")
    names = {a.path for a in c.list_artifacts(final.info.run_id, "report")}
    assert {"report/table2.txt", "report/zs_unseen_confusion.png"} <= names

    import mlflow
    import mlflow.pytorch
    import torch

    from emgcore.methods.posealign import load_model
    from orchestration import tracking

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    served = mlflow.pytorch.load_model("models:/cpep/1")  # the traced graph: forward
    full = load_model(tracking.model_files("models:/cpep/1"))  # rebuilt from weights
    x = torch.randn(4, 4000, 16)  # the traced graph keeps the input example's batch of 4
    with torch.no_grad():
        z = served(x)
        assert torch.allclose(z, full(x), atol=1e-5)
        assert full.embed_pose(torch.randn(4, 4000, 20)).shape == z.shape
    assert z.shape[0] == 4 and np.allclose(z.norm(dim=1).numpy(), 1.0, atol=1e-5)
    # the cpep sweep started from the MAEs the mae sweep registered, and says so
    parent = next(r for r in runs if r.info.run_name.startswith("sweep"))
    # (the mae sweep's v1 when it became champion; below chance it did not, and the cpep
    # sweep pre-trained its own MAEs first: v2)
    mae_v = "1" if c.get_model_version("mae-emg", "1").tags["became_champion"] == "true" else "2"
    assert parent.data.params["mae.emg"] == f"models:/mae-emg/{mae_v}"
    # ... and so did its final model: the registered CPEP's frozen pose anchor is exactly the
    # pinned mae-pose version, and the final run records both versions
    anchor = load_model(tracking.model_files(f"models:/mae-pose/{mae_v}"))
    for k, w in anchor.state_dict().items():
        assert torch.equal(full.model.pose.state_dict()[k], w), k
    assert final.data.tags["emg.mae.pose"] == f"models:/mae-pose/{mae_v}"
    assert final.data.metrics["eval_zs_excl_bacc"] <= 1.0  # own recording left out of the bank

    # a study: both ends of the data-efficiency grid, scored per seed, tabulated and plotted
    study = _run(tmp_path, "cpep", "--study", "data_efficiency")
    assert study.returncode == 0, study.stdout[-3000:] + study.stderr[-3000:]
    assert "study data_efficiency: {'gestures.pretrain_fraction': 0.2} eval_zs_bacc" in study.stdout
    assert not [v for v in c.search_model_versions("name='cpep'") if int(v.version) > 1]
    assert len(c.search_model_versions("name='cpep'")) == 1
    runs = c.search_runs([exp.experiment_id], "tags.`emg.study` = 'data_efficiency'")
    study_run = next(r for r in runs if r.info.run_name == "study data_efficiency")
    names = {a.path for a in c.list_artifacts(study_run.info.run_id, "study")}
    assert names == {"study/study-data_efficiency.csv", "study/study-data_efficiency.png"}
    table = Path(c.download_artifacts(study_run.info.run_id, "study/study-data_efficiency.csv"))
    import csv

    rows = list(csv.DictReader(table.open()))
    assert [float(r["gestures.pretrain_fraction"]) for r in rows] == [0.2, 1.0]
    for r in rows:
        assert r["status"] == "ok"
        for k in ("eval_zs_bacc", "eval_lp_in_dist", "eval_lp_unseen", "eval_zs_unseen"):
            assert 0.0 <= float(r[k]) <= 1.0 and float(r[k + "_std"]) >= 0.0
    trials = [r for r in runs if "emg.trial" in r.data.tags]
    assert len(trials) == 2 and all("eval_lp_in_dist" in r.data.metrics for r in trials)
    assert not any(r.data.tags.get("registry.cpep.version") for r in trials)
