"""``sweep.py --subjects S1,S3``: the subjects every trial is evaluated on, replacing the search
space's ``subjects`` list without copying the space. Checked like every flag (a malformed list in
one argparse line; a subject the data lacks in one line before Ray or any run starts), part of
what defines a sweep (a resume continues with it and refuses another), and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emgcore.errors import EmgDataError
from orchestration import sweep
from orchestration.driver import Sweep

SID = "kinembed-20260101-000000"


def _args(tmp: Path, *more: str) -> list[str]:
    return [
        "kinembed",
        "--storage-path",
        str(tmp / "results"),
        "--tracking-uri",
        f"sqlite:///{tmp}/m.db",
        "--cache",
        str(tmp / "cache"),
        *more,
    ]


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        (
            ["--subjects", "S1,,S3"],
            "argument --subjects: expected comma-separated subject names, got 'S1,,S3'",
        ),
        (["--subjects", ""], "argument --subjects: expected comma-separated subject names, got ''"),
        (["--subjects", "S1,S3,S1"], "argument --subjects: S1 given twice in 'S1,S3,S1'"),
        (
            # the simulator's one smoke subject is s00: refused, never replaced by every subject
            ["--smoke", "--duration", "2", "--subjects", "S1,s00"],
            "error: db8-like: field '--subjects': data has no subject(s) ['S1']; it has ['s00']",
        ),
    ],
    ids=["empty-name", "empty", "twice", "not-in-the-data"],
)
def test_bad_subjects_are_one_line_exit_2_before_anything_starts(
    flags, want, tmp_path, capsys, monkeypatch
) -> None:
    # a check that let it through fails here, fast, instead of running the sweep
    monkeypatch.setattr(Sweep, "start_ray", lambda self: pytest.fail("Ray was started"))
    try:
        code = sweep.main(_args(tmp_path, *flags))
    except SystemExit as e:  # argparse: usage, then the one line
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].endswith(want), err
    assert not (tmp_path / "results").exists()  # no sweep state written, nothing started


def test_subjects_replace_the_spaces_list_and_are_the_ones_evaluated(tmp_path) -> None:
    default = Sweep(sweep.parse(_args(tmp_path, "--smoke")))
    assert default.space.subjects == ("S1", "S3", "S6", "S8", "S11")  # search_spaces/kinembed
    s = Sweep(sweep.parse(_args(tmp_path, "--smoke", "--duration", "2", "--subjects", "s00")))
    assert s.opts.subjects == ("s00",) and s.space.subjects == ("s00",)
    assert s.space.digest() != default.space.digest()  # the space the sweep ran, as tagged
    state = s._open_state()
    s._check_subjects(state)
    assert s.subjects == ["s00"] and state["subjects"] == ["s00"]
    assert state["defining"]["--subjects"] == "s00"
    assert json.loads(json.dumps(state["flags"]))["subjects"] == ["s00"]


def _interrupted(tmp: Path, *flags: str) -> None:
    s = Sweep(sweep.parse(_args(tmp, *flags)))
    state = s._open_state() | {"sweep_id": SID, "status": "KILLED"}
    s.store.write(SID, json.loads(json.dumps(state)))  # as read back from sweep.json


def test_a_resume_continues_with_the_subjects_and_refuses_others(tmp_path) -> None:
    _interrupted(tmp_path, "--smoke", "--subjects", "S1,S3")
    bare = Sweep(sweep.parse(_args(tmp_path, "--resume")))
    assert bare.opts.subjects == ("S1", "S3") and bare.space.subjects == ("S1", "S3")
    assert bare._open_state()["sweep_id"] == SID  # nothing differs from its first start
    same = Sweep(sweep.parse(_args(tmp_path, "--resume", "--subjects", "S1,S3")))
    assert same._open_state()["sweep_id"] == SID
    other = Sweep(sweep.parse(_args(tmp_path, "--resume", "--subjects", "S3")))
    with pytest.raises(EmgDataError, match=r"--subjects 'S1,S3' -> 'S3'.*only --workers"):
        other._open_state()


def test_a_sweep_started_without_subjects_refuses_them_on_resume(tmp_path) -> None:
    _interrupted(tmp_path, "--smoke")
    s = Sweep(sweep.parse(_args(tmp_path, "--resume", "--subjects", "S1")))
    with pytest.raises(EmgDataError, match=r"--subjects None -> 'S1'"):
        s._open_state()


@pytest.mark.mlflow
def test_the_subjects_are_a_param_of_the_sweeps_run(tmp_path) -> None:
    s = Sweep(sweep.parse(_args(tmp_path, "--smoke", "--subjects", "S1,S3")))
    t = s.tracker
    parent = t.open_run(t.experiment("kinembed"), SID, f"sweep {SID}", {})
    s.fingerprint, s.sim = "f" * 12, {}
    s._log_sweep({"sweep_id": SID}, parent)
    assert t.client.get_run(parent).data.params["sweep.subjects"] == "S1,S3"
