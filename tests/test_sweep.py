"""The sweep end to end: ``ray job submit`` against a real ``ray start --head``, MLflow, registry.

One ``--smoke`` sweep is submitted as a Ray job (module fixture); the tests then read what it left
in MLflow: the run tree, params, per-epoch metrics, tags, artifacts, the registered champion. The
fault tests (NaN trial, SIGTERM, ``--resume``, a killed worker) run their own small sweeps.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "orchestration" / "sweep.py"
BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="disabled",
        PATH=f"{BIN}:{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        RAY_USAGE_STATS_ENABLED="0",
        **extra,
    )
    # a test that loaded a model pointed mlflow at its own store, and mlflow.set_tracking_uri
    # exports it as these variables: a later sweep would then log into that test's store
    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(var, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``sweep.py kinembed ARGS`` in ``cwd``: a quick run that should stop at its checks."""
    return subprocess.run(
        [sys.executable, str(SWEEP), "kinembed", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=_env(),
    )


def test_help_names_every_option():
    out = subprocess.run(
        [sys.executable, str(SWEEP), "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0
    for opt in (
        "--data",
        "--stages",
        "--smoke",
        "--resume",
        "--max-concurrent",
        "--address",
        "--storage-path",
        "--tracking-uri",
        "--experiment",
        "--workers",
        "--gpus-per-worker",
        "--study",
    ):
        assert opt in out.stdout, opt


@pytest.mark.mlflow
def test_unreachable_tracking_server_is_a_one_line_error(tmp_path):
    port = _free_port()
    out = _sweep(tmp_path, "--smoke", "--tracking-uri", f"http://127.0.0.1:{port}")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "unreachable" in lines[0]
    assert not (tmp_path / "ray_results").exists()  # nothing started


def test_unknown_stage_names_the_option(tmp_path):
    out = _sweep(tmp_path, "--stages", "loss,nope")
    assert out.returncode == 2
    assert "--stages" in out.stderr and "nope" in out.stderr
    out = _sweep(tmp_path, "--study", "data_efficiency")  # kinembed's space has no studies
    assert out.returncode == 2
    assert "--study" in out.stderr and "no study 'data_efficiency'" in out.stderr
    assert not (tmp_path / "ray_results").exists()  # nothing started


@pytest.mark.mlflow
def test_data_without_kinematics_is_refused_before_anything_starts(tmp_path):
    """EMG alone (e.g. flexemg, myoarmband) cannot train any of the sweeps: one clear line naming
    the data and the field, exit 2, and no Ray results or MLflow run left behind."""
    from dataclasses import replace

    from emgcore.data import open_dataset, write_byod

    recs = open_dataset("emg2pose-like", duration_s=1.0, n_subjects=2, sessions=("s0",))
    folder = tmp_path / "emg_only"
    write_byod(folder, [replace(r, kinematics=None, joint_names=()) for r in recs[:4]])
    out = subprocess.run(
        [sys.executable, str(SWEEP), "jepa", "--data", str(folder)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_env(),
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert str(folder) in out.stderr and "'kinematics'" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "ray_results").exists()
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


# -- one smoke sweep submitted as a Ray job -------------------------------------------------------


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("job")
    port, dash = _free_port(), _free_port()
    env = _env(EMGCORE_CACHE=str(tmp / "cache"))
    subprocess.run(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--disable-usage-stats",
        ],
        check=True,
        env=env,
        cwd=tmp,
        capture_output=True,
        timeout=120,
    )
    db = tmp / "mlflow.db"
    try:
        out = subprocess.run(
            [
                str(BIN / "ray"),
                "job",
                "submit",
                "--address",
                f"http://127.0.0.1:{dash}",
                "--working-dir",
                ".",
                "--",
                "python",
                "orchestration/sweep.py",
                "kinembed",
                "--smoke",
                "--tracking-uri",
                f"sqlite:///{db}",
                "--storage-path",
                str(tmp / "results"),
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True)
    return {
        "out": out.stdout + out.stderr,
        "rc": out.returncode,
        "uri": f"sqlite:///{db}",
        "tmp": tmp,
    }


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _runs(uri: str):
    c = _client(uri)
    exp = c.get_experiment_by_name("kinembed")
    return c, exp, c.search_runs([exp.experiment_id], max_results=1000)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.mlflow
def test_job_submission_runs_the_sweep_and_prints_one_summary(job):
    assert job["rc"] == 0, job["out"][-3000:]
    out = job["out"]
    assert "succeeded" in out
    for stage in ("loss", "architecture", "widths", "optimisation"):
        assert f"stage {stage}: best cv_r2" in out
    assert "held-out R^2" in out and "registry        kinembed v1: became champion" in out
    assert f"mlflow ui --backend-store-uri {job['uri']}" in out


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.mlflow
def test_mlflow_holds_the_run_tree_params_metrics_tags_artifacts(job):
    c, _exp, runs = _runs(job["uri"])
    by_stage: dict[str | None, list] = {}
    for r in runs:
        by_stage.setdefault(r.data.tags.get("emg.stage"), []).append(r)
    (parent,) = by_stage[None]
    assert {k: len(v) for k, v in by_stage.items() if k} == {
        "loss": 3,  # the stage run and its 2 trials
        "architecture": 3,
        "widths": 3,
        "optimisation": 3,
        "final": 1,
    }
    assert {r.info.status for r in runs} == {"FINISHED"}
    pid = parent.info.run_id
    stage_runs = {r.data.tags["emg.stage"]: r for r in runs if r.info.run_name.startswith("stage")}
    for r in runs:
        if r is parent:
            continue
        want = pid if r.info.run_name.startswith(("stage", "final")) else None
        got = r.data.tags["mlflow.parentRunId"]
        if want:
            assert got == want
        else:  # a trial hangs under its stage's run
            assert got == stage_runs[r.data.tags["emg.stage"]].info.run_id
        for tag in ("emg.method", "emg.sweep", "emg.git_commit", "emg.space_hash"):
            assert r.data.tags[tag], tag
    assert len(parent.data.tags["emg.data_fingerprint"]) == 12
    assert parent.data.metrics["heldout_r2"] > 0.0  # the smoke model still decodes something
    trial = next(r for r in runs if r.info.run_name.startswith("trial"))
    assert trial.data.params["kinembed.batch_size"] in {"128", "256", "512"}
    assert "decoder.dilations" in trial.data.params
    history = c.get_metric_history(trial.info.run_id, "train_loss")
    steps = [m.step for m in history]
    assert len(steps) >= 4 and steps == sorted(set(steps))  # per epoch, once each
    assert "cv_r2" in trial.data.metrics
    arts = {a.path for a in c.list_artifacts(pid, "leaderboards")}
    assert {f"leaderboards/leaderboard-{s}.csv" for s in stage_runs} <= arts
    final = next(r for r in runs if r.info.run_name == "final")
    report = {a.path for a in c.list_artifacts(final.info.run_id, "report")}
    for name in ("config.yaml", "fig2_trace.png", "fig3_per_doa.png", "tables.txt", "scores.csv"):
        assert f"report/{name}" in report, name
    assert any(
        a.path.endswith(".png") for a in c.list_artifacts(stage_runs["loss"].info.run_id, "plots")
    )
    loss_board = c.download_artifacts(pid, "leaderboards/leaderboard-loss.csv")
    text = Path(loss_board).read_text()
    assert text.startswith("trial,overrides,cv_r2,status,error") and text.count("\n") == 3


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.mlflow
def test_registered_champion_loads_and_reproduces_its_score(job):
    import torch

    from emgcore.data import open_dataset
    from emgcore.decoder import r2_per_output
    from emgcore.experiment import load_config, prepare, resolve_config
    from orchestration import tracking

    c = _client(job["uri"])
    champ = c.get_model_version_by_alias("kinembed", "champion")
    assert champ.tags["became_champion"] == "true"
    tracking.use(job["uri"])
    model = tracking.load_model("models:/kinembed@champion")
    # the same held-out session the sweep scored it on
    cfg = load_config(resolve_config("kinembed-smoke"))
    recs = open_dataset("db8-like", duration_s=30.0, n_subjects=1)
    (subj,), (train, test) = prepare(recs, cfg)[0], prepare(recs, cfg)[1:]
    fold = subj.fold(train, (test,))
    seg = fold.evals[test]
    with torch.no_grad():
        pred = np.asarray(model(torch.as_tensor(fold.x_scale.inverse(seg.x))))
    assert pred.shape == seg.y.shape
    r2 = float(np.mean(r2_per_output(seg.y, pred)))
    assert r2 == pytest.approx(float(champ.tags["heldout_r2"]), abs=1e-4)


# -- faults ---------------------------------------------------------------------------------

FAULT_SPACE = """
method: kinembed
metric: cv_r2
mode: max
stages:
  - name: temperature
    grid:
      kinembed.temperature: [1.0e-45, 0.2]   # the first one overflows the logits: NaN loss
  - name: dropout
    inherit: [temperature]
    grid:
      kinembed.dropout: [0.0, 0.1, 0.2]
"""


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.mlflow
def test_nan_trial_fails_sweep_goes_on_sigterm_and_resume(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(FAULT_SPACE)
    db = tmp_path / "mlflow.db"
    args = [
        sys.executable,
        str(SWEEP),
        "kinembed",
        "--smoke",
        "--space",
        str(space),
        "--max-concurrent",
        "1",
        "--tracking-uri",
        f"sqlite:///{db}",
    ]
    env = _env(EMGCORE_CACHE=str(tmp_path / "cache"))
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    # wait until the second stage has finished one trial, then SIGTERM the driver mid-stage
    deadline = time.time() + 600
    text = ""
    while time.time() < deadline and proc.poll() is None:
        text = (tmp_path / "first.log").read_text()
        if text.count("  dropout ") and " finished: cv_r2" in text.split("stage dropout:")[-1]:
            break
        time.sleep(0.5)
    assert proc.poll() is None, text[-3000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 130
    text = (tmp_path / "first.log").read_text()
    done_before = {
        ln.split()[2] for ln in text.splitlines() if "  dropout " in ln and " finished: " in ln
    }
    assert done_before
    assert "FAILED: " in text and "kinembed loss is nan" in text  # the stated reason
    assert "stage temperature: best cv_r2" in text and "1 failed" in text

    c, _, runs = _runs(f"sqlite:///{db}")
    assert "RUNNING" not in {r.info.status for r in runs}
    nan_run = next(r for r in runs if r.info.status == "FAILED")
    assert "NonFiniteLossError" in nan_run.data.tags["emg.error"]
    first_ids = {r.data.tags["emg.key"]: r.info.run_id for r in runs}

    resumed = subprocess.run(
        [*args, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "stage temperature: done in an earlier run" in resumed.stdout
    c, _exp, runs = _runs(f"sqlite:///{db}")
    keys = [r.data.tags["emg.key"] for r in runs]
    assert len(keys) == len(set(keys))  # no duplicate run
    for key, run_id in first_ids.items():  # and the earlier ones were continued, not replaced
        assert run_id in {r.info.run_id for r in runs if r.data.tags["emg.key"] == key}
    trials = [r for r in runs if r.info.run_name.startswith("trial")]
    assert len(trials) == 4  # 2 + 2 (--smoke keeps both ends of a grid): nothing ran twice
    finished_first = [r for r in trials if r.data.tags["emg.trial"] in done_before]
    assert len(finished_first) == len(done_before)
    for r in finished_first:
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "train_loss")]
        assert steps == sorted(set(steps)), "a completed trial was repeated"
    assert {r.info.status for r in runs} == {"FINISHED", "FAILED"}
    (state,) = (tmp_path / "ray_results").glob("*/sweep.json")
    assert json.loads(state.read_text())["status"] == "FINISHED"
    again = subprocess.run(
        [*args, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 2 and "already finished" in again.stderr


def _trial_spec(tmp_path: Path, uri: str, experiment_id: str, key: str, fault: dict) -> dict:
    from orchestration.trial import trial_spec

    return trial_spec(
        mode="cv",
        config="kinembed-smoke",
        overrides={"kinembed.temperature": 0.2},
        data="db8-like",
        sim={"duration_s": 30.0, "n_subjects": 1},
        cache=str(tmp_path / "cache"),
        fault=fault,
        tracking={
            "uri": uri,
            "experiment_id": experiment_id,
            "parent": None,
            "key": key,
            "name": key,
            "tags": {"emg.sweep": "test"},
        },
    )


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.mlflow
def test_killed_worker_resumes_from_checkpoint_with_the_same_result(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from orchestration import tracking
    from orchestration.trial import train_loop

    uri = f"sqlite:///{tmp_path}/m.db"
    t = tracking.Tracker(uri)
    exp = t.experiment("faults")
    marker = tmp_path / "killed"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={
            "env_vars": {"PYTHONPATH": str(ROOT), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
        },
    )
    results = {}
    try:
        for name, fault in (
            ("clean", {}),
            ("killed", {"kill_in_unit": 1, "at_epoch": 2, "marker": str(marker)}),
        ):
            results[name] = TorchTrainer(
                train_loop,
                train_loop_config=_trial_spec(tmp_path, uri, exp, name, fault),
                scaling_config=ray.train.ScalingConfig(num_workers=1),
                run_config=ray.train.RunConfig(
                    name=name,
                    storage_path=str(tmp_path / "results"),
                    failure_config=ray.train.FailureConfig(max_failures=1),
                ),
            ).fit()
    finally:
        ray.shutdown()
    assert marker.exists()  # the worker really was SIGKILLed once
    clean, killed = results["clean"].metrics, results["killed"].metrics
    assert killed["units_done"] == clean["units_done"] == 2
    assert killed["cv_r2"] == clean["cv_r2"]  # bit for bit: units are deterministic
    run_id = t.find(exp, "killed")
    assert t.status(run_id) == "FINISHED"
    # unit 0 finished before the kill and was not run again after the restart
    first_unit = [m for m in t.client.get_metric_history(run_id, "r2.s00/A1-to-A2")]
    assert len(first_unit) == 1


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.mlflow
def test_mlflow_ui_shows_the_sweep_in_headless_chromium(job, tmp_path):
    """Serve the sweep's MLflow store and read it the way a researcher does, in a real browser."""
    import re
    import shutil

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    from tests.test_tracking import _free_port as free_port
    from tests.test_tracking import start_server

    _, exp, runs = _runs(job["uri"])
    parent = next(r for r in runs if r.info.run_name.startswith("sweep "))
    port = free_port()
    server = start_server(job["uri"].removeprefix("sqlite:///"), str(tmp_path / "art"), port)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium,
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                ],
            )
            page = browser.new_page(viewport={"width": 2400, "height": 1200})
            page.goto(
                f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs"
                "?workflowType=machine_learning",
                wait_until="domcontentloaded",
            )
            page.get_by_text(re.compile(rf"^{len(runs)} matching runs")).wait_for(timeout=90_000)
            # the metric columns a researcher compares runs on
            page.get_by_role("button", name="Columns", exact=True).click()
            page.get_by_text("Metrics (").click()
            page.keyboard.press("Escape")
            headers = {h.inner_text().strip() for h in page.locator("[role=columnheader]").all()}
            assert {"cv_r2", "heldout_r2", "heldout_r2_std", "best_cv_r2"} <= headers
            # the sweep's parent run opens onto its stages and the final run
            row = page.locator("[role=row]", has_text=parent.info.run_name)
            row.locator("button").first.click()
            page.get_by_text("stage loss").wait_for(timeout=30_000)
            grid = page.locator("[role=grid], [role=treegrid]").first.inner_text()
            browser.close()
    finally:
        server.terminate()
    for name in ("final", "stage loss", "stage architecture", "stage widths", "stage optimisation"):
        assert name in grid
    assert repr(parent.data.metrics["heldout_r2"]) in grid  # the held-out score, in its column
    assert re.search(r"kinembed\s+v1", grid)  # the registered model beside the final run
