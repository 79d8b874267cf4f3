"""What a sweep leaves behind and where: unique sweep ids, no stale error tags on a run that
finished, results kept when it runs as a Ray job, a clear line when the job's python is not the
project's, and no detached Ray actors left running after it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from emgcore.errors import EmgDataError
from orchestration import launch, tracking
from orchestration.driver import Options, Sweep, job_defaults, ray_job_copy
from orchestration.state import SweepStore, new_sweep_id, sweep_id_example
from orchestration.sweep import parse

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ROOT / "orchestration" / "sweep.py"

# -- sweep ids -----------------------------------------------------------------------------------


def test_two_sweeps_started_in_the_same_second_get_different_ids():
    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    ids = {new_sweep_id("kinembed", now) for _ in range(50)}
    assert len(ids) > 45  # 4 random hex digits: a clash in 50 draws is rare, not all of them
    for sid in ids:
        assert re.fullmatch(r"kinembed-20261201-120000-[0-9a-f]{4}", sid)
        assert re.fullmatch(r"[\w.-]+", sid)  # what --resume accepts
    assert re.fullmatch(r"kinembed-\d{8}-\d{6}-[0-9a-f]{4}", sweep_id_example("kinembed"))


def test_latest_is_the_newest_sweep_whatever_its_random_suffix(tmp_path):
    store = SweepStore(str(tmp_path))
    t0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    older = new_sweep_id("kinembed", t0)
    store.write(older, {"sweep_id": older, "started": 1.0})
    store.write("kinembed-20261130-235959", {"sweep_id": "old format", "started": 0.5})
    store.write("kinembed-notes", {"sweep_id": "not a sweep id"})  # ignored
    store.write("mae-20991231-000000-ffff", {"sweep_id": "another method's"})
    newer = "kinembed-20261201-120001-0000"  # one second later, the smallest suffix
    store.write(newer, {"sweep_id": newer, "started": 2.0})
    assert store.latest("kinembed") == newer
    # started in the same second: the state's start time decides, not the suffix
    same = ["kinembed-20261201-120002-ffff", "kinembed-20261201-120002-0000"]
    store.write(same[0], {"sweep_id": same[0], "started": 3.0})
    store.write(same[1], {"sweep_id": same[1], "started": 3.5})
    assert store.latest("kinembed") == same[1]
    assert SweepStore(str(tmp_path / "none")).latest("kinembed") is None


@pytest.mark.mlflow
def test_a_bad_resume_id_is_refused_with_an_example_of_the_current_format(tmp_path):
    args = ["kinembed", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--resume", "a/../b"]
    with pytest.raises(EmgDataError, match=r"e\.g\. kinembed-\d{8}-\d{6}-[0-9a-f]{4}\)"):
        Sweep(parse([*args, "--storage-path", str(tmp_path / "results")]))


# -- stale error tags ----------------------------------------------------------------------------


@pytest.mark.mlflow
def test_reopened_or_finished_runs_drop_an_earlier_attempts_error(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    t = tracking.Tracker(uri)
    exp = t.experiment("kinembed")
    tags = {"emg.sweep": "kinembed-1"}
    parent = t.open_run(exp, "kinembed-1", "sweep kinembed-1", tags)
    spec = {"uri": uri, "experiment_id": exp, "key": "kinembed-1/loss/t0", "name": "trial t0"}
    spec |= {"tags": tags, "parent": parent}
    _, trial, _ = tracking.open_trial_run(spec, {"a": 1})
    # the first attempt: the trial failed, the sweep failed, a later start ended it KILLED
    t.set_tags(trial, {"emg.error": "NonFiniteLossError: kinembed loss is nan"})
    t.end(trial, "FAILED")
    t.set_tags(parent, {"emg.error": "RuntimeError: stage loss failed"})
    t.end(parent, "FAILED")
    t.set_tags(parent, {"emg.ended": "KILLED: driver pid 1 on h is gone"})
    client = MlflowClient(uri)
    assert "emg.error" in client.get_run(trial).data.tags  # a failed run keeps its reason

    # resumed: the same runs, reopened (the sweep's and, in its worker, the trial's)
    assert t.open_run(exp, "kinembed-1", "sweep kinembed-1", tags) == parent
    assert tracking.open_trial_run(spec, {"a": 1})[1] == trial
    for run in (parent, trial):
        got = client.get_run(run)
        assert got.info.status == "RUNNING"
        assert not {"emg.error", "emg.ended"} & set(got.data.tags), got.data.tags
        assert got.data.tags["emg.sweep"] == "kinembed-1"  # the others stay

    # an error tag a run got while it was not reopened (another process ended it) goes when it
    # ends FINISHED, and stays when it ends FAILED
    t.set_tags(trial, {"emg.error": "KeyboardInterrupt: "})
    t.end(trial, "FINISHED")
    assert "emg.error" not in client.get_run(trial).data.tags
    t.set_tags(parent, {"emg.error": "RuntimeError: again"})
    t.end(parent, "FAILED")
    assert client.get_run(parent).data.tags["emg.error"] == "RuntimeError: again"
    t.end(parent, "FINISHED")  # a run without the tags ends as before
    t.end(parent, "FINISHED")
    assert client.get_run(parent).info.status == "FINISHED"


# -- running as a Ray job ------------------------------------------------------------------------

JOB_ENV = {
    "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(
        {
            "runtime_env": {"working_dir": "gcs://_ray_pkg_fc1b04ddead61dd9.zip"},
            "metadata": {"job_submission_id": "raysubmit_abc", "job_name": "raysubmit_abc"},
        }
    )
}
# where Ray unpacks a job's working directory, under its session folder (below a test's tmp_path)
COPY = Path("ray/session_1/runtime_resources/working_dir_files/_ray_pkg_fc1b04ddead61dd9")


def test_a_ray_job_in_a_working_dir_copy_is_recognised(tmp_path):
    assert ray_job_copy(JOB_ENV, tmp_path) == "raysubmit_abc"  # by the job's config
    assert ray_job_copy({}, tmp_path / COPY) == "(no submission id)"  # by where it runs
    assert ray_job_copy({}, tmp_path) == ""  # a plain run
    # a job submitted without --working-dir runs where it was started: nothing is lost
    plain = json.loads(JOB_ENV["RAY_JOB_CONFIG_JSON_ENV_VAR"])
    plain["runtime_env"] = {}
    assert ray_job_copy({"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(plain)}, tmp_path) == ""
    assert ray_job_copy({"RAY_JOB_CONFIG_JSON_ENV_VAR": "not json"}, tmp_path) == ""


def test_a_ray_job_keeps_its_defaults_in_emg_home_and_says_so(tmp_path):
    home = tmp_path / "home"
    env = {**JOB_ENV, "EMG_HOME": str(home)}
    moved, note = job_defaults(Options(method="kinembed"), env, tmp_path / COPY)
    assert moved == {
        "tracking_uri": f"sqlite:///{home}/mlflow.db",
        "storage_path": f"{home}/ray_results",
        "cache": f"{home}/.emgcore_cache",
    }
    assert home.is_dir()
    assert note.count("\n") == 0 and "raysubmit_abc" in note and str(home) in note
    assert "$EMG_HOME" in note and "--tracking-uri, --storage-path, --cache" in note
    # what was given (flags or the environment) stays where it was given
    opts = Options(method="kinembed", storage_path="s3://b/sweeps", tracking_uri="http://m:5000")
    cache = str(tmp_path / "shared-cache")
    moved, note = job_defaults(opts, {**env, "EMGCORE_CACHE": cache}, tmp_path / COPY)
    assert moved == {} and note == ""
    env_uri = {**env, "MLFLOW_TRACKING_URI": "x"}
    moved, _ = job_defaults(Options(method="kinembed"), env_uri, tmp_path / COPY)
    assert set(moved) == {"storage_path", "cache"}
    # not a job: nothing moves (the working directory is the user's own)
    assert job_defaults(Options(method="kinembed"), {"EMG_HOME": str(home)}, tmp_path) == ({}, "")


def test_default_home_is_emg_orchestra_in_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    moved, _ = job_defaults(Options(method="kinembed"), JOB_ENV, tmp_path / COPY)
    assert moved["storage_path"] == str(tmp_path / "emg-orchestra" / "ray_results")


@pytest.mark.mlflow
def test_a_sweep_run_as_a_ray_job_resolves_to_the_persistent_folder(tmp_path, monkeypatch, capsys):
    """The driver's own resolution, as a job would run it (nothing started: no Ray, no run)."""
    copy = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("EMGCORE_CACHE", raising=False)
    monkeypatch.setenv("EMG_HOME", str(tmp_path / "keep"))
    for k, v in JOB_ENV.items():
        monkeypatch.setenv(k, v)
    sweep = Sweep(parse(["kinembed", "--smoke"]))
    keep = tmp_path / "keep"
    assert sweep.uri == f"sqlite:///{keep}/mlflow.db"
    assert tracking.artifact_root(sweep.uri) == (keep / "mlartifacts").as_uri()
    assert sweep.store.storage == str(keep / "ray_results")
    assert sweep.cache == str(keep / ".emgcore_cache")
    assert (keep / "mlflow.db").exists() and not (copy / "mlflow.db").exists()
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "Ray job raysubmit_abc" in out[0] and str(keep) in out[0]


# -- the job's python ----------------------------------------------------------------------------


def test_a_python_without_the_projects_packages_is_one_line_exit_2(tmp_path):
    # -S: no site-packages, as a cluster's bare python that has none of the project's packages
    out = subprocess.run(
        [sys.executable, "-S", str(SWEEP), "kinembed", "--smoke"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"error: {sys.executable} cannot import ray, mlflow")
    for way in ("ray start --head", "cluster image", "--runtime-env-json"):
        assert way in line
    assert out.stdout == "" and not list(tmp_path.iterdir())  # nothing started or written


def test_environment_problem_names_only_what_is_missing():
    assert launch.environment_problem() == ""  # this environment is the project's
    msg = launch.environment_problem(("json", "mlflow", "surely_no_such_package_here"))
    assert "cannot import surely_no_such_package_here:" in msg and "mlflow," not in msg


# -- detached Ray actors -------------------------------------------------------------------------

DETACHED = """
import time, ray
from orchestration import launch

ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)

@ray.remote(num_cpus=0)
class Helper:
    def ping(self):
        return 1

@ray.remote(num_cpus=0)
def make():  # as Train's controller does: detached helpers created away from the driver
    a = Helper.options(lifetime="detached").remote()
    b = Helper.options(lifetime="detached", name="Shared", namespace="Shared").remote()
    ray.get([a.ping.remote(), b.ping.remote()])
    return [a._ray_actor_id.hex(), b._ray_actor_id.hex()]

ids = ray.get(make.remote())
attached = Helper.remote()
ray.get(attached.ping.remote())
print("ENDED", sorted(launch.end_detached_actors()))
from ray._private import state
time.sleep(1)
print("STATES", [state.actors(actor_id=i)["State"] for i in ids])
print("ATTACHED", ray.get(attached.ping.remote()))
ray.shutdown()
"""


@pytest.mark.ray
def test_the_sweeps_detached_actors_are_ended(tmp_path):
    env = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live in it
    try:
        out = subprocess.run(
            [sys.executable, "-c", DETACHED],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
            env={**_plain_env(), **env, "RAY_TMPDIR": ray_tmp},
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ENDED ['Helper', 'Helper']" in out.stdout, out.stdout
    assert "STATES ['DEAD', 'DEAD']" in out.stdout
    assert "ATTACHED 1" in out.stdout  # what ends with the driver anyway is left alone


def _plain_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return env


# -- the data's EMG unit and channel names on the sweep's parent run --------------------------


def test_the_parent_run_says_what_unit_and_channels_the_emg_has():
    import numpy as np

    from emgcore.data import open_dataset
    from emgcore.recording import ChannelLayout
    from orchestration.driver import data_tags

    recs = open_dataset("db8-like", duration_s=2.0, n_subjects=1)
    assert data_tags(recs) == {"emg.emg_unit": recs[0].emg_unit, "emg.channels": "16"}
    thigh = [  # a lab's own: 4 named electrodes on a thigh, in microvolts
        r.replace(
            emg=np.asarray(r.emg)[:, :4],
            layout=ChannelLayout.custom([[0, 0], [30, 0], [60, 0], [90, 0]]),
            channel_names=("VL", "VM", "BF", "ST"),
            emg_unit="uV",
        )
        for r in recs[:1]
    ]
    tags = data_tags([*recs, *thigh])
    assert tags["emg.emg_unit"] == ",".join(sorted({recs[0].emg_unit, "uV"}))
    assert tags["emg.channels"] == "4: VL, VM, BF, ST | 16"
