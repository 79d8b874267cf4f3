"""The sweep end to end: ``ray job submit`` against a real ``ray start --head``, MLflow, registry.

One ``--smoke`` sweep is submitted as a Ray job (module fixture); the tests then read what it left
in MLflow: the run tree, params, per-epoch metrics, tags, artifacts, the registered champion. The
fault tests (NaN trial, SIGTERM, ``--resume``, a killed worker) run their own small sweeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tests.orchestration.processes import free_port, stop_own_ray, submit

ROOT = Path(__file__).resolve().parents[2]
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
    port = free_port()
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


@pytest.mark.mlflow
def test_unnamed_sessions_are_refused_until_the_held_out_one_is_chosen(tmp_path):
    """Sessions not named like DB8's A1/A2/A3: no silent alphabetical choice of the held-out
    session; one line naming the field, exit 2, nothing started. Named in a config, the split
    is accepted, printed and recorded resolved (checked by the smoke job below for A1-A3)."""
    from dataclasses import replace

    from emgcore.data import open_dataset, write_byod

    names = {"A1": "gait", "A2": "standing", "A3": "sitting"}
    recs = open_dataset("db8-like", duration_s=2.0, n_subjects=1)
    folder = tmp_path / "byod"
    write_byod(folder, [replace(r, session=names[r.session]) for r in recs])
    out = _sweep(tmp_path, "--data", str(folder))
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]  # after MLflow's own notes on a new store
    assert line.startswith("error: field 'test_session': cannot tell which of the sessions")
    assert "['gait', 'sitting', 'standing']" in line, line
    assert not (tmp_path / "ray_results").exists()


@pytest.mark.mlflow
def test_mae_pretrained_on_other_data_is_refused_before_anything_starts(tmp_path):
    """CPEP / EMBridge start from the registered MAEs only when those saw this sweep's data and
    split: otherwise one line naming the model and the way out, exit 2, nothing started."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    for k in ("emg", "pose"):
        client.create_registered_model(f"mae-{k}")
        v = client.create_model_version(
            f"mae-{k}",
            source=str(tmp_path / "model"),
            tags={"data_fingerprint": "0123456789ab", "split": "feedfacecafe"},
        )
        client.set_registered_model_alias(f"mae-{k}", "champion", v.version)
    out = subprocess.run(
        [sys.executable, str(SWEEP), "cpep", "--smoke", "--tracking-uri", uri],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=_env(),
    )  # fmt: skip
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert "mae-emg@champion v1 was pre-trained on data 0123456789ab split feedfacecafe" in line
    assert "--mae-any-data" in line
    assert not (tmp_path / "ray_results").exists()
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


# -- what the MLflow UI shows, without a sweep -----------------------------------------------------


def _view_state(experiment) -> tuple[str, dict]:
    """The one saved view of ``experiment``: its key and state (plain or as the UI deflates)."""
    import base64
    import zlib

    from orchestration import tracking

    ((key, value),) = [
        (k, v) for k, v in experiment.tags.items() if k.startswith(tracking.VIEW_TAG)
    ]
    envelope = json.loads(value)
    text = envelope["state"]
    if text.startswith("deflate;"):
        text = zlib.decompress(base64.b64decode(text.removeprefix("deflate;"))).decode()
    return key.removeprefix(tracking.VIEW_TAG), {"name": envelope["name"], **json.loads(text)}


def test_trial_names_and_ui_links_read_well():
    from orchestration import tracking

    assert tracking.run_label({"kinembed.lr": 0.001, "kinembed.loss": "vicreg"}) == (
        "lr=0.001 loss=vicreg"
    )
    values = {"kinembed.emg_hidden": [256, 128], "a.dropout": 0.0, "b.dropout": 1e-45}
    assert tracking.run_label(values) == "emg_hidden=[256,128] a.dropout=0 b.dropout=1e-45"
    assert len(tracking.run_label({"k": "x" * 500})) == tracking.LABEL_MAX
    links = tracking.ui_links("sqlite:////data/mlflow.db", "7", "kinembed-1", "kinembed")
    assert links["command"] == (
        "mlflow ui --backend-store-uri sqlite:////data/mlflow.db --host 127.0.0.1 --port 5000"
    )
    base = "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert links["experiment"] == base
    assert links["view"] == f"{base}&viewStateShareKey=kinembed-1"
    assert links["model"] == "http://127.0.0.1:5000/#/models/kinembed?workflowType=machine_learning"
    server = tracking.ui_links("https://u:secret@mlflow.lab/", "3")
    assert "command" not in server and "secret" not in json.dumps(server)
    assert server["experiment"].startswith("https://u:***@mlflow.lab/#/experiments/3/runs?")
    db = tracking.ui_links("postgresql://u:pw@db/mlflow", "3")
    assert db["command"].startswith("mlflow ui --backend-store-uri postgresql://u:***@db/mlflow")


@pytest.mark.mlflow
def test_trial_runs_views_winners_and_checkpoints_in_the_store(tmp_path):
    """Every piece the sweep uses, on a store of its own: the trial run named by its searched
    values with them under ``searched.``, the saved view, the winner marks, the checkpoint."""
    from orchestration import tracking

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    t = tracking.Tracker(uri)
    exp = t.experiment("kinembed")
    assert t.client.get_experiment(exp).tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )
    t.client.set_experiment_tag(exp, "mlflow.experimentKind", "custom")  # someone's choice
    assert t.experiment("kinembed") == exp
    assert t.client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom"  # kept

    stage = t.open_run(exp, "s/loss", "stage loss", {"emg.stage": "loss"})
    tr = {
        "uri": uri,
        "experiment_id": exp,
        "key": "s/loss/t_00001",
        "name": "loss",
        "tags": {"emg.stage": "loss", "emg.trial": "t_00001"},
        "parent": stage,
        "searched": ["kinembed.loss", "kinembed.temperature"],
    }
    params = {"kinembed.loss": "vicreg", "kinembed.temperature": "0.5", "kinembed.lr": "0.003"}
    overrides = {"kinembed.loss": "vicreg", "kinembed.temperature": 0.5, "decoder.x": 1}
    _, run_id, _ = tracking.open_trial_run(tr, params, overrides)
    run = t.client.get_run(run_id)
    assert run.info.run_name == "loss=vicreg temperature=0.5"
    assert run.data.tags["emg.trial"] == "t_00001"
    assert run.data.tags["emg.searched"] == "kinembed.loss,kinembed.temperature"
    assert run.data.params["searched.kinembed.loss"] == "vicreg"
    assert run.data.params["searched.kinembed.temperature"] == "0.5"
    assert run.data.params["kinembed.lr"] == "0.003" and "searched.kinembed.lr" not in (
        run.data.params
    )
    # a restarted worker continues the run, name and params unchanged
    assert tracking.open_trial_run(tr, params, overrides)[1] == run_id
    # without searched keys (a final run, a spec from before): the spec's name
    _, plain, _ = tracking.open_trial_run({**tr, "key": "s/final", "searched": None}, params)
    assert t.client.get_run(plain).info.run_name == "loss"

    assert t.mark_winner(exp, stage, "s/loss/t_00001", "t_00001", "cv_r2 +0.4100") == run_id
    assert t.mark_winner(exp, stage, "s/loss/nope", "nope", "-") is None
    assert t.client.get_run(run_id).data.tags["emg.winner"] == "true"
    tags = t.client.get_run(stage).data.tags
    assert tags["emg.winner"] == "loss=vicreg temperature=0.5" and tags["winner.run_id"] == run_id
    assert (
        f"[loss=vicreg temperature=0.5](#/experiments/{exp}/runs/{run_id})"
        in (tags["mlflow.note.content"])
    )

    state = tracking.sweep_view("s", "cv_r2", "max", ["heldout_r2"], ["kinembed.loss"])
    assert t.save_view(exp, "s", "sweep s", state) == "s"
    key, saved = _view_state(t.client.get_experiment(exp))
    assert key == "s" and saved["name"] == "sweep s"
    assert saved["searchFilter"] == "tags.`emg.sweep` = 's' and tags.`emg.stage` LIKE '%'"
    assert saved["orderByKey"] == "metrics.`cv_r2`" and saved["orderByAsc"] is False
    for col in ("metrics.`cv_r2`", "metrics.`heldout_r2`", "params.`searched.kinembed.loss`"):
        assert col in saved["selectedColumns"]
    assert "tags.`emg.winner`" in saved["selectedColumns"]
    many = tracking.sweep_view("s", "m", "min", [], [f"k.key{i:04d}" for i in range(600)])
    t.save_view(exp, "s", "sweep s", many)  # too long for a tag as JSON: deflated as the UI does
    assert (
        _view_state(t.client.get_experiment(exp))[1]["selectedColumns"] == (many["selectedColumns"])
    )

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "progress.json").write_text('{"values": {}, "step": 3}')
    assert t.log_checkpoint(run_id, ckpt)
    assert [a.path for a in t.client.list_artifacts(run_id, "checkpoint")] == [
        "checkpoint/progress.json"
    ]
    assert not t.log_checkpoint(plain, ckpt, limit=4)
    assert t.client.get_run(plain).data.tags["emg.checkpoint"].startswith("not logged")
    assert not t.client.list_artifacts(plain, "checkpoint")


@pytest.mark.mlflow
def test_registered_model_and_versions_are_described(tmp_path):
    """The registry page explains the model (method, input and output, how to load it) and each
    version (sweep, scores, decision); a description someone wrote is kept."""
    import torch

    from orchestration import tracking

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracking.use(uri)
    t = tracking.Tracker(uri)
    exp = t.experiment("kinembed")
    x = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)

    def register(score: float) -> str:
        run = t.open_run(exp, f"final{score}", "final", {"emg.method": "kinembed"})
        sel = tracking.Score("cv_r2", score, "session CV over A1+A2", 0.0)
        test = tracking.Score("heldout_r2", 0.3, "s0/A3", 0.0)
        tags = {"sweep": "kinembed-1", "reason": "no champion yet"}
        version, _ = tracking.register(run, torch.nn.Linear(6, 2), x, "kin", sel, None, test, tags)
        t.end(run)
        return version

    version = register(0.5)
    sel0 = tracking.Score("cv_r2", 0.5, "session CV over A1+A2", 0.0)
    model = t.client.get_registered_model("kin")
    text = model.description
    assert "`kinembed` method" in text and 'load_model("models:/kin@champion")' in text
    assert "float32 (-1, 6)" in text and "float32 (-1, 2)" in text, text
    assert "load_inference" not in text  # no inference file was registered
    with_pipe = tracking.model_description("kin", "kinembed", "x", "y", ["inference.pt"], sel0)
    assert 'load_inference(mlflow.artifacts.download_artifacts("models:/kin@champion"))' in (
        with_pipe
    )
    v = t.client.get_model_version("kin", version)
    assert "Sweep `kinembed-1`" in v.description and "cv_r2 0.5000" in v.description
    assert "heldout_r2 0.3000" in v.description and "Became champion" in v.description
    t.client.update_registered_model("kin", description="ours, by hand")
    version = register(0.6)
    assert t.client.get_registered_model("kin").description == "ours, by hand"
    assert "cv_r2 0.6000" in t.client.get_model_version("kin", version).description


# -- one smoke sweep submitted as a Ray job -------------------------------------------------------


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("job")
    # its own temp dir names this cluster's processes (short: Ray's socket paths live in it)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    # Every port named: the dashboard agent's HTTP port defaults to 52365, and when another Ray
    # on the machine holds it the agent stays up without HTTP, so every submission answers "No
    # available agent" (Ray 2.60 dashboard/agent.py) -- what failed CI once.
    port, dash, agent = free_port(), free_port(), free_port()
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
            f"--dashboard-agent-listen-port={agent}",
            "--disable-usage-stats",
            f"--temp-dir={ray_tmp}",
        ],
        check=True,
        env=env,
        cwd=tmp,
        capture_output=True,
        timeout=120,
    )
    db = tmp / "mlflow.db"
    # hyper-parameters chosen on one subject, the final scored on both
    space = tmp / "kinembed.yaml"
    text = (ROOT / "search_spaces" / "kinembed.yaml").read_text()
    space.write_text(text.replace("subjects: [S1, S3, S6, S8, S11]", "subjects: [s00]"))
    try:
        out = submit(
            f"http://127.0.0.1:{dash}",
            ["python", "orchestration/sweep.py", "kinembed", "--smoke", "--sim-subjects", "2",
             "--space", str(space), "--tracking-uri", f"sqlite:///{db}",
             "--storage-path", str(tmp / "results")],
            env, ROOT, timeout=1800,  # two subjects; a loaded machine needs the headroom
        )  # fmt: skip
        if "No available agent to submit job" in out.stdout + out.stderr:
            log = next(ray_tmp.glob("session_*/logs/dashboard_agent.log"), None)
            out.stderr += "\n--- dashboard_agent.log ---\n" + (
                log.read_text()[-3000:] if log else "absent"
            )
        # what of the job still runs once it finished (a short wait: actors end asynchronously)
        job_id, left = _job_actors_left(out.stdout + out.stderr, dash, env)
    finally:
        stop_own_ray(ray_tmp)
    return {
        "out": out.stdout + out.stderr,
        "rc": out.returncode,
        "uri": f"sqlite:///{db}",
        "tmp": tmp,
        "job_id": job_id,
        "actors_left": left,
    }


def _job_actors_left(
    out: str, dash: int, env: dict[str, str], wait_s: float = 30.0
) -> tuple[str, list[dict]]:
    """The Ray job id of the submission ``out`` names, and its actors still ALIVE on the
    cluster (``ray list actors``) after at most ``wait_s``."""
    import re

    found = re.search(r"Job '(\S+)' submitted successfully", out)
    if found is None:
        return "", []
    address = f"http://127.0.0.1:{dash}"
    from ray.job_submission import JobSubmissionClient

    job_id = JobSubmissionClient(address).get_job_info(found.group(1)).job_id or ""
    deadline = time.time() + wait_s
    while True:
        listed = subprocess.run(
            [str(BIN / "ray"), "list", "actors", "--address", address, "--filter",
             "state=ALIVE", "--format", "json", "--detail", "--limit", "10000"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if listed.returncode != 0:  # not a pass: say what failed
            return job_id, [{"ray list actors failed": listed.stderr[-2000:]}]
        lines = listed.stdout.splitlines()  # "No resource in the cluster" when none is alive
        start = next((i for i, ln in enumerate(lines) if ln.startswith("[")), len(lines))
        alive = json.loads("\n".join(lines[start:])) if start < len(lines) else []
        left = [
            {k: a.get(k) for k in ("class_name", "name", "job_id", "is_detached", "pid")}
            for a in alive
            if a.get("job_id") == job_id
        ]
        if not left or time.time() > deadline:
            return job_id, left
        time.sleep(3)


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
    assert "held-out R^2" in out and "registry        kinembed v1: " in out
    assert "split: sessions A1, A2 train (session CV selects on them), A3 held out" in out
    assert "chosen on       s00 (session CV on A1,A2); held-out A3 scored on all 2: s00, s01" in out
    assert f"mlflow ui --backend-store-uri {job['uri']}" in out
    # the UI's links, in model-training mode (it opens in GenAI mode, without metric columns)
    _, exp, _ = _runs(job["uri"])
    page = f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?workflowType="
    sid = next(ln.split()[2] for ln in out.splitlines() if ln.startswith("== sweep "))
    assert f"  runs            {page}machine_learning&viewStateShareKey={sid}\n" in out
    assert f"  all runs        {page}machine_learning\n" in out
    assert "  model           http://127.0.0.1:5000/#/models/kinembed?workflowType=machine_" in out


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.mlflow
def test_a_finished_job_leaves_no_actor_of_its_own_running(job):
    """Ray Train's detached helpers (PlacementGroupCleaner, the AutoscalingCoordinator) are
    ended with the sweep: none of the job's actors is alive after it (a short wait allowed)."""
    assert job["rc"] == 0, job["out"][-3000:]
    assert job["job_id"], job["out"][-3000:]
    assert job["actors_left"] == [], job["actors_left"]


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
    # the version records the final run's score per seed (the nightly gate compares them),
    # exact: their mean is the run's heldout_r2 (1 subject x 3 smoke seeds)
    from emgcore.methods.base import seed_scores

    version = c.get_model_version("kinembed", "1")
    seeds = seed_scores(version.tags, "heldout_r2")
    assert seeds is not None and len(seeds) == 3
    assert sum(seeds) / 3 == pytest.approx(parent.data.metrics["heldout_r2"], rel=1e-12)
    # and what defines it, for the nightly to retrain exactly that: the winner, data and seeds
    recipe = json.loads(version.tags["recipe"])
    assert recipe["method"] == "kinembed" and recipe["seeds"] == [0, 1, 2]
    assert recipe["fingerprint"] == parent.data.tags["emg.data_fingerprint"]
    winner = {
        k.removeprefix("winner."): v for k, v in parent.data.params.items() if k[:7] == "winner."
    }
    assert winner and {k: str(v) for k, v in recipe["overrides"].items()} == winner
    trial = next(r for r in runs if "emg.trial" in r.data.tags)  # named by its values
    assert trial.data.params["kinembed.batch_size"] in {"128", "256", "512"}
    # the split each run was computed on, resolved (not the config's empty defaults)
    assert trial.data.params["test_session"] == "A3"
    assert trial.data.params["train_sessions"] == "['A1', 'A2']"
    assert parent.data.params["split.test_session"] == "A3"
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
    assert text.startswith("trial,overrides,cv_r2,status,error")
    import csv

    board = list(csv.DictReader(text.splitlines()))
    ran = [r for r in board if r["status"] == "ok"]
    assert len(ran) == 2  # the smoke budget: both ends of the distinct points
    # points that cannot differ from a trial that ran (VICReg ignores the temperature) are
    # listed as its duplicates with its score, never run
    for r in [r for r in board if r["status"] != "ok"]:
        (twin,) = [t for t in ran if r["status"] == f"duplicate of {t['trial']}"]
        assert r["cv_r2"] == twin["cv_r2"] and json.loads(r["overrides"])["kinembed.loss"] == (
            "vicreg"
        )


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.mlflow
def test_mlflow_names_marks_describes_and_keeps_checkpoints(job):
    """What makes the sweep comparable in the UI, read through MlflowClient: trial runs named
    by their searched values (the id in ``emg.trial``) with ``searched.*`` params, one winner
    per stage marked on its run and on the stage run, the saved view, the descriptions of the
    registered model and its version, and each trial's last checkpoint among its artifacts."""
    import csv

    from orchestration import tracking

    c, exp, runs = _runs(job["uri"])
    parent = next(r for r in runs if r.info.run_name.startswith("sweep "))
    sid = parent.data.tags["emg.sweep"]
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    key, view = _view_state(exp)
    assert key == sid and view["name"] == f"sweep {sid}"
    for col in ("metrics.`cv_r2`", "metrics.`heldout_r2`", "tags.`emg.winner`"):
        assert col in view["selectedColumns"]
    assert "params.`searched.kinembed.lr`" in view["selectedColumns"]
    note = parent.data.tags["mlflow.note.content"]  # the summary, on the sweep's run page
    assert "kinembed v1" in note and f"viewStateShareKey={sid}" in note

    stages = {r.data.tags["emg.stage"]: r for r in runs if r.info.run_name.startswith("stage ")}
    trials = [r for r in runs if "emg.trial" in r.data.tags]
    assert len(trials) == 8
    for name, stage in stages.items():
        board = c.download_artifacts(parent.info.run_id, f"leaderboards/leaderboard-{name}.csv")
        tried = {
            row["trial"]: json.loads(row["overrides"])
            for row in csv.DictReader(Path(board).read_text().splitlines())
            if row["status"] == "ok"
        }
        mine = [r for r in trials if r.data.tags["emg.stage"] == name]
        assert {r.data.tags["emg.trial"] for r in mine} == set(tried)
        for r in mine:
            keys = r.data.tags["emg.searched"].split(",")
            values = tried[r.data.tags["emg.trial"]]
            assert set(keys) == set(values)  # the stage's grid, every key
            assert r.info.run_name == tracking.run_label({k: values[k] for k in keys})
            assert not r.info.run_name.startswith("trial")
            for k in keys:
                assert r.data.params[f"searched.{k}"] == r.data.params[k]
        (won,) = [r for r in mine if r.data.tags.get("emg.winner") == "true"]
        assert won.data.tags["emg.trial"] == stage.data.tags["winner.trial"]
        assert stage.data.tags["emg.winner"] == won.info.run_name
        assert stage.data.tags["winner.run_id"] == won.info.run_id
        assert won.info.run_id in stage.data.tags["mlflow.note.content"]
    # the loss stage's names, as a researcher reads them
    assert any(
        r.info.run_name.startswith("loss=") and " temperature=" in r.info.run_name for r in trials
    )

    final = next(r for r in runs if r.info.run_name == "final")
    for r in [*trials, final]:
        arts = {a.path for a in c.list_artifacts(r.info.run_id, "checkpoint")}
        assert "checkpoint/progress.json" in arts, r.info.run_name
        assert r.data.tags["emg.checkpoint"].startswith("checkpoint/")
    progress = json.loads(
        Path(c.download_artifacts(final.info.run_id, "checkpoint/progress.json")).read_text()
    )
    assert len(progress["values"]) == 6  # the final run's units: 2 subjects x 3 seeds

    model = c.get_registered_model("kinembed")
    assert "`kinembed` method" in model.description
    assert 'mlflow.pytorch.load_model("models:/kinembed@champion")' in model.description
    assert "**Takes** `float32 (-1, 256)`" in model.description, model.description
    assert "**Returns** `float32 (-1, 5)`" in model.description, model.description
    version = c.get_model_version("kinembed", "1")
    text = version.description
    assert f"Sweep `{sid}`" in text and final.info.run_id in text
    assert f"cv_r2 {float(version.tags['registered_cv_r2']):.4f}" in text
    assert f"heldout_r2 {float(version.tags['registered_heldout_r2']):.4f}" in text
    assert text.startswith("**Became champion**: cv_r2 ")  # the versions list shows line 1
    assert "Decision: no champion yet." in text


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.mlflow
def test_registered_champion_loads_and_reproduces_its_score(job):
    import torch

    from emgcore.config import resolve_config
    from emgcore.data import open_dataset
    from emgcore.methods.kinembed import load_config, prepare
    from emgcore.models.decoder import r2_per_output
    from orchestration import tracking

    c = _client(job["uri"])
    champ = c.get_model_version_by_alias("kinembed", "champion")
    assert champ.tags["became_champion"] == "true"
    tracking.use(job["uri"])
    model = tracking.load_model("models:/kinembed@champion")
    # the same held-out session the sweep scored it on
    cfg = load_config(resolve_config("kinembed-smoke"))
    recs = open_dataset("db8-like", duration_s=30.0, n_subjects=2)
    subjects, train, test = prepare(recs, cfg)
    subj = subjects[0]
    fold = subj.fold(train, (test,))
    seg = fold.evals[test]
    with torch.no_grad():
        pred = np.asarray(model(torch.as_tensor(fold.x_scale.inverse(seg.x))))
    assert pred.shape == seg.y.shape
    r2 = float(np.mean(r2_per_output(seg.y, pred)))
    assert r2 == pytest.approx(float(champ.tags["registered_heldout_r2"]), abs=1e-4)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.mlflow
def test_readme_recipe_runs_the_champion_on_raw_emg_from_any_folder(job, tmp_path):
    """The README's "Using a champion on new data" snippet, as written but for the tracking URI
    and the job's two simulated subjects, in a fresh process in an empty folder: raw held-out
    EMG in, the version's recorded held-out R^2 out."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("- **Using a champion on new data.**", 1)[1].split("```python", 1)[1]
    code = textwrap.dedent(block.split("```", 1)[0])
    assert "sqlite:////path/to/clone/mlflow.db" in code and "n_subjects=1" in code
    code = code.replace("sqlite:////path/to/clone/mlflow.db", job["uri"])
    code = code.replace("n_subjects=1", "n_subjects=2")
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = float(out.stdout.split("held-out R^2")[1])
    champ = _client(job["uri"]).get_model_version_by_alias("kinembed", "champion")
    assert got == pytest.approx(float(champ.tags["registered_heldout_r2"]), abs=1e-3)


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
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    # wait until the second stage has finished one trial, then SIGTERM the driver mid-stage:
    # its handler ends every run KILLED, saves Tune's state and says how the sweep ended
    deadline = time.time() + 600
    text = ""
    while time.time() < deadline and proc.poll() is None:
        text = (tmp_path / "first.log").read_text()
        if text.count("  dropout ") and " finished: cv_r2" in text.split("stage dropout:")[-1]:
            break
        time.sleep(0.5)
    assert proc.poll() is None, text[-3000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(180) == 143, (tmp_path / "first.log").read_text()[-3000:]
    _kill_group(proc.pid)
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
    (state_file,) = (tmp_path / "ray_results").glob("*/sweep.json")
    state = json.loads(state_file.read_text())
    assert state["status"] == "KILLED" and state["ended"]["how"] == "interrupted by SIGTERM"

    # resumed, then SIGTERM to its whole process group once a trial runs: Ray's raylet and GCS
    # die with the driver, whose core worker then exits the process at once (seen: before the
    # Python handler ran), as after a SIGKILL; its runs stay RUNNING until the next start
    # finds its driver gone
    log = (tmp_path / "second.log").open("w")
    proc = subprocess.Popen(
        [*args, "--resume"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if "  dropout " in (text := (tmp_path / "second.log").read_text()) and " started " in text:
            break
        time.sleep(0.5)
    assert proc.poll() is None, (tmp_path / "second.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGTERM)
    second_rc = proc.wait(180)
    _kill_group(proc.pid)
    c, _, runs = _runs(f"sqlite:///{db}")
    left = "RUNNING" in {r.info.status for r in runs}
    assert left == (second_rc != 143), (second_rc, (tmp_path / "second.log").read_text()[-3000:])

    # a bare --resume from another directory: the tracking server knows where the state is
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bare = [sys.executable, str(SWEEP), "kinembed", "--resume", "--tracking-uri", args[-1]]
    resumed = subprocess.run(
        bare, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming sweep {state['sweep_id']} from {tmp_path}/ray_results/" in resumed.stdout
    if left:  # the runs the second driver left, ended by this start
        assert f"sweep {state['sweep_id']} was left RUNNING (driver pid {proc.pid} on " in (
            resumed.stdout
        )
    assert "stage temperature: done in an earlier run" in resumed.stdout
    assert not (elsewhere / "ray_results").exists()  # everything went where the sweep lives
    c, _exp, runs = _runs(f"sqlite:///{db}")
    keys = [r.data.tags["emg.key"] for r in runs]
    assert len(keys) == len(set(keys))  # no duplicate run
    for key, run_id in first_ids.items():  # and the earlier ones were continued, not replaced
        assert run_id in {r.info.run_id for r in runs if r.data.tags["emg.key"] == key}
    trials = [r for r in runs if "emg.trial" in r.data.tags]
    assert len(trials) == 4  # 2 + 2 (--smoke keeps both ends of a grid): nothing ran twice
    finished_first = [r for r in trials if r.data.tags["emg.trial"] in done_before]
    assert len(finished_first) == len(done_before)
    for r in finished_first:
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "train_loss")]
        assert steps == sorted(set(steps)), "a completed trial was repeated"
    assert {r.info.status for r in runs} == {"FINISHED", "FAILED"}
    final = json.loads(state_file.read_text())
    assert final["status"] == "FINISHED"
    hows = [h["how"] for h in final["history"]]  # how each start of the sweep ended
    assert hows[0] == "interrupted by SIGTERM" and hows[-1] == "finished"
    assert len(hows) == 3 if left else hows[1] == "interrupted by SIGTERM"
    if left:
        assert "is gone" in hows[1] and final["history"][1]["found_by"] == final["sweep_id"]
    again = subprocess.run(
        [*args, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 2 and "already finished" in again.stderr


CTRL_C_SPACE = """
method: kinembed
metric: cv_r2
mode: max
stages:
  - name: dropout
    grid:
      kinembed.dropout: [0.0, 0.2]
"""

# when Ctrl-C lands: how to tell from the outside (process state / its log), and what it ends
CTRL_C_MOMENTS = {
    "importing": ("libtorch", "while starting"),  # torch's library mapped: inside the imports
    "starting Ray": ("split: ", "while starting"),  # data checked, Ray starting
    # Ray up, the parent run about to open: either, by a few milliseconds
    "opening the parent run": ("Ray's own messages go to", "either"),
    "at a stage boundary": ("MLflow UI: ", "KILLED"),  # the driver's own handler
    "mid-stage": ("  dropout ", "KILLED"),  # a trial started, inside tuner.fit(): Tune's handler
}


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.mlflow
@pytest.mark.parametrize("moment", sorted(CTRL_C_MOMENTS))
def test_ctrl_c_ends_the_sweep_as_interrupted_wherever_it_lands(tmp_path, moment):
    """Ctrl-C is SIGINT to the terminal's whole foreground process group (Ray's own processes
    block it). Wherever it lands the sweep exits 130 with one line and no traceback, and
    leaves no run RUNNING; once the parent run is open it ends it KILLED and prints the
    command that continues it (before: ignored at a stage boundary, FAILED mid-stage)."""
    marker, outcome = CTRL_C_MOMENTS[moment]
    space = tmp_path / "space.yaml"
    space.write_text(CTRL_C_SPACE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [sys.executable, str(SWEEP), "kinembed", "--smoke", "--space", str(space)]
    args += ["--max-concurrent", "1", "--skip-final", "--tracking-uri", uri]
    env = _env(EMGCORE_CACHE=str(tmp_path / "cache"))
    log_path = tmp_path / "out.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            args,
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if marker == "libtorch":
                with contextlib.suppress(OSError):
                    if marker in Path(f"/proc/{proc.pid}/maps").read_text():
                        break
            elif marker in log_path.read_text():
                break
            time.sleep(0.05)
        assert proc.poll() is None, log_path.read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(180)
    finally:
        _kill_group(proc.pid)
    out = log_path.read_text()
    assert rc == 130, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    if outcome == "either":
        outcome = "KILLED" if "open runs ended KILLED" in out else "while starting"
    if outcome == "while starting":
        assert "interrupted (SIGINT) while starting, before any run opened" in out
        assert "sweep failed" not in out
    else:
        line = next(ln for ln in out.splitlines() if "interrupted (SIGINT)" in ln)
        assert "open runs ended KILLED; continue with: " in line, out[-3000:]
        assert "python orchestration/sweep.py kinembed --resume " in line
        _c, _exp, runs = _runs(uri)
        parent = next(r for r in runs if r.info.run_name.startswith("sweep "))
        assert parent.info.status == "KILLED"
    if (tmp_path / "mlflow.db").exists():
        statuses = {r.info.status for r in _runs(uri)[2]} if _has_experiment(uri) else set()
        assert "RUNNING" not in statuses and "FAILED" not in statuses, statuses


def _has_experiment(uri: str) -> bool:
    return _client(uri).get_experiment_by_name("kinembed") is not None


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of a process group this test started (its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


def _trial_spec(tmp_path: Path, uri: str, experiment_id: str, key: str, fault: dict) -> dict:
    from orchestration.launch import trial_spec

    return trial_spec(
        mode="cv",
        method="kinembed",
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

    from emgcore.methods import METHODS
    from orchestration import tracking
    from orchestration.launch import pack_method, train_loop

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
                train_loop_config={
                    "spec": _trial_spec(tmp_path, uri, exp, name, fault),
                    "method": pack_method(METHODS["kinembed"]),
                },
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
    """Serve the sweep's MLflow store and read it the way a researcher does, in a real browser,
    through the links the sweep's summary prints: the runs in model-training mode with the
    metric columns, trial runs named by their values, the winners marked, and the registered
    model's description. Screenshots are saved in the test's tmp dir."""
    import re

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    from tests.orchestration.test_tracking import start_server, stop_server

    _, _exp, runs = _runs(job["uri"])
    parent = next(r for r in runs if r.info.run_name.startswith("sweep "))
    trials = [r for r in runs if "emg.trial" in r.data.tags]
    winners = [r for r in trials if r.data.tags.get("emg.winner") == "true"]
    assert len(winners) == 4  # one per stage
    printed = {
        ln[2:17].strip(): ln[17:].strip() for ln in job["out"].splitlines() if ln[:2] == "  "
    }
    port = free_port()
    here = f"http://127.0.0.1:{port}"
    view, all_runs, model = (
        printed[k].replace("http://127.0.0.1:5000", here) for k in ("runs", "all runs", "model")
    )
    assert "workflowType=machine_learning" in view and "viewStateShareKey=" in view
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
            # 1. the sweep's view, as printed: no clicking, the columns are there
            page.goto(view, wait_until="domcontentloaded")
            page.get_by_text(re.compile(rf"^{len(runs) - 1} matching runs")).wait_for(
                timeout=90_000
            )  # every run but the parent, listed flat
            page.locator("[role=columnheader]", has_text="heldout_r2_std").first.wait_for(
                timeout=30_000
            )
            page.get_by_text(winners[0].info.run_name).first.wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "sweep-view.png"))
            headers = {h.inner_text().strip() for h in page.locator("[role=columnheader]").all()}
            # a row is drawn in parts (the pinned run name, the rest): joined by its index
            parts: dict[str, list[str]] = {}
            for r in page.locator("[role=row][row-index]").all():
                parts.setdefault(r.get_attribute("row-index"), []).append(r.inner_text())
            rows = ["\t".join(bits) for bits in parts.values()]
            # 2. the registered model's page, as printed
            page.goto(model, wait_until="domcontentloaded")
            page.get_by_text("mlflow.pytorch.load_model").first.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "registered-model.png"), full_page=True)
            model_page = page.locator("body").inner_text()
            page.get_by_role("link", name="Version 1").first.click()  # its description in full
            page.get_by_text(re.compile(r"final run")).first.wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "model-version.png"), full_page=True)
            version_page = page.locator("body").inner_text()
            # 3. every run as a tree: the sweep's parent opens onto its stages and final run
            page.goto(all_runs, wait_until="domcontentloaded")
            page.get_by_text(re.compile(rf"^{len(runs)} matching runs")).wait_for(timeout=90_000)
            row = page.locator("[role=row]", has_text=parent.info.run_name)
            row.locator("button").first.click()
            page.get_by_text("stage loss").wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "all-runs.png"))
            grid = page.locator("[role=grid], [role=treegrid]").first.inner_text()
            browser.close()
    finally:
        stop_server(server)
    assert {"cv_r2", "best_cv_r2", "heldout_r2", "heldout_r2_std", "emg.winner"} <= headers
    # the searched values follow (the table draws the columns in sight: the first stage's)
    assert {"emg.stage", "Models", "searched.kinembed.loss"} <= headers, headers
    text = "\n".join(rows)
    for r in trials:  # named by the values they try, never by the trial id
        assert r.info.run_name in text and r.data.tags["emg.trial"] not in text
    for r in winners:  # the winner column: "true" on the winning trial's row, and only there
        (mine,) = [t for t in rows if r.info.run_name in t and "true" in t.split()]
        assert r.data.tags["emg.stage"] in mine.split()
    assert sum("true" in t.split() for t in rows) == len(winners)
    final = next(r for r in runs if r.info.run_name == "final")
    assert f"{final.data.metrics['heldout_r2']}"[:6] in text  # the held-out score, in its column
    assert re.search(r"kinembed\s+v1", text)  # the registered model beside the final run
    for words in ("**Takes**", "**Returns**"):
        assert words.strip("*") in model_page  # rendered markdown
    assert 'load_model("models:/kinembed@champion")' in model_page
    assert "Became champion" in model_page  # the version's description, first line
    assert "Decision: no champion yet" in version_page and "selection (chooses" in version_page
    for name in ("final", "stage loss", "stage architecture", "stage widths", "stage optimisation"):
        assert name in grid
