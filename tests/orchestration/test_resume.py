"""Reliability across runs (issue 15): a registered champion can be scored again on any batch,
and a resumed sweep keeps what defined it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from emgcore.errors import EmgDataError
from emgcore.methods.kinembed import DecodingPipeline, ExperimentConfig
from orchestration import tracking
from orchestration.driver import Sweep
from orchestration.state import SweepStore, driver_gone, driver_id
from orchestration.sweep import parse


def test_example_batch_repeats_few_windows_and_caps_many():
    one = np.arange(5, dtype=np.float32)[None]
    got = tracking.example_batch(one)
    assert got.shape == (4, 5) and (got == one).all()
    assert tracking.example_batch(np.zeros((3, 2, 7))).shape == (6, 2, 7)
    assert tracking.example_batch(np.zeros((100, 2))).shape == (64, 2)
    assert tracking.example_batch(np.zeros((9, 2))).shape == (9, 2)
    assert tuple(tracking.example_batch(torch.ones(1, 3, 8)).shape) == (4, 3, 8)


@pytest.mark.slow
@pytest.mark.mlflow
def test_champion_from_one_window_example_runs_on_a_batch_of_7(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    tracking.use(uri)
    t = tracking.Tracker(uri)
    run = t.open_run(t.experiment("reg"), "final", "final", {})
    torch.manual_seed(0)
    pipe = DecodingPipeline.empty(ExperimentConfig(), n_features=12, n_dof=3).eval()
    x = np.random.default_rng(0).standard_normal((7, 12)).astype(np.float32)
    sel = tracking.Score("cv_r2", 0.5, "session CV A1+A2 of s0", 0.0)
    held = tracking.Score("heldout_r2", 0.3, "s0/A3", 0.0)
    # a data set with a single window: the example the trials would give
    assert tracking.register(run, pipe, x[:1], "kin1", sel, None, held, {}) == ("1", True)
    t.end(run)
    model = tracking.load_model("models:/kin1@champion")
    with torch.no_grad():
        got = np.asarray(model(torch.as_tensor(x)))
        want = pipe(torch.as_tensor(x)).numpy()
    assert got.shape == (7, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# -- a resumed sweep keeps what defined it -------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ROOT / "orchestration" / "sweep.py"
SID = "kinembed-20260101-000000"


def _args(tmp: Path, *more: str) -> list[str]:
    return [
        "kinembed",
        "--storage-path",
        str(tmp / "results"),
        "--tracking-uri",
        f"sqlite:///{tmp}/m.db",
        *more,
    ]


def _interrupted_sweep(tmp: Path, *flags: str) -> Path:
    """The ``sweep.json`` a sweep started with ``flags`` and then killed leaves behind."""
    sweep = Sweep(parse(_args(tmp, *flags)))
    state = sweep._open_state() | {"sweep_id": SID, "status": "KILLED"}
    sweep.store.write(SID, state)
    return tmp / "results" / SID / "sweep.json"


def _resume(tmp: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_TMPDIR": str(tmp / "ray"), "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, str(SWEEP), *_args(tmp, "--resume", *flags)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp,
        env=env,
    )


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (("--workers", "2", "--duration", "5"), "--duration None -> 5.0"),
        (("--smoke", "--duration", "5"), "--duration None -> 5.0"),
        (("--data", "emg2pose-like"), "--data 'db8-like' -> 'emg2pose-like'"),
    ],
)
def test_resume_with_other_defining_flags_is_refused_before_ray(tmp_path, flags, named):
    _interrupted_sweep(tmp_path, "--smoke", "--workers", "1")
    out = _resume(tmp_path, *flags)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "--workers" in lines[0]
    assert not (tmp_path / "ray").exists()  # no Ray started
    assert not (tmp_path / "mlartifacts").exists()


def test_resume_with_another_search_space_is_refused_before_ray(tmp_path):
    space = tmp_path / "space.yaml"
    text = (ROOT / "search_spaces" / "kinembed.yaml").read_text()
    space.write_text(text)
    _interrupted_sweep(tmp_path, "--smoke", "--space", str(space))
    space.write_text(text.replace("[4, 8, 16, 32, 64]", "[4, 8]"))  # edited between the starts
    out = _resume(tmp_path, "--smoke", "--space", str(space))
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "search space" in lines[0]
    assert not (tmp_path / "ray").exists()


def test_resume_may_change_resources_only(tmp_path):
    path = _interrupted_sweep(tmp_path, "--smoke", "--workers", "1")
    sweep = Sweep(parse(_args(tmp_path, "--smoke", "--resume", "--workers", "2")))
    state = sweep._open_state()  # no refusal
    assert state["sweep_id"] == SID
    # the resume's resources are a tag, the sweep's params stay those of its first start
    t = sweep.tracker
    first = Sweep(parse(_args(tmp_path, "--smoke", "--workers", "1")))
    parent = t.open_run(t.experiment("kinembed"), SID, f"sweep {SID}", {})
    for s in (first, sweep):
        s.fingerprint, s.sim = "f" * 12, {"duration_s": 30.0}
    first._log_sweep({"sweep_id": SID}, parent)
    state["parent"] = parent
    sweep._log_sweep(state, parent)  # was: "Changing param values is not allowed"
    run = t.client.get_run(parent)
    assert run.data.params["sweep.workers"] == "1"
    assert run.data.tags["emg.resume.1"].startswith("--workers 2 ")
    assert json.loads(path.read_text())["resumes"] == 1


def test_resume_on_changed_data_is_refused(tmp_path):
    _interrupted_sweep(tmp_path, "--smoke")
    sweep = Sweep(parse(_args(tmp_path, "--smoke", "--resume")))
    state = sweep._open_state()
    sweep._check_subjects(state)  # the data as it is now: its fingerprint
    sweep._check_same_data(state)  # a state without one takes it
    state["data_fingerprint"] = "0" * 12  # as if the sweep had started on other recordings
    with pytest.raises(EmgDataError, match="the data changed"):
        sweep._check_same_data(state)


def test_bare_resume_continues_with_the_flags_it_started_with_from_anywhere(tmp_path, monkeypatch):
    """``--resume`` alone, from another directory and without ``--storage-path``: the tracking
    server says where the sweep keeps its state, and the flags it started with come back."""
    space = tmp_path / "space.yaml"
    space.write_text((ROOT / "search_spaces" / "kinembed.yaml").read_text())
    flags = ("--smoke", "--duration", "5", "--stages", "loss", "--space", str(space))
    _interrupted_sweep(tmp_path, *flags)
    t = tracking.Tracker(f"sqlite:///{tmp_path}/m.db")
    parent = t.open_run(t.experiment("kinembed"), SID, f"sweep {SID}", {"emg.method": "kinembed"})
    t.set_tags(parent, {"emg.driver": "elsewhere:1:1", "emg.storage": str(tmp_path / "results")})
    t.end(parent, "KILLED")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    sweep = Sweep(parse(["kinembed", "--resume", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]))
    o = sweep.opts
    assert (o.smoke, o.duration, o.stages, o.space) == (True, 5.0, ("loss",), str(space))
    assert sweep.storage == str(tmp_path / "results")
    assert sweep._open_state()["sweep_id"] == SID  # and nothing differs from its first start
    # a flag given with another value is still refused, naming it
    again = Sweep(
        parse(
            [
                "kinembed",
                "--resume",
                "--duration",
                "9",
                "--tracking-uri",
                f"sqlite:///{tmp_path}/m.db",
            ]
        )
    )
    with pytest.raises(EmgDataError, match=r"--duration 5.0 -> 9.0"):
        again._open_state()
    # nothing to resume anywhere: one line naming both places looked in
    with pytest.raises(EmgDataError, match=r"no sweep kinembed-1 in .*elsewhere/ray_results"):
        Sweep(
            parse(
                [
                    "kinembed",
                    "--resume",
                    "kinembed-1",
                    "--tracking-uri",
                    f"sqlite:///{tmp_path}/m.db",
                ]
            )
        )


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_sweep_state_round_trips_through_local_and_uri_storage(tmp_path, scheme):
    """``sweep.json`` and the leaderboards live in the storage path, a folder or a URI (read
    and written through pyarrow.fs, as Ray does)."""
    store = SweepStore(f"{scheme}{tmp_path}/store")
    assert store.read("kinembed-1") is None and store.latest("kinembed") is None
    for sid in ("kinembed-20260101-000000", "kinembed-20260102-000000", "mae-20270101-000000"):
        store.write(sid, {"sweep_id": sid, "stages": {"loss": {"winner": {"a": 1}}}})
    assert store.latest("kinembed") == "kinembed-20260102-000000"
    assert store.read("mae-20270101-000000")["stages"]["loss"]["winner"] == {"a": 1}
    board = store.local("mae-20270101-000000") / "leaderboard-loss.csv"
    board.write_text("trial,cv_r2\n")
    store.publish("mae-20270101-000000", board)
    assert (tmp_path / "store" / "mae-20270101-000000" / "leaderboard-loss.csv").exists()
    assert (tmp_path / "store" / "mae-20270101-000000" / "sweep.json").exists()


def test_driver_liveness_by_process_here_and_heartbeat_elsewhere():
    me = driver_id()
    assert driver_gone(me, None) == ""  # this process: alive, whatever its heartbeat
    host, pid, start = me.split(":")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid is free now
    assert "is gone" in driver_gone(f"{host}:{child.pid}:1", time.time())
    # the pid alive but started at another time: reused by another process
    assert "another process" in driver_gone(f"{host}:{pid}:{int(start) + 1}", time.time())
    now = 1_000_000.0
    assert driver_gone("other-host:5:7", now - 60, now) == ""  # a recent heartbeat
    assert "no heartbeat for 300 s (last: 301 s ago)" in driver_gone(
        "other-host:5:7", now - 301, now
    )
    assert "(last: never)" in driver_gone("other-host:5:7", None, now)


def test_next_start_ends_a_dead_drivers_runs_killed_and_records_how(tmp_path):
    """A driver killed outright (SIGKILL) leaves its runs RUNNING: the next start ends them
    KILLED and writes how into that sweep's state; a live driver's sweep is left alone, and
    resuming it is refused."""
    uri = f"sqlite:///{tmp_path}/m.db"
    t = tracking.Tracker(uri)
    exp = t.experiment("kinembed")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    host = driver_id().split(":")[0]
    drivers = {"kinembed-dead": f"{host}:{child.pid}:1", "kinembed-live": driver_id()}
    runs = {}
    for sid, driver in drivers.items():
        tags = {"emg.sweep": sid, "emg.method": "kinembed"}
        parent = t.open_run(exp, sid, f"sweep {sid}", tags)
        t.set_tags(parent, {"emg.driver": driver, "emg.storage": str(tmp_path / "results")})
        trial = t.open_run(exp, f"{sid}/loss/t0", "trial 0", tags, parent=parent)
        runs[sid] = (parent, trial)
        SweepStore(str(tmp_path / "results")).write(sid, {"sweep_id": sid, "status": "RUNNING"})
    sweep = Sweep(parse(_args(tmp_path, "--smoke")))
    sweep._end_dead_sweeps({"sweep_id": "kinembed-next"})
    assert {t.status(r) for r in runs["kinembed-dead"]} == {"KILLED"}
    assert {t.status(r) for r in runs["kinembed-live"]} == {"RUNNING"}
    state = json.loads((tmp_path / "results" / "kinembed-dead" / "sweep.json").read_text())
    assert state["status"] == "KILLED" and state["ended"]["found_by"] == "kinembed-next"
    assert state["history"] == [state["ended"]]
    assert f"driver pid {child.pid} on {host} is gone" in state["ended"]["how"]
    assert "is gone" in t.client.get_run(runs["kinembed-dead"][0]).data.tags["emg.ended"]
    with pytest.raises(EmgDataError, match="sweep kinembed-live is still running"):
        sweep._end_dead_sweeps({"sweep_id": "kinembed-live"})


def test_storage_uri_that_cannot_be_opened_is_one_line(tmp_path):
    with pytest.raises(EmgDataError, match=r"s3x://bad/path: field '--storage-path': cannot open"):
        SweepStore("s3x://bad/path").read("kinembed-1")
