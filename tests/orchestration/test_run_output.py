"""What a sweep prints: its own progress lines, and Ray's detail left in Ray's logs.

The slow test runs a small sweep (one stage with a NaN trial, then the final retrain) and reads
its console: every stdout line is the sweep's, none of Ray's tables, hints or raylet warnings, one
line names Ray's log folder, the failed trial's reason reaches the user, and the final retrain
reports its units as they finish.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestration import driver
from orchestration.driver import Sweep, _FitProgress
from orchestration.sweep import parse

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ROOT / "orchestration" / "sweep.py"
BIN = Path(sys.executable).parent


def test_final_progress_lines_per_unit_and_while_a_unit_runs():
    p = _FitProgress("final", "heldout_r2", quiet_s=30.0)
    t0 = p.t0
    assert p.feed({"epoch": 3, "unit": 0, "units_done": 0, "train_loss": 1.0}, t0 + 5) == ""
    assert p.feed({"epoch": 9, "unit": 0, "units_done": 0}, t0 + 31) == (
        "  final unit 1 running, epoch 9 (0.5 min)"
    )
    line = p.feed({"unit": 0, "units_done": 1, "heldout_r2": 0.5}, t0 + 40)
    assert line == "  final unit 1 done, heldout_r2 so far +0.5000 (0.7 min)"
    assert p.feed({"epoch": 1, "unit": 1, "units_done": 1}, t0 + 45) == ""  # just said
    assert p.feed({"unit": 0, "units_done": 1}, t0 + 46) == ""  # the same unit again
    # the run's last report (done), and a total when the reports carry one
    line = p.feed({"units_done": 3, "units_total": 3, "heldout_r2": 0.25, "done": True}, t0 + 60)
    assert line == "  final unit 3/3 done, heldout_r2 +0.2500 (1.0 min)"


def test_final_progress_follows_the_file_the_train_callback_writes(tmp_path, capsys):
    from orchestration.launch import progress_file

    path = tmp_path / "progress.jsonl"
    cb = progress_file(str(path))
    p = _FitProgress("final", "heldout_r2")
    stop = p.follow(path, every=0.05)
    cb.after_report(
        None, [{"unit": 0, "units_done": 1, "heldout_r2": 0.5, "scores": "x" * 999}], None
    )
    cb.after_report(None, [{"units_done": 2, "heldout_r2": 0.4, "done": True}], None)
    time.sleep(0.3)
    stop()
    assert json.loads(path.read_text().splitlines()[0]) == {
        "unit": 0,
        "units_done": 1,
        "heldout_r2": 0.5,  # a long string (the scores) is left out
    }
    out = capsys.readouterr().out.splitlines()
    assert [ln.split("] ", 1)[1] for ln in out] == [
        "  final unit 1 done, heldout_r2 so far +0.5000 (0.0 min)",
        "  final unit 2 done, heldout_r2 +0.4000 (0.0 min)",
    ]
    progress_file(str(tmp_path / "no" / "such" / "folder")).after_report(None, [{}], None)


@pytest.mark.mlflow
def test_the_subjects_note_is_information_and_says_what_happens(tmp_path):
    sweep = Sweep(
        parse(
            [
                "kinembed",
                "--smoke",
                "--tracking-uri",
                f"sqlite:///{tmp_path}/m.db",
                "--storage-path",
                str(tmp_path / "results"),
            ]
        )
    )
    note = sweep._subjects_note(["s00", "s01", "s02"])
    assert note == (
        "subjects: the search space scores trials on S1, S3, S6, S8, S11; the simulator's "
        "db8-like data has none of them, so every trial is scored instead on all 3 of its "
        "subjects: s00, s01, s02"
    )
    assert sweep._subjects_note(["s00"]).endswith("scored instead on its one subject, s00")
    assert "no subject" not in note and "error" not in note
    sweep.opts.data = str(tmp_path / "ninapro_db8")  # a folder of recordings, named by path
    note = sweep._subjects_note(["S1", "S2", "S3", "S6", "S8"])
    want = (
        f"the data {tmp_path / 'ninapro_db8'} lacks S11, so every trial is scored instead on all 5"
    )
    assert want in note


def test_ray_is_told_to_keep_quiet_unless_the_user_said_otherwise(monkeypatch):
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")  # so that the undo removes what it sets
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT")
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")  # the user's own choice
    driver._quiet_ray()
    driver._quiet_ray()  # twice: one filter
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"
    assert os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "0"
    log = logging.getLogger("ray.tune.execution.tune_controller")
    assert sum(isinstance(f, driver._TrialFailureLog) for f in log.filters) == 1
    failed = log.makeRecord(
        log.name, logging.ERROR, "f", 1, "Trial task failed for trial x", (), None
    )
    other = log.makeRecord(
        log.name, logging.ERROR, "f", 1, "Experiment checkpoint failed", (), None
    )
    assert not log.filter(failed) and log.filter(other)
    # on an interrupt Tune suggests Tuner.restore; the sweep prints its own --resume command
    tune = logging.getLogger("ray.tune.tune")
    hint = tune.makeRecord(
        tune.name,
        logging.WARNING,
        "f",
        1,
        "Experiment has been interrupted, but the most recent state was saved.\nResume "
        'experiment with: Tuner.restore(path="/x", trainable=...)',
        (),
        None,
    )
    assert not tune.filter(hint) and tune.filter(other)


def test_the_interrupted_line_names_a_resume_command_that_parses_back(tmp_path):
    """The command printed on SIGINT / SIGTERM continues the same sweep from any directory: the
    storage path and tracking URI it started with, however they were given."""
    import shlex

    from orchestration import sweep

    storage, uri = str(tmp_path / "my results"), f"sqlite:///{tmp_path}/mlflow.db"
    line = driver.resume_command("cpep", "20261202-101010-ab12", storage, uri)
    argv = shlex.split(line)
    assert argv[:2] == ["python", "orchestration/sweep.py"]
    opts = sweep.parser().parse_args(argv[2:])
    assert (opts.method, opts.resume) == ("cpep", "20261202-101010-ab12")
    assert (opts.storage_path, opts.tracking_uri) == (storage, uri)


# -- a real sweep's console ---------------------------------------------------------------------

SPACE = """
method: kinembed
metric: cv_r2
mode: max
subjects: [S1, S3]
stages:
  - name: temperature
    grid:
      kinembed.temperature: [1.0e-45, 0.2]   # the first one overflows the logits: NaN loss
"""
# what the sweep prints: time-stamped lines, and the summary block at the end
OWN = re.compile(r"^(\[\d\d:\d\d:\d\d\] .+|== sweep \S+ \(\d+\.\d min\) ==|  \S.*|)$")


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.mlflow
def test_a_sweeps_console_has_only_its_own_lines(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    env = dict(os.environ)
    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AIR_NEW_OUTPUT"):
        env.pop(var, None)
    env |= {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env |= {"PATH": f"{BIN}:{env.get('PATH', '')}", "EMGCORE_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(
        [
            sys.executable,
            str(SWEEP),
            "kinembed",
            "--smoke",
            "--sim-subjects",
            "1",
            "--space",
            str(space),
            "--max-concurrent",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert [ln for ln in lines if not OWN.match(ln)] == [], out.stdout
    both = out.stdout + out.stderr
    for ray_noise in (
        "TensorBoard",
        "tensorboard",
        "Configuration for experiment",
        "View detailed results",
        "╭",
        "+--",
        "(raylet)",
        "Trial task failed",
        "Started a local Ray instance",
    ):
        assert ray_noise not in both, ray_noise
    (logs,) = [ln for ln in lines if "Ray's own messages go to its logs: " in ln]
    folder = logs.rsplit(": ", 1)[1]
    assert folder.endswith("/logs"), logs
    assert any(f.name == "raylet.out" for f in Path(folder).iterdir()), folder
    # the NaN trial's reason reaches the user, with where its traceback is
    (failed,) = [ln for ln in lines if " FAILED: " in ln]
    assert "kinembed loss is nan" in failed and "(traceback: " in failed, failed
    assert Path(failed.rsplit("(traceback: ", 1)[1].rstrip(")")).is_file()
    # the subjects note, as information
    assert any("subjects: the search space scores trials on S1, S3;" in ln for ln in lines)
    # the final retrain says how far it is: a line per unit (3 seeds x 1 subject)
    units = [ln for ln in lines if re.search(r"\]   final unit \d done, heldout_r2", ln)]
    assert len(units) == 3, out.stdout
    # stderr: nothing of Ray's (MLflow may say it created the new store)
    assert "Traceback" not in out.stderr and "WARNING" not in out.stderr, out.stderr
    print(f"stdout {len(lines)} lines, stderr {len(out.stderr.splitlines())} lines")


def test_raylet_messages_go_to_a_file_in_rays_logs(tmp_path, monkeypatch, capsys):
    import ray._private.worker as ray_worker

    monkeypatch.setattr(ray_worker, "print_to_stdstream", ray_worker.print_to_stdstream)
    path = tmp_path / "raylet.log"
    driver._divert_raylet_messages(path)
    driver._divert_raylet_messages(path)  # twice: still one wrapper around Ray's own
    warning = "WARNING: 5 PYTHON worker processes have been started on node: n"
    ray_worker.print_to_stdstream({"lines": [warning], "pid": "raylet", "is_err": False}, False)
    ray_worker.print_to_stdstream(
        {"lines": ["worker said"], "pid": 42, "ip": "1.2.3.4", "is_err": False, "task_name": "t"},
        True,
    )
    assert path.read_text() == f"{warning}\n"
    out = capsys.readouterr().out
    assert "worker said" in out and "PYTHON worker" not in out
