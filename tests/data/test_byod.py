"""Bring your own data: EMG unit, channel names and custom layouts through the BYOD files, old
files without them, bad headers as one clear line, every loader's stated unit, and the README's
own example."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from emgcore.data import (
    load_byod,
    load_emg2pose,
    load_flexemg,
    load_myoarmband,
    load_ninapro,
    preset,
    simulate_recording,
    write_byod,
    write_emg2pose,
)
from emgcore.errors import InvalidValueError, ShapeError
from emgcore.recording import ChannelLayout, Recording
from tests.make_fixtures import (
    emg2pose_recording,
    write_flexemg,
    write_myoarmband,
    write_ninapro,
)

MUSCLES = ("rectus_femoris", "vastus_lateralis", "vastus_medialis", "biceps_femoris")
THIGH = ChannelLayout.custom([[0, 250], [-90, 220], [90, 230], [200, 260]])


def _thigh(subject: str = "p01", t: int = 2000) -> Recording:
    rng = np.random.default_rng(0)
    return Recording(
        emg=rng.standard_normal((t, 4)).astype(np.float32) * 0.1,
        fs=2000.0,
        emg_unit="mV",
        channel_names=MUSCLES,
        layout=THIGH,
        subject=subject,
        session="day1",
        kinematics=np.linspace(0, 90, t, dtype=np.float32)[:, None],
        joint_names=("knee_flexion",),
        kinematics_unit="deg",
    )


def _edit_header(path: Path, **changes: object) -> None:
    """Rewrite keys of a BYOD file's JSON header (a value of ``None`` removes the key)."""
    with h5py.File(path, "r+") as f:
        head = json.loads(f.attrs["header"])
        for k, v in changes.items():
            if v is None:
                head.pop(k, None)
            else:
                head[k] = v
        f.attrs["header"] = json.dumps(head)


def test_unit_names_and_custom_layout_round_trip(tmp_path: Path) -> None:
    recs = [_thigh("p01"), _thigh("p02")]
    write_byod(tmp_path, recs)
    with h5py.File(tmp_path / "p01_day1_0000.h5") as f:
        head = json.loads(f.attrs["header"])
        assert f.attrs["format_version"] == 2
    assert head["emg_unit"] == "mV" and head["channel_names"] == list(MUSCLES)
    assert head["layout"]["kind"] == "custom"
    back = load_byod(tmp_path)
    for a, b in zip(recs, back, strict=True):
        assert b.emg_unit == "mV" and b.channel_names == MUSCLES
        assert b.layout == THIGH and b.layout.kind == "custom"
        np.testing.assert_array_equal(b.layout.positions_mm, THIGH.positions_mm)
        assert b.joint_names == ("knee_flexion",) and b.kinematics_unit == "deg"
        np.testing.assert_array_equal(np.asarray(b.emg), a.emg)
        np.testing.assert_array_equal(np.asarray(b.kinematics), a.kinematics)


def test_grid_with_a_force_target_round_trips(tmp_path: Path) -> None:
    index = np.arange(64).reshape(8, 8)[:, ::-1]  # channels numbered right to left on the grid
    grid = ChannelLayout.make_grid(8, 8, pitch_mm=8.0, index=index)
    rec = Recording(
        emg=np.ones((500, 64), np.float32),
        fs=1000.0,
        emg_unit="uV",
        layout=grid,
        subject="p01",
        session="s1",
        kinematics=np.full((500, 1), 12.5, np.float32),
        joint_names=("force",),
        kinematics_unit="N",
    )
    write_byod(tmp_path, [rec])
    (back,) = load_byod(tmp_path)
    assert back.emg_unit == "uV" and back.channel_names == () and back.layout == grid
    assert back.channel_labels[:2] == ("ch0", "ch1") and len(back.channel_labels) == 64
    assert back.layout.neighbours()[0] == rec.layout.neighbours()[0]
    assert back.kinematics_unit == "N" and float(np.asarray(back.kinematics)[3, 0]) == 12.5


def test_files_written_before_unit_and_names_load_with_defaults(tmp_path: Path) -> None:
    write_byod(tmp_path, [_thigh()])
    path = tmp_path / "p01_day1_0000.h5"
    _edit_header(path, emg_unit=None, channel_names=None)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 1
    (rec,) = load_byod(tmp_path)
    assert rec.emg_unit == "a.u." and rec.channel_names == ()
    assert rec.channel_labels == ("ch0", "ch1", "ch2", "ch3") and rec.layout == THIGH


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        (
            {"emg_unit": "microvolts"},
            InvalidValueError,
            "field 'header.emg_unit': unknown EMG unit 'microvolts'; expected one of V, mV, uV, "
            "a.u.",
        ),
        (
            {"emg_unit": 1e-6},
            InvalidValueError,
            "field 'header.emg_unit': unknown EMG unit 1e-06; expected one of V, mV, uV, a.u.",
        ),
        (
            {"channel_names": ["a", "b"]},
            ShapeError,
            "field 'header.channel_names': 2 names but emg has 4 channels",
        ),
        (
            {"channel_names": "rectus_femoris"},
            InvalidValueError,
            "field 'header.channel_names': must be a list of names, got 'rectus_femoris'",
        ),
        (
            {"layout": {"kind": "thigh", "positions_mm": [[0, 0]] * 4}},
            InvalidValueError,
            "field 'header.layout.kind': unknown layout kind 'thigh'; expected one of ring, grid, "
            "custom",
        ),
        (
            {"layout": {"kind": "custom", "positions_mm": [[0, 0]] * 3}},
            ShapeError,
            "field 'header.layout': 3 electrodes but emg has 4 channels",
        ),
    ],
    ids=[
        "unknown-unit",
        "unit-not-a-string",
        "names-wrong-count",
        "names-not-a-list",
        "layout-kind",
        "layout-size",
    ],
)
def test_bad_header_is_one_error_naming_file_and_field(tmp_path, changes, error, message) -> None:
    write_byod(tmp_path, [_thigh()])
    path = tmp_path / "p01_day1_0000.h5"
    _edit_header(path, **changes)
    with pytest.raises(error) as info:
        load_byod(tmp_path)
    assert str(info.value) == f"{path}: {message}"


def test_cli_unknown_unit_is_one_line_and_exit_2(tmp_path: Path) -> None:
    write_byod(tmp_path, [_thigh()])
    _edit_header(tmp_path / "p01_day1_0000.h5", emg_unit="millivolt")
    out = subprocess.run(
        [sys.executable, "-m", "emgcore", "demo", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines == [
        f"error: {tmp_path / 'p01_day1_0000.h5'}: field 'header.emg_unit': unknown EMG unit "
        "'millivolt'; expected one of V, mV, uV, a.u."
    ]


def test_every_loader_states_its_unit(tmp_path: Path) -> None:
    e2p_rec = emg2pose_recording(0, 0, "HandClawGraspFlicks", 0.25)
    e2p = load_emg2pose(write_emg2pose(tmp_path / "s_right.hdf5", e2p_rec))
    assert (e2p.emg_unit, e2p.channel_names) == ("a.u.", ())  # the format states no unit
    db2 = load_ninapro(write_ninapro(tmp_path / "S1_E1_A1.mat", "db2"))
    assert db2.emg_unit == "V" and len(db2.channel_names) == 12
    assert db2.channel_names[0] == "ring_1" and db2.channel_names[7] == "ring_8"
    assert db2.channel_names[8:] == (
        "flexor_digitorum_superficialis",
        "extensor_digitorum_superficialis",
        "biceps_brachii",
        "triceps_brachii",
    )
    db8 = load_ninapro(write_ninapro(tmp_path / "S1_E1_A2.mat", "db8"))
    assert (db8.emg_unit, db8.channel_names) == ("V", ())
    myo = load_myoarmband(write_myoarmband(tmp_path / "myo"))
    assert {r.emg_unit for r in myo} == {"a.u."}
    flex = load_flexemg(write_flexemg(tmp_path / "flex"))
    assert {r.emg_unit for r in flex} == {"V"}
    sim = simulate_recording(preset("myo-like", duration_s=0.5), 0, 0)
    assert sim.emg_unit == "V" and float(np.abs(sim.emg).max()) < 0.01  # volts: sub-10 mV


def test_readme_byod_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's "Bring your own data" examples, as written, on made-up thigh recordings."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("### Bring your own data") :]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:2]
    assert "ChannelLayout.custom" in blocks[0] and "n_blocks=3" in blocks[1]
    rng = np.random.default_rng(1)
    t = 2000 * 400  # 400 s at 2 kHz: three 2-minute blocks fit
    my_recordings = [
        (s, rng.standard_normal((t, 4), dtype=np.float32), np.zeros(t, np.float32))
        for s in ("p01", "p02")
    ]
    monkeypatch.chdir(tmp_path)
    env: dict[str, object] = {"my_recordings": my_recordings}
    exec(blocks[0], env)
    with pytest.warns(UserWarning, match=r"dropped the last 80000 samples \(40 s\) of p0[12]/day1"):
        exec(blocks[1], env)  # block_s=120 on 400 s: 3 blocks and a 40 s tail, named
    (rec, _) = load_byod("thigh_dataset")
    assert rec.layout.kind == "custom" and rec.emg_unit == "mV"
    assert rec.channel_names[0] == "rectus_femoris" and rec.joint_names == ("knee_flexion",)
    assert [r.session for r in load_byod("thigh_3")][:3] == ["day1-b0", "day1-b1", "day1-b2"]
    assert [r.session for r in load_byod("thigh_s")][:3] == ["s1", "s2", "s3"]
    assert len(load_byod("thigh_2min")) == 6
