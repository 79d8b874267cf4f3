"""Bad input, table-driven (issue 15, "Reliability", data): every oddity a recording or a dataset
folder can have is either handled correctly or one clear line naming the file and field.

``ERRORS``: each case builds a small file (or recordings) in the exact published format, breaks
one thing and asserts the exact message of the one :class:`EmgDataError` it raises (``{tmp}`` is
the test's folder). ``HANDLED``: each case is an oddity with a right answer, and asserts it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from emgcore.data import (
    load_byod,
    load_emg2pose,
    load_emg2pose_dataset,
    load_emg2pose_segments,
    load_flexemg,
    load_myoarmband,
    load_ninapro,
    open_dataset,
    preset,
    read_mat,
    simulate,
    write_byod,
    write_emg2pose,
)
from emgcore.errors import EmgDataError
from tests.make_fixtures import (
    emg2pose_recording,
    write_emg2pose_dataset,
    write_flexemg,
    write_mat,
    write_myoarmband,
    write_ninapro,
)

TS = "emg2pose/timeseries"


# -- builders --------------------------------------------------------------------------------------
def _e2p(tmp: Path, seconds: float = 0.5, **changes: Callable[[np.ndarray], np.ndarray]) -> Path:
    """An emg2pose file (2 kHz) with ``changes`` applied to fields of its timeseries."""
    path = write_emg2pose(
        tmp / "s_right.hdf5", emg2pose_recording(0, 0, "HandClawGraspFlicks", seconds)
    )
    with h5py.File(path, "r+") as f:
        data = f[TS][:]
        for name, fn in changes.items():
            data[name] = fn(data[name].copy())
        f[TS][:] = data
    return path


def _set(a: np.ndarray, idx: object, value: object) -> np.ndarray:
    a[idx] = value
    return a


def _e2p_attr(tmp: Path, **attrs: object) -> Path:
    path = _e2p(tmp)
    with h5py.File(path, "r+") as f:
        f["emg2pose"].attrs.update(attrs)
    return path


def _e2p_empty(tmp: Path) -> Path:
    path = _e2p(tmp)
    with h5py.File(path, "r+") as f:
        ds = f[TS]
        del f[TS]
        f["emg2pose"].create_dataset("timeseries", shape=(0,), dtype=ds.dtype)
    return path


def _gap(t: np.ndarray) -> np.ndarray:
    t[600:] += 0.5  # 0.5 s of samples lost after sample 599
    return t


def _kinembed_sessions(short: dict[str, int]) -> list:
    """db8-like subject s00 (A1, A2, A3 of 3 s at 2 kHz), sessions in ``short`` cut to n samples."""
    recs = simulate(preset("db8-like", duration_s=3.0, n_subjects=1))
    out = []
    for r in recs:
        if r.session in short:
            n = short[r.session]
            r = r.replace(
                emg=r.emg[:n],
                kinematics=r.kinematics[:n],
                labels={k: v[:n] for k, v in r.labels.items()},
                source=f"{r.session}.mat",
                fingerprint="",
            )
        out.append(r)
    return out


def _kinembed_prepare(recs: list) -> object:
    from emgcore.config import resolve_config
    from emgcore.methods.kinembed import load_config, prepare

    return prepare(recs, load_config(resolve_config("kinembed-smoke")))


def _short_pose_recording(seconds: float) -> object:
    r = emg2pose_recording(0, 0, "HandClawGraspFlicks", seconds)
    return r.replace(source="short.hdf5")


def _gestures_short(tmp: Path) -> object:
    from emgcore.gestures import GestureConfig, windows

    return windows([_short_pose_recording(1.0)], GestureConfig(window_s=2.0))


def _gestures_short_runs(tmp: Path) -> object:
    from emgcore.gestures import GestureConfig, windows

    rec = load_ninapro(write_ninapro(tmp / "S1_E1_A1.mat", "db2"))  # runs of 500 samples
    return windows([rec], GestureConfig(window_s=2.0, benchmark="ninapro"))


def _poseest_short(tmp: Path) -> object:
    from emgcore.methods.jepa import PoseDataConfig, prepare

    long = [emg2pose_recording(u, 0, "HandClawGraspFlicks", 1.5) for u in range(4)]
    return prepare([*long, _short_pose_recording(0.5)], PoseDataConfig(window_s=1.0))


def _decoder_empty(tmp: Path) -> object:
    from emgcore.models.decoder import DecoderConfig, fit_decoder

    ok = (np.zeros((40, 3), np.float32), np.zeros((40, 2), np.float32))
    return fit_decoder([ok, (ok[0][:0], ok[1][:0])], DecoderConfig(epochs=1))


def _window_dataset(tmp: Path, **kw: object) -> object:
    from emgcore.preprocessing import Pipeline
    from emgcore.windows import RecordingCache, WindowDataset

    rec = _short_pose_recording(0.25)
    rec = rec.replace(kinematics=None, joint_names=(), valid=None) if "target" in kw else rec
    cached = RecordingCache(tmp / "cache").get(rec, Pipeline())
    return WindowDataset([cached], 100, 100, **kw)


def _flex_bad_arraymap(tmp: Path) -> object:
    root = write_flexemg(tmp / "flex")
    grid = np.ones((16, 4))  # every electrode channel 1
    write_mat(root / "arraymap.mat", {"arraymap": grid})
    return load_flexemg(root)


def _flex_sparse_arraymap(tmp: Path) -> object:
    root = write_flexemg(tmp / "flex", mat="7.3")
    with h5py.File(root / "arraymap.mat", "r+") as f:  # how MATLAB stores a sparse matrix
        del f["arraymap"]
        g = f.create_group("arraymap")
        g.attrs["MATLAB_class"] = np.bytes_("double")
        g.attrs["MATLAB_sparse"] = np.uint64(16)
        g["data"], g["ir"], g["jc"] = np.ones(64), np.arange(64), np.arange(5) * 16
    return load_flexemg(root)


def _flex_trial(tmp: Path, mat: str, **p_changes: object) -> object:
    root = write_flexemg(tmp / "flex", mat=mat)
    trial = root / "data" / "001-Session1Train" / "001-001.mat"
    m = read_mat(trial)
    p = {k: v for k, v in m["p"].items() if k not in p_changes or p_changes[k] is not None}
    p |= {k: v for k, v in p_changes.items() if v is not None}
    trial.unlink()
    write_mat(trial, {"raw": m["raw"], "p": p}, mat)
    return load_flexemg(root)


def _flex_foreign_trial(tmp: Path) -> object:
    root = write_flexemg(tmp / "flex")
    src = root / "data" / "001-Session1Train" / "001-001.mat"
    (root / "data" / "001-Session1Train" / "002-001.mat").write_bytes(src.read_bytes())
    return load_flexemg(root)


def _truncated_v73(tmp: Path) -> object:
    path = write_ninapro(tmp / "S1_E1_A1.mat", "db8", mat="7.3")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return load_ninapro(path)


def _myo_empty_file(tmp: Path) -> object:
    root = write_myoarmband(tmp / "myo")
    (root / "EvaluationDataset" / "Male0" / "Test0" / "classe_3.dat").write_bytes(b"")
    return load_myoarmband(root)


def _byod(tmp: Path, edit: Callable[[str], str]) -> object:
    write_byod(
        tmp / "byod", [emg2pose_recording(u, 0, "HandClawGraspFlicks", 0.25) for u in range(2)]
    )
    manifest = tmp / "byod" / "sessions.csv"
    manifest.write_text(edit(manifest.read_text()))
    return load_byod(tmp / "byod")


def _byod_h5(tmp: Path, edit: Callable[[h5py.File], None]) -> object:
    """A BYOD folder whose first recording's file is changed by ``edit``."""
    write_byod(tmp / "byod", [emg2pose_recording(0, 0, "HandClawGraspFlicks", 0.25)])
    with h5py.File(tmp / "byod" / "s00_s0_0000.h5", "r+") as f:
        edit(f)
    return load_byod(tmp / "byod")


def _replace(f: h5py.File, name: str, data: object) -> None:
    del f[name]
    f[name] = data


def _header(f: h5py.File, **changes: object) -> None:
    import json

    head = json.loads(f.attrs["header"])
    f.attrs["header"] = json.dumps(head | changes)


def _byod_duplicate(text: str) -> str:
    lines = text.splitlines()
    return "\n".join([*lines, lines[1]]) + "\n"


def _e2p_dataset_duplicate(tmp: Path) -> object:
    write_emg2pose_dataset(tmp / "e2p", n_users=1, seconds=0.25)
    meta = tmp / "e2p" / "metadata.csv"
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join([*lines, lines[1]]) + "\n")
    return load_emg2pose_dataset(tmp / "e2p")


# -- one clear line per bad input ------------------------------------------------------------------
SHORT_KINEMBED = (
    "KinEMbed's TCN decoder (receptive field 29 feature windows of 256 samples every 104) needs "
    "at least 3168 samples (1.58 s)"
)
ERRORS = {
    # recordings shorter than what a method cuts (part 1)
    "kinembed-short-held-out-session": (
        lambda tmp: _kinembed_prepare(_kinembed_sessions({"A3": 1000})),
        f"A3.mat: field 'emg': 1000 samples (0.5 s at 2000 Hz), but {SHORT_KINEMBED}",
    ),
    "kinembed-train-session-shorter-than-a-feature-window": (
        lambda tmp: _kinembed_prepare(_kinembed_sessions({"A1": 200})),
        f"A1.mat: field 'emg': 200 samples (0.1 s at 2000 Hz), but {SHORT_KINEMBED}",
    ),
    "kinembed-two-recordings-one-session": (
        lambda tmp: _kinembed_prepare(
            [*_kinembed_sessions({}), _kinembed_sessions({"A2": 5000})[1]]
        ),
        "A2.mat: field 'session': subject s00 session A2 is also simulator:db8-like; KinEMbed "
        "needs one recording per session",
    ),
    "decoder-session-without-windows": (
        _decoder_empty,
        "field 'decoder input': training session [1] has no windows (a recording shorter than "
        "one feature window?)",
    ),
    "gestures-recording-shorter-than-a-window": (
        _gestures_short,
        "short.hdf5: field 'emg': 2000 samples (1 s at 2000 Hz), but one 2 s window needs at "
        "least 4000 samples (2 s)",
    ),
    "gestures-every-run-shorter-than-a-window": (
        _gestures_short_runs,
        "{tmp}/S1_E1_A1.mat: field 'labels.gesture': no run of one movement and repetition holds "
        "one 2 s window (4000 samples); the longest has 500",
    ),
    "jepa-recording-shorter-than-a-window": (
        _poseest_short,
        "short.hdf5: field 'emg': 1000 samples (0.5 s at 2000 Hz), but one 1 s window needs at "
        "least 2000 samples (1 s)",
    ),
    "windows-target-without-kinematics": (
        lambda tmp: _window_dataset(tmp, target="last"),
        "short.hdf5: field 'kinematics': target='last' needs kinematics; this recording has none",
    ),
    "windows-label-missing": (
        lambda tmp: _window_dataset(tmp, label="stage"),
        "short.hdf5: field 'labels.stage': no label 'stage' (has ['gesture', 'repetition'])",
    ),
    # MATLAB files, v5 and v7.3 (part 2)
    "flexemg-arraymap-not-a-permutation": (
        _flex_bad_arraymap,
        "{tmp}/flex/arraymap.mat: field 'arraymap': not a map of channels 1-64, each once: grid "
        "must map every channel 0..63 exactly once",
    ),
    "flexemg-v73-sparse-arraymap": (
        _flex_sparse_arraymap,
        "{tmp}/flex/arraymap.mat: field 'arraymap': MATLAB class double (sparse, object or struct "
        "array) is not supported",
    ),
    "flexemg-v73-p-without-timegest": (
        lambda tmp: _flex_trial(tmp, "7.3", timegest=None),
        "{tmp}/flex/data/001-Session1Train/001-001.mat: field 'p': cannot read "
        "lsbmV/sequence/timegest/timerest: KeyError('timegest')",
    ),
    "flexemg-v5-unknown-gesture-id": (
        lambda tmp: _flex_trial(tmp, "5", sequence=np.array([[3, 4, 9, 1]], np.uint8)),
        "{tmp}/flex/data/001-Session1Train/001-001.mat: field 'p.sequence': gesture ids [9] "
        "outside 1-4",
    ),
    "flexemg-trial-of-another-subject": (
        _flex_foreign_trial,
        "{tmp}/flex/data/001-Session1Train/002-001.mat: field 'filename': subject 002 in the "
        "folder of subject 001",
    ),
    "ninapro-v73-truncated": (
        _truncated_v73,
        "{tmp}/S1_E1_A1.mat: cannot open as HDF5 (truncated or not HDF5?): ",
    ),
    "ninapro-v73-missing-variable": (
        lambda tmp: load_ninapro(
            write_mat(tmp / "S1_E1_A1.mat", {"emg": np.zeros((10, 16))}, "7.3")
        ),
        "{tmp}/S1_E1_A1.mat: field 'restimulus': variable missing",
    ),
    # folders holding more (or less) than the loader expects (part 3)
    "myoarmband-empty-file": (
        _myo_empty_file,
        "{tmp}/myo/EvaluationDataset/Male0/Test0/classe_3.dat: field 'emg': 0 bytes is not a "
        "whole number of 8-channel int16 frames",
    ),
    "byod-file-listed-twice": (
        lambda tmp: _byod(tmp, _byod_duplicate),
        "{tmp}/byod/sessions.csv: field 'file': files listed more than once: ['s00_s0_0000.h5']",
    ),
    "byod-manifest-not-csv": (
        lambda tmp: _byod(tmp, lambda t: 'file,subject\n"unterminated,x\n'),
        "{tmp}/byod/sessions.csv: cannot read as CSV: Error tokenizing data. C error: EOF inside "
        "string starting at row 1",
    ),
    "byod-fs-not-a-number": (
        lambda tmp: _byod(tmp, lambda t: t.replace(",2000.0,", ",fast,", 1)),
        "{tmp}/byod/sessions.csv: field 'fs': row 2: expected a positive number, got 'fast'",
    ),
    "byod-file-cell-blank": (
        lambda tmp: _byod(tmp, lambda t: t.replace("s00_s0_0000.h5", "", 1)),
        "{tmp}/byod/sessions.csv: field 'file': row 2: empty",
    ),
    "byod-manifest-is-a-folder": (
        lambda tmp: (tmp / "byod" / "sessions.csv").mkdir(parents=True) or load_byod(tmp / "byod"),
        "{tmp}/byod/sessions.csv: cannot read: Is a directory",
    ),
    "byod-emg-not-numbers": (
        lambda tmp: _byod_h5(tmp, lambda f: _replace(f, "emg", np.full((500, 16), b"x"))),
        "{tmp}/byod/s00_s0_0000.h5: field 'emg': must hold numbers, got dtype |S1",
    ),
    "byod-header-not-an-object": (
        lambda tmp: _byod_h5(tmp, lambda f: f.attrs.__setitem__("header", "[1, 2]")),
        "{tmp}/byod/s00_s0_0000.h5: field 'attrs.header': must be a JSON object, got list",
    ),
    "byod-labels-not-a-group": (
        lambda tmp: _byod_h5(tmp, lambda f: _replace(f, "labels", np.zeros(500, np.int64))),
        "{tmp}/byod/s00_s0_0000.h5: field 'labels': must be a group of (T,) label datasets",
    ),
    "byod-joint-names-not-a-list": (
        lambda tmp: _byod_h5(tmp, lambda f: _header(f, joint_names=5)),
        "{tmp}/byod/s00_s0_0000.h5: field 'header.joint_names': must be a list of names, got 5",
    ),
    "emg2pose-file-listed-twice": (
        _e2p_dataset_duplicate,
        "{tmp}/e2p/metadata.csv: field 'filename': files listed more than once: "
        "['2022-01-01-session00_right.hdf5']",
    ),
    # timestamps and sampling (part 4)
    "emg2pose-duplicated-timestamp": (
        lambda tmp: load_emg2pose(_e2p(tmp, time=lambda t: _set(t, 100, t[99]))),
        "{tmp}/s_right.hdf5: field 'emg2pose/timeseries.time': 1 duplicated timestamp(s), first "
        "at sample 100 (the time of sample 99)",
    ),
    "emg2pose-time-goes-back": (
        lambda tmp: load_emg2pose(_e2p(tmp, time=lambda t: _set(t, 300, t[0]))),
        "{tmp}/s_right.hdf5: field 'emg2pose/timeseries.time': time goes back at sample 300 "
        "(1600000000.0 after 1600000000.1495)",
    ),
    "emg2pose-nan-timestamp": (
        lambda tmp: load_emg2pose(_e2p(tmp, time=lambda t: _set(t, 7, np.nan))),
        "{tmp}/s_right.hdf5: field 'emg2pose/timeseries.time': NaN or Inf at sample 7",
    ),
    "emg2pose-rate-differs-from-declared": (
        lambda tmp: load_emg2pose(_e2p(tmp, time=lambda t: t[0] + (t - t[0]) * 2)),
        "{tmp}/s_right.hdf5: field 'emg2pose/timeseries.time': timestamps imply 1000.1 Hz but the "
        "file states sample_rate=2000 Hz (mismatched sampling rates)",
    ),
    "emg2pose-gap-as-one-recording": (
        lambda tmp: load_emg2pose(_e2p(tmp, seconds=0.5, time=_gap)),
        "{tmp}/s_right.hdf5: field 'emg2pose/timeseries.time': 1 gap(s) in the timestamps (at "
        "samples [600]); the file is 2 continuous segments: read them with "
        "load_emg2pose_segments",
    ),
    "emg2pose-zero-length": (
        lambda tmp: load_emg2pose(_e2p_empty(tmp)),
        "{tmp}/s_right.hdf5: field 'emg2pose/timeseries': has no samples",
    ),
    "emg2pose-channel-count-differs-from-layout": (
        lambda tmp: load_emg2pose(_e2p_attr(tmp, num_channels=8)),
        "{tmp}/s_right.hdf5: field 'emg2pose/timeseries.emg': num_channels=8 but emg has 16 "
        "channels",
    ),
    "emg2pose-zero-sample-rate": (
        lambda tmp: load_emg2pose(_e2p_attr(tmp, sample_rate=0.0)),
        "{tmp}/s_right.hdf5: field 'emg2pose.attrs.sample_rate': sampling rate must be > 0, got "
        "0.0",
    ),
    "emg2pose-sample-rate-not-a-number": (
        lambda tmp: load_emg2pose(_e2p_attr(tmp, sample_rate="fast")),
        "{tmp}/s_right.hdf5: field 'emg2pose.attrs.sample_rate': not a number: 'fast'",
    ),
    "emg2pose-inf-joint-angle-on-read": (
        lambda tmp: np.asarray(
            load_emg2pose(_e2p(tmp, joint_angles=lambda a: _set(a, (321, 4), np.inf))).kinematics
        ),
        "{tmp}/s_right.hdf5: field 'emg2pose/timeseries.joint_angles': NaN or Inf at sample 321",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_is_one_clear_line(case: str, tmp_path: Path) -> None:
    run, message = ERRORS[case]
    with pytest.raises(EmgDataError) as info:
        run(tmp_path)
    got = str(info.value)
    want = message.format(tmp=tmp_path)
    assert "\n" not in got
    if want.endswith(": "):  # the rest is the HDF5 library's own words
        assert got.startswith(want)
    else:
        assert got == want


# -- oddities with a right answer ------------------------------------------------------------------
def _same_recording(a: object, b: object) -> None:
    np.testing.assert_array_equal(np.asarray(a.emg), np.asarray(b.emg))
    for name in ("kinematics", "valid"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert a.labels.keys() == b.labels.keys()
    for k in a.labels:
        np.testing.assert_array_equal(a.labels[k], b.labels[k])
    assert (a.subject, a.session, a.joint_names, a.layout) == (
        b.subject,
        b.session,
        b.joint_names,
        b.layout,
    )


def _ninapro_v73_equals_v5(tmp: Path, userblock: bool) -> None:
    v5 = load_ninapro(write_ninapro(tmp / "S2_E1_A1.mat", "db8"))
    data = {k: v for k, v in read_mat(tmp / "S2_E1_A1.mat").items()}
    (tmp / "v73").mkdir()
    path = write_mat(tmp / "v73" / "S2_E1_A1.mat", data, "7.3", userblock=userblock)
    assert h5py.is_hdf5(path)
    _same_recording(load_ninapro(path), v5)


def _flexemg_v73_equals_v5(tmp: Path) -> None:
    v5 = load_flexemg(write_flexemg(tmp / "v5"))
    v73 = load_flexemg(write_flexemg(tmp / "v73", mat="7.3"))
    assert len(v5) == len(v73) == 2
    for a, b in zip(v5, v73, strict=True):
        _same_recording(a, b)
    assert read_mat(tmp / "v73" / "data" / "001-Session1Train" / "001-001.mat")["p"][
        "labelnames"
    ] == ["Fist", "Raise", "Lower", "Open"]


def _flexemg_later_sessions(tmp: Path) -> None:
    folders = ("001-Session1Train", "001-Session2Test", "001-Session3Train", "002-Session1Test")
    root = write_flexemg(tmp / "flex", folders)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped, nothing to say
        recs = load_flexemg(root)
    got = sorted((r.subject, r.session, r.meta["part"]) for r in recs)
    assert got == [
        ("001", "Session1", "Train"),
        ("001", "Session2", "Test"),
        ("001", "Session3", "Train"),
        ("002", "Session1", "Test"),
    ]
    assert len({r.fingerprint for r in recs}) == 4


def _flexemg_extra_paths(tmp: Path) -> None:
    root = write_flexemg(tmp / "flex")
    (root / "data" / "notes").mkdir()
    (root / "data" / "001-Session1Train" / "readme.txt").write_text("x")
    (root / "data" / "001-Session1Train-old").mkdir()
    with pytest.warns(UserWarning) as record:
        recs = load_flexemg(root)
    assert len(record) == 1
    assert str(record[0].message) == (
        f"{root / 'data'}: skipped 3 path(s), not <subj>-Session<k>{{Train,Test}}/<subj>-"
        "<trial>.mat: 001-Session1Train/readme.txt, 001-Session1Train-old, notes"
    )
    assert len(recs) == 2


def _myoarmband_extra_paths(tmp: Path) -> None:
    root = write_myoarmband(tmp / "myo")
    (root / "PreTrainingDataset" / "Robot1").mkdir()
    (root / "EvaluationDataset" / "Male0" / "Test0" / "classe_x.dat").write_bytes(b"\0" * 16)
    (root / "EvaluationDataset" / "Male0" / "calibration").mkdir()
    with pytest.warns(UserWarning) as record:
        recs = load_myoarmband(root)
    assert len(record) == 1 and str(record[0].message) == (
        f"{root}: skipped 3 path(s), not myoarmband <cohort>/<Female|Male k>/<session>/"
        "classe_<i>.dat: EvaluationDataset/Male0/Test0/classe_x.dat, "
        "EvaluationDataset/Male0/calibration, PreTrainingDataset/Robot1"
    )
    assert len(recs) == 3 * 28
    assert [r.source.rsplit("_", 1)[1] for r in recs[:12]] == [f"{i}.dat" for i in range(12)]
    assert {(r.subject, r.session) for r in recs} == {
        ("pre/Female0", "training0"),
        ("eval/Male0", "training0"),
        ("eval/Male0", "Test0"),
    }


def _ninapro_folder_strict(tmp: Path) -> None:
    write_ninapro(tmp / "S1_E1_A1.mat", "db8")
    write_ninapro(tmp / "S1_E1_A1_backup.mat", "db8")
    (tmp / "DB8").mkdir()
    write_ninapro(tmp / "DB8" / "S2_E1_A3.mat", "db8")
    with pytest.warns(UserWarning, match=r"skipped 1 path\(s\), not NinaPro .*: S1_E1_A1_backup"):
        recs = open_dataset(tmp)
    assert [(r.subject, r.session) for r in recs] == [("S1", "A1"), ("S2", "A3")]  # both levels


def _byod_unlisted_file(tmp: Path) -> None:
    write_byod(tmp / "byod", [emg2pose_recording(0, 0, "HandClawGraspFlicks", 0.25)])
    (tmp / "byod" / "extra.h5").write_bytes((tmp / "byod" / "s00_s0_0000.h5").read_bytes())
    with pytest.warns(UserWarning, match=r"skipped 1 path\(s\), not listed in sessions.csv: extra"):
        assert len(load_byod(tmp / "byod")) == 1


def _emg2pose_unlisted_file(tmp: Path) -> None:
    write_emg2pose_dataset(tmp, n_users=1, seconds=0.25)
    write_emg2pose(tmp / "stray_left.hdf5", emg2pose_recording(0, 0, "HandClawGraspFlicks", 0.25))
    with pytest.warns(UserWarning, match=r"not in metadata.csv: stray_left.hdf5$"):
        assert len(load_emg2pose_dataset(tmp)) == 2


def _emg2pose_gap_splits(tmp: Path) -> None:
    from emgcore.gestures import GestureConfig, windows
    from emgcore.preprocessing import Pipeline
    from emgcore.windows import RecordingCache, WindowDataset

    path = _e2p(tmp, seconds=1.0, time=_gap)  # 2000 samples, 0.5 s lost after sample 599
    segs = load_emg2pose_segments(path)
    assert [(r.meta["segment_start_sample"], r.n_samples) for r in segs] == [(0, 600), (600, 1400)]
    assert open_dataset(path)[1].fingerprint == segs[1].fingerprint != segs[0].fingerprint
    whole = emg2pose_recording(0, 0, "HandClawGraspFlicks", 1.0)
    np.testing.assert_array_equal(np.asarray(segs[1].emg), whole.emg[600:])
    with h5py.File(path) as f:
        time = f[TS]["time"]
    cached = RecordingCache(tmp / "cache").get_all(segs, Pipeline())
    ds = WindowDataset(cached, length=256, stride=50, target="sequence")
    assert len(ds) == (600 - 256) // 50 + 1 + (1400 - 256) // 50 + 1
    for i in range(len(ds)):  # every window lies inside one continuous segment
        item = ds[i]
        first = segs[item["recording"]].meta["segment_start_sample"] + item["start"]
        assert np.diff(time[first : first + 256]).max() < 1.5 / 2000
    pw = windows(segs, GestureConfig(window_s=0.25))
    assert len(pw) == 600 // 500 + 1400 // 500 and len(set(pw.recording)) == 2


def _emg2pose_dataset_with_gap(tmp: Path) -> None:
    write_emg2pose_dataset(tmp, n_users=1, seconds=0.5)
    with h5py.File(tmp / "2022-01-01-session00_right.hdf5", "r+") as f:
        data = f[TS][:]
        data["time"] = _gap(data["time"])
        f[TS][:] = data
    recs = load_emg2pose_dataset(tmp)
    assert [r.n_samples for r in recs] == [600, 400, 1000]
    assert [r.meta.get("segment") for r in recs] == [0, 1, None]
    assert recs[0].meta["split"] == recs[1].meta["split"] == "test"


def _jittered_clock_is_one_recording(tmp: Path) -> None:
    rng = np.random.default_rng(0)
    path = _e2p(tmp, time=lambda t: t + rng.uniform(-0.2, 0.2, len(t)) / 2000)
    assert load_emg2pose(path).n_samples == 1000


HANDLED = {
    "ninapro-v73-with-userblock-equals-v5": lambda tmp: _ninapro_v73_equals_v5(tmp, True),
    "ninapro-v73-plain-hdf5-equals-v5": lambda tmp: _ninapro_v73_equals_v5(tmp, False),
    "flexemg-v73-equals-v5": _flexemg_v73_equals_v5,
    "flexemg-later-sessions-are-what-they-are": _flexemg_later_sessions,
    "flexemg-extra-paths-skipped-and-named": _flexemg_extra_paths,
    "myoarmband-extra-paths-skipped-and-named": _myoarmband_extra_paths,
    "ninapro-folder-strict-names-both-levels": _ninapro_folder_strict,
    "byod-unlisted-file-skipped-and-named": _byod_unlisted_file,
    "emg2pose-unlisted-file-skipped-and-named": _emg2pose_unlisted_file,
    "emg2pose-gap-splits-into-segments-no-window-straddles": _emg2pose_gap_splits,
    "emg2pose-dataset-file-with-gap": _emg2pose_dataset_with_gap,
    "emg2pose-jittered-clock-is-not-a-gap": _jittered_clock_is_one_recording,
}


@pytest.mark.parametrize("case", list(HANDLED))
def test_odd_input_is_handled(case: str, tmp_path: Path) -> None:
    HANDLED[case](tmp_path)


def test_cli_prints_a_data_error_as_one_line_exit_2(tmp_path: Path) -> None:
    """Through ``python -m emgcore``: a loader's error is one line on stderr, exit status 2."""
    import subprocess
    import sys

    path = _e2p(tmp_path, time=lambda t: _set(t, 100, t[99]))
    out = subprocess.run(
        [sys.executable, "-m", "emgcore", "demo", "--data", str(path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: {path}: field 'emg2pose/timeseries.time': 1 duplicated timestamp(s), first at "
        "sample 100 (the time of sample 99)"
    ]


# -- flags and configs a sweep or `python -m emgcore` refuses before anything starts --------------
FLAGS = {
    "workers-zero": (["--workers", "0"], "argument --workers: must be at least 1, got 0"),
    "max-concurrent-zero": (["--max-concurrent", "0"], "argument --max-concurrent: must be at"),
    "gpus-negative": (["--gpus-per-worker", "-1"], "argument --gpus-per-worker: must be at least"),
    "duration-negative": (["--duration", "-1"], "argument --duration: must be at least 0.1"),
    "duration-nan": (["--duration", "nan"], "argument --duration: must be at least 0.1, got nan"),
    "sim-subjects-zero": (["--sim-subjects", "0"], "argument --sim-subjects: must be at least 1"),
    "another-methods-space": (
        ["--space", "search_spaces/cpep.yaml"],
        "cpep.yaml: field 'method': is cpep's search space, not kinembed's",
    ),
    "int-field-given-text": (
        ["--config", "{tmp}/c.yaml"],
        "c.yaml: field 'kinembed.patience': expected an integer, got 'ten'",
    ),
    "config-is-a-folder": (["--config", "{tmp}"], "field 'config': cannot read: Is a directory"),
    "resume-id-with-a-quote": (["--resume", "a'b"], "field '--resume': \"a'b\" is not a sweep id"),
}


@pytest.mark.parametrize("case", list(FLAGS))
def test_sweep_refuses_bad_flags_in_one_line_before_anything_starts(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestration import sweep

    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    (tmp_path / "c.yaml").write_text("kinembed: {patience: ten}\n")
    flags, want = FLAGS[case]
    argv = ["kinembed", *(f.format(tmp=tmp_path) for f in flags)]
    argv += ["--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--storage-path", str(tmp_path)]
    try:
        code = sweep.main(argv)
    except SystemExit as e:  # argparse: the one line
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    # the error on the last line; no usage block (before it only MLflow's new-store notes)
    assert code == 2 and want in err[-1] and not any(ln.startswith("usage:") for ln in err), err
    assert not list(tmp_path.glob("kinembed-*"))  # no sweep state written


def test_an_unwritable_storage_path_is_refused_before_ray_or_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was a traceback after the parent run had opened, left RUNNING. (Under a file: root,
    which CI runs as, may write anywhere else.)"""
    import mlflow
    import ray

    from orchestration import sweep

    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    (tmp_path / "afile").write_text("")
    storage, db = tmp_path / "afile" / "results", tmp_path / "m.db"
    argv = ["kinembed", "--smoke", "--tracking-uri", f"sqlite:///{db}"]
    assert sweep.main([*argv, "--storage-path", str(storage)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # one line naming the path; before it only MLflow's notes on creating the new store
    assert str(tmp_path / "afile") in err[-1] and "Traceback" not in "".join(err), err
    assert all("mlflow.store.db.utils" in line for line in err[:-1]), err
    assert not ray.is_initialized()
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(experiments) == []  # no run was opened, so none is left RUNNING


@pytest.mark.parametrize(
    ("text", "field", "why"),
    [
        ("seeds: 3\n", "seeds", "expected a list, got 3"),
        ("kinembed: {epochs: 1.5}\n", "kinembed.epochs", "expected an integer, got 1.5"),
        ("kinembed: {emg_hidden: [64, abc]}\n", "kinembed.emg_hidden[1]", "expected an integer"),
        ("ae_alphas: [0.5, x]\n", "ae_alphas[1]", "expected a number, got 'x'"),
        ("features: {bands_hz: [[1, 2, 3]]}\n", "features.bands_hz[0]", "expected a list of 2"),
        ("test_session: [a, b]\n", "test_session", "expected a string, got ('a', 'b')"),
    ],
)
def test_config_values_of_the_wrong_type_name_the_key(text, field, why, tmp_path) -> None:
    from emgcore.config import load_yaml
    from emgcore.methods.kinembed import ExperimentConfig

    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(EmgDataError) as e:
        load_yaml(ExperimentConfig, tmp_path / "c.yaml")
    assert f"field '{field}': {why}" in str(e.value)


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["kinembed", "--set", "foo"], "--set foo: field '--set': expected KEY=VALUE"),
        (["kinembed", "--set", "k=[1"], "--set k=[1: field 'k': not valid YAML: "),
        (["posealign", "--methods", "nosuch"], "field 'config': unknown method(s) ['nosuch']"),
        (["kinembed-report", "nope", "--out", "x"], "nope: field 'runs': not a kinembed run's"),
        (["demo", "--window-ms", "0"], "argument --window-ms: must be at least 0.1, got 0"),
    ],
)
def test_emgcore_cli_refuses_bad_options_in_one_line(argv, want, capsys, tmp_path) -> None:
    from emgcore.__main__ import main

    try:
        code = main(argv)
    except SystemExit as e:  # argparse: the one line
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    # the error on the last line; no usage block (before it only MLflow's new-store notes)
    assert code == 2 and want in err[-1] and not any(ln.startswith("usage:") for ln in err), err
