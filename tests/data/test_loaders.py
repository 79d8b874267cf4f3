"""Loaders on small files written in the exact published formats, and every kind of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from emgcore.data import (
    load_byod,
    load_emg2pose,
    load_emg2pose_dataset,
    load_ninapro,
    open_dataset,
    write_byod,
    write_emg2pose,
)
from emgcore.data.emg2pose import DTYPE, JOINTS
from emgcore.data.ninapro import DB8_DOA_MATRIX, GLOVE_18, SPECS
from emgcore.errors import (
    EmgDataError,
    FormatError,
    InvalidValueError,
    MissingFieldError,
    MissingFileError,
    ShapeError,
)
from tests.make_fixtures import emg2pose_recording, write_emg2pose_dataset, write_ninapro


# -- emg2pose ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def e2p_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    rec = emg2pose_recording(0, 0, "HandClawGraspFlicks", seconds=1.0)
    path = write_emg2pose(tmp_path_factory.mktemp("e2p") / "sess_right.hdf5", rec)
    return path, rec


def test_emg2pose_round_trip_is_lazy_and_exact(e2p_file) -> None:
    path, src = e2p_file
    with h5py.File(path) as f:  # the exact published layout
        assert f["emg2pose/timeseries"].dtype == DTYPE
        assert f["emg2pose"].attrs["sample_rate"] == 2000.0
    rec = load_emg2pose(path)
    assert rec.is_lazy and rec.joint_names == JOINTS and rec.kinematics_unit == "deg"
    np.testing.assert_array_equal(rec.emg[100:200], src.emg[100:200])
    np.testing.assert_allclose(rec.kinematics[:], src.kinematics, atol=1e-4)  # rad -> deg
    assert rec.meta["stage"] == "HandClawGraspFlicks" and rec.subject == src.subject
    assert np.asarray(rec.valid).all()


def test_emg2pose_ik_failures_are_masked(tmp_path: Path) -> None:
    rec = emg2pose_recording(0, 0, "ShakaVulcanPeace", seconds=0.5)
    kin = rec.kinematics.copy()
    kin[10:20] = 0.0  # IK failure: all 20 angles zero
    path = write_emg2pose(tmp_path / "f.hdf5", rec.replace(kinematics=kin))
    valid = np.asarray(load_emg2pose(path).valid)
    assert (~valid).sum() == 10 and not valid[10:20].any()


def test_emg2pose_dataset_uses_metadata_splits(tmp_path: Path) -> None:
    meta = write_emg2pose_dataset(tmp_path, n_users=3, seconds=0.5)
    all_recs = load_emg2pose_dataset(tmp_path)
    test = load_emg2pose_dataset(tmp_path, split="test")
    assert len(all_recs) == len(meta) == 6
    assert {r.subject for r in test} == {"s02"} and all(r.meta["split"] == "test" for r in test)
    assert {r.meta["stage"] for r in all_recs} == {"HandClawGraspFlicks", "ShakaVulcanPeace"}


def _corrupt(path: Path, **changes) -> None:
    with h5py.File(path, "r+") as f:
        ds = f["emg2pose/timeseries"]
        data = ds[:]
        for field, fn in changes.items():
            data[field] = fn(data[field])
        ds[:] = data


@pytest.mark.parametrize(
    ("mutate", "error", "field"),
    [
        (lambda p: _corrupt(p, time=lambda t: t[::-1].copy()), InvalidValueError, "time"),
        (lambda p: _corrupt(p, time=lambda t: t[0] + (t - t[0]) * 2), InvalidValueError, "time"),
        (
            lambda p: h5py.File(p, "r+")["emg2pose"].attrs.__delitem__("sample_rate"),
            MissingFieldError,
            "sample_rate",
        ),
    ],
    ids=["non-monotonic-time", "mismatched-rate", "missing-attr"],
)
def test_emg2pose_bad_metadata(e2p_file, tmp_path: Path, mutate, error, field) -> None:
    path = tmp_path / "bad.hdf5"
    path.write_bytes(e2p_file[0].read_bytes())
    mutate(path)
    with pytest.raises(error) as info:
        load_emg2pose(path)
    assert str(path) in str(info.value) and field in str(info.value)


def test_emg2pose_nan_raises_on_read_naming_file_and_field(e2p_file, tmp_path: Path) -> None:
    path = tmp_path / "nan.hdf5"
    path.write_bytes(e2p_file[0].read_bytes())

    def poison(e):
        e = e.copy()
        e[123, 3] = np.nan
        return e

    _corrupt(path, emg=poison)
    rec = load_emg2pose(path)
    rec.emg[:100]  # clean rows read fine
    with pytest.raises(InvalidValueError, match=r"emg2pose/timeseries\.emg.*sample 123"):
        np.asarray(rec.emg)


def test_emg2pose_truncated_and_wrong_layout(e2p_file, tmp_path: Path) -> None:
    good = e2p_file[0].read_bytes()
    trunc = tmp_path / "trunc.hdf5"
    trunc.write_bytes(good[: len(good) // 2])
    with pytest.raises(FormatError, match=r"trunc.hdf5"):
        np.asarray(load_emg2pose(trunc).emg)
    wrong = tmp_path / "wrong.hdf5"
    with h5py.File(wrong, "w") as f:
        f.create_group("emg2pose").create_dataset(
            "timeseries", data=np.zeros(4, [("time", "<f8"), ("emg", "<f4", (16,))])
        )
    with pytest.raises(MissingFieldError, match=r"joint_angles"):
        load_emg2pose(wrong)
    with pytest.raises(MissingFileError, match=r"nope.hdf5"):
        load_emg2pose(tmp_path / "nope.hdf5")


# -- NinaPro -------------------------------------------------------------------------------------
def test_db8_maps_glove_to_five_doa(tmp_path: Path) -> None:
    path = write_ninapro(tmp_path / "S3_E1_A2.mat", "db8")
    rec = load_ninapro(path)
    import scipy.io

    glove = scipy.io.loadmat(path)["glove"]
    assert rec.subject == "S3" and rec.session == "A2" and rec.n_channels == 16
    assert rec.kinematics.shape == (4000, 5)
    # thumb rotation = .639 g0 + .383 g1 - .639 g3 - .19 g16 (KinEMbed eq. 6)
    want = 0.639 * glove[:, 0] + 0.383 * glove[:, 1] - 0.639 * glove[:, 3] - 0.19 * glove[:, 16]
    np.testing.assert_allclose(rec.kinematics[:, 0], want, rtol=1e-5)
    np.testing.assert_allclose(
        rec.kinematics[:, 4],
        glove[:, [9, 10, 12, 13]] @ [0.1667, 0.3333, 0.1667, 0.3333],
        rtol=1e-5,
    )
    assert DB8_DOA_MATRIX.sum(axis=1).round(3).tolist() == [0.193, 1.0, 1.0, 1.0, 1.0]
    assert set(np.unique(rec.labels["gesture"])) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize(
    ("db", "n_emg", "n_kin"), [("db2", 12, 22), ("db7", 12, 18), ("db4", 12, 0)]
)
def test_other_databases(tmp_path: Path, db: str, n_emg: int, n_kin: int) -> None:
    path = write_ninapro(tmp_path / "S1_E2_A1.mat", db)
    rec = load_ninapro(path, kinematics="glove")
    assert load_ninapro(path, kinematics="glove").meta["database"] == db  # inferred
    assert rec.n_channels == n_emg
    assert (0 if rec.kinematics is None else rec.kinematics.shape[1]) == n_kin
    assert rec.meta["exercise"] == 2


@pytest.mark.parametrize(
    ("arrays", "error", "field"),
    [
        ({"emg": np.zeros((4000, 15))}, ShapeError, "emg"),
        ({"restimulus": np.zeros((3999, 1))}, ShapeError, "restimulus"),
        ({"glove": np.full((4000, 18), np.nan)}, InvalidValueError, "glove"),
        (
            {
                "emg": np.vstack(
                    [np.zeros((10, 16)), np.full((1, 16), np.inf), np.zeros((3989, 16))]
                )
            },
            InvalidValueError,
            "emg",
        ),
        ({"frequency": np.array([[1111.0]])}, InvalidValueError, "frequency"),
    ],
    ids=["wrong-channel-count", "label-length", "nan-glove", "inf-emg", "wrong-rate"],
)
def test_ninapro_bad_input(tmp_path: Path, arrays, error, field) -> None:
    path = write_ninapro(tmp_path / "S1_E1_A1.mat", "db8", **arrays)
    with pytest.raises(error) as info:
        load_ninapro(path, db="db8")
    assert str(path) in str(info.value) and f"'{field}'" in str(info.value)


def test_ninapro_unknown_layout_cannot_be_inferred(tmp_path: Path) -> None:
    path = write_ninapro(tmp_path / "S1_E1_A1.mat", "db8", emg=np.zeros((4000, 15)))
    with pytest.raises(InvalidValueError, match=r"S1_E1_A1.mat: field 'emg': cannot tell"):
        load_ninapro(path)


def test_ninapro_missing_key_and_bad_name(tmp_path: Path) -> None:
    import scipy.io

    path = tmp_path / "S1_E1_A1.mat"
    scipy.io.savemat(path, {"emg": np.zeros((10, 16))})
    with pytest.raises(MissingFieldError, match=r"restimulus"):
        load_ninapro(path)
    bad = tmp_path / "subject1.mat"
    bad.write_bytes(path.read_bytes())
    with pytest.raises(InvalidValueError, match=r"S<s>_E<e>_A<a>"):
        load_ninapro(bad)
    junk = tmp_path / "S1_E1_A3.mat"
    junk.write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(FormatError, match=r"S1_E1_A3.mat"):
        load_ninapro(junk)


@pytest.mark.parametrize(
    ("db", "exercise", "file_ids", "want"),
    [
        ("db2", 2, [0, 1, 5, 23], [0, 18, 22, 40]),  # exercise C numbered from 1: shifted
        ("db2", 2, [0, 18, 22, 40], [0, 18, 22, 40]),  # database-wide already: kept
        ("db2", 3, [0, 1, 9], [0, 41, 49]),  # exercise D
        ("db7", 1, [0, 1, 17], [0, 1, 17]),  # exercise B starts at 1 either way
        ("db4", 2, [0, 13, 29], [0, 13, 29]),  # DB4's B follows its exercise A (12 movements)
    ],
)
def test_movement_ids_are_database_wide_and_named(tmp_path, db, exercise, file_ids, want) -> None:
    stim = np.repeat(file_ids, 4000 // len(file_ids) + 1)[:4000, None].astype(float)
    path = write_ninapro(tmp_path / f"S2_E{exercise}_A1.mat", db, restimulus=stim)
    rec = load_ninapro(path)
    ids = np.unique(rec.labels["gesture"])
    assert ids.tolist() == want
    names = [rec.label_names["gesture"][i] for i in ids]
    letter = SPECS[db].exercises[exercise - 1]
    assert names[0] == "rest" and all(n[0] == letter for n in names[1:])
    assert names[1:] == [f"{letter}{i - SPECS[db].offset(exercise)}" for i in want[1:]]


@pytest.mark.parametrize(
    ("ids", "match"),
    [([0, 18, 20], "fit both"), ([0, 3, 30], "fit neither"), ([0, 50], "fit neither")],
)
def test_movement_ids_that_fit_no_numbering_are_an_error(tmp_path, ids, match) -> None:
    stim = np.repeat(ids, 4000 // len(ids) + 1)[:4000, None].astype(float)
    path = write_ninapro(tmp_path / "S1_E2_A1.mat", "db2", restimulus=stim)
    with pytest.raises(InvalidValueError, match=match) as info:
        load_ninapro(path)
    assert "S1_E2_A1.mat" in str(info.value) and "'restimulus'" in str(info.value)


def test_gloves_are_named_and_db2_db7_share_eighteen_sensors(tmp_path: Path) -> None:
    db2 = load_ninapro(write_ninapro(tmp_path / "S1_E1_A1.mat", "db2"))
    db7 = load_ninapro(write_ninapro(tmp_path / "S2_E1_A1.mat", "db7"))
    assert len(db2.joint_names) == 22 and len(db7.joint_names) == 18
    assert set(db7.joint_names) < set(db2.joint_names)
    assert set(db2.joint_names) - set(db7.joint_names) == {
        f"{f}_dip" for f in ("index", "middle", "ring", "little")
    }
    # DB8's 18 columns carry the same names under KinEMbed's DoA matrix: index MCP / PIP
    assert np.flatnonzero(DB8_DOA_MATRIX[2]).tolist() == [
        GLOVE_18.index("index_mcp"),
        GLOVE_18.index("index_pip"),
    ]


# -- bring your own data ------------------------------------------------------------------------
def test_byod_round_trip(tmp_path: Path) -> None:
    recs = [emg2pose_recording(u, 0, "HandClawGraspFlicks", 0.5) for u in range(2)]
    write_byod(tmp_path, recs)
    back = load_byod(tmp_path)
    assert [r.subject for r in back] == ["s00", "s01"]
    for a, b in zip(recs, back, strict=True):
        assert b.is_lazy and b.layout == a.layout and b.joint_names == a.joint_names
        np.testing.assert_array_equal(np.asarray(b.emg), a.emg)
        np.testing.assert_array_equal(np.asarray(b.kinematics), a.kinematics)
        np.testing.assert_array_equal(b.labels["gesture"], a.labels["gesture"])
        assert b.meta["stage"] == a.meta["stage"]
    assert len(open_dataset(tmp_path)) == 2


def test_byod_manifest_must_agree_with_files(tmp_path: Path) -> None:
    write_byod(tmp_path, [emg2pose_recording(0, 0, "HandClawGraspFlicks", 0.5)])
    manifest = tmp_path / "sessions.csv"
    manifest.write_text(manifest.read_text().replace(",2000.0,", ",1000.0,"))
    with pytest.raises(InvalidValueError, match=r"sessions.csv: field 'fs'"):
        load_byod(tmp_path)


def test_open_dataset_rejects_unknown(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError):
        open_dataset(tmp_path / "missing")
    with pytest.raises(FormatError, match=r"cannot tell the format"):
        open_dataset(tmp_path)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "emgcore", "demo", "--data", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(tmp_path / "x") in lines[0]


def test_error_family_is_typed() -> None:
    for cls in (MissingFileError, MissingFieldError, ShapeError, InvalidValueError, FormatError):
        assert issubclass(cls, EmgDataError)
    e = MissingFieldError("missing", source="f.h5", field="emg")
    assert str(e) == "f.h5: field 'emg': missing"
