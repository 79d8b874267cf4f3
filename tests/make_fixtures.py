"""Write small files in the exact published formats of emg2pose and NinaPro.

The real datasets are not reachable here, so the loaders are tested on these. Run as a script to
write a sample set: ``python tests/make_fixtures.py OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.io

from emgcore.data.emg2pose import METADATA_COLUMNS, write_emg2pose
from emgcore.data.simulator import preset, simulate_recording
from emgcore.recording import Recording

NINAPRO_SHAPES = {  # db -> (emg channels, glove channels or None, extra 2-D variables)
    "db8": (16, 18, {"acc": 48, "gyro": 48, "mag": 48}),
    "db2": (12, 22, {"acc": 36, "inclin": 2, "force": 6, "forcecal": 2}),
    "db7": (12, 18, {"acc": 36, "gyro": 36, "mag": 36}),
    "db4": (12, None, {"acc": 36}),
}


def emg2pose_recording(user: int, session: int, stage: str, seconds: float = 2.0) -> Recording:
    cfg = preset("emg2pose-like", duration_s=seconds, n_subjects=user + 1)
    return simulate_recording(cfg, user, session, stage)


def write_emg2pose_dataset(root: Path, n_users: int = 3, seconds: float = 2.0) -> pd.DataFrame:
    """A tiny emg2pose tree: ``<session>_<side>.hdf5`` files and ``metadata.csv``."""
    root.mkdir(parents=True, exist_ok=True)
    stages = ("HandClawGraspFlicks", "ShakaVulcanPeace")
    rows = []
    for u in range(n_users):
        for k, stage in enumerate(stages):
            rec = emg2pose_recording(u, 0, stage, seconds)
            name = f"2022-0{u + 1}-0{k + 1}-session{u}{k}_right"
            write_emg2pose(root / f"{name}.hdf5", rec)
            rows.append(
                {
                    "user": rec.subject,
                    "session": rec.session,
                    "stage": stage,
                    "side": "right",
                    "moving_hand": "right",
                    "held_out_user": u == n_users - 1,
                    "held_out_stage": stage == "ShakaVulcanPeace",
                    "split": "test" if u == n_users - 1 else "train",
                    "generalization": "user" if u == n_users - 1 else "user_stage",
                    "filename": name,
                    "start": 0.0,
                }
            )
    df = pd.DataFrame(rows, columns=list(METADATA_COLUMNS))
    df.to_csv(root / "metadata.csv", index=False)
    return df


def ninapro_arrays(db: str, n: int = 4000, seed: int = 0) -> dict[str, np.ndarray]:
    """Variables of one NinaPro file, every one 2-D and labels (N, 1), as the real files are."""
    rng = np.random.default_rng(seed)
    n_emg, n_glove, extra = NINAPRO_SHAPES[db]
    stim = np.repeat(np.arange(n // 500) % 5, 500)[:n, None].astype(np.float64)
    rep = np.repeat(np.arange(n // 500) // 5 + 1, 500)[:n, None].astype(np.float64)
    out = {
        "emg": rng.normal(0, 2e-5, (n, n_emg)),  # volts, as recorded
        "stimulus": stim.copy(),
        "restimulus": stim,
        "repetition": rep.copy(),
        "rerepetition": rep,
        "subject": np.array([[1.0]]),
        "exercise": np.array([[1.0]]),
    }
    if n_glove is not None:
        out["glove"] = rng.uniform(0, 90, (n, n_glove))
    for key, cols in extra.items():
        out[key] = rng.normal(0, 1, (n, cols))
    return out


def write_ninapro(path: Path, db: str, *, mat: str = "5", **arrays: np.ndarray) -> Path:
    """Write a NinaPro-format MATLAB file (``mat``: "5" as published, "7.3" as MATLAB's
    ``save -v7.3`` writes it); ``arrays`` override or add variables."""
    data = ninapro_arrays(db, n=len(arrays["emg"]) if "emg" in arrays else 4000) | arrays
    write_mat(path, data, mat)
    return path


def write_mat(path: Path, variables: dict, mat: str = "5", *, userblock: bool = True) -> Path:
    """A MATLAB file: v5 through scipy, or v7.3 laid out the way MATLAB writes it.

    v7.3: an HDF5 file (behind a 512-byte userblock holding MATLAB's text header, unless
    ``userblock=False``); every array stored transposed with a ``MATLAB_class`` attribute;
    ``str`` as a uint16 ``char`` array; ``list`` as a ``cell`` of object references into
    ``#refs#``; ``dict`` as a ``struct`` group.
    """
    if mat == "5":
        scipy.io.savemat(path, {k: _v5(v) for k, v in variables.items()}, format="5")
        return path
    with h5py.File(path, "w", userblock_size=512 if userblock else 0) as f:
        for k, v in variables.items():
            _h5_write(f, f, k, v)
    if userblock:
        head = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Nov 30 12:00:00 2026 HDF5"
        with open(path, "r+b") as fh:
            fh.write(head.ljust(116) + b"\x00" * 8 + b"\x00\x02IM")
    return path


def _v5(v: object) -> object:
    """Lists as cells (savemat would make a char or numeric matrix of them)."""
    if isinstance(v, dict):
        return {k: _v5(x) for k, x in v.items()}
    if isinstance(v, list):
        out = np.empty((1, len(v)), dtype=object)
        for i, x in enumerate(v):  # a str alone would become one padded char matrix
            out[0, i] = np.array(x) if isinstance(x, str) else _v5(x)
        return out
    return v


_MAT_CLASS = {"f": "double", "b": "logical"}


def _h5_write(f: h5py.File, parent: h5py.Group, name: str, v: object) -> None:
    if isinstance(v, dict):
        g = parent.create_group(name)
        g.attrs["MATLAB_class"] = np.bytes_("struct")
        for k, x in v.items():
            _h5_write(f, g, k, x)
        return
    if isinstance(v, str):
        ds = parent.create_dataset(name, data=np.array([[ord(c)] for c in v], np.uint16))
        ds.attrs["MATLAB_class"] = np.bytes_("char")
        ds.attrs["MATLAB_int_decode"] = np.int32(2)
        return
    if isinstance(v, list):
        refs = f.require_group("#refs#")
        out = np.empty((len(v), 1), dtype=h5py.ref_dtype)  # MATLAB (1, n), transposed
        for i, x in enumerate(v):
            key = f"{name}_{len(refs)}"
            _h5_write(f, refs, key, x)
            out[i, 0] = refs[key].ref
        ds = parent.create_dataset(name, data=out, dtype=h5py.ref_dtype)
        ds.attrs["MATLAB_class"] = np.bytes_("cell")
        return
    a = np.atleast_2d(np.asarray(v))
    ds = parent.create_dataset(name, data=a.T)  # MATLAB's column-major array, as HDF5 sees it
    ds.attrs["MATLAB_class"] = np.bytes_(_MAT_CLASS.get(a.dtype.kind, a.dtype.name))


def write_flexemg(
    root: Path,
    folders: tuple[str, ...] = ("001-Session1Train", "001-Session1Test"),
    *,
    trials: int = 1,
    mat: str = "5",
    n: int = 700,
) -> Path:
    """A flexemg tree in the published layout: ``arraymap.mat`` (16 x 4, 1-based channels) and
    ``data/<folder>/<subj>-<trial>.mat`` with ``raw`` (n, 96) uint16 and the struct ``p``
    (short timeline: 100 samples of rest, four 100-sample gestures, rest)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    grid = (np.arange(64).reshape(4, 16).T + 1).astype(np.float64)  # any 1..64 permutation
    write_mat(root / "arraymap.mat", {"arraymap": grid}, mat)
    for folder in folders:
        (root / "data" / folder).mkdir(parents=True, exist_ok=True)
        subject = folder.split("-")[0]
        for t in range(1, trials + 1):
            p = {
                "lsbmV": np.array([[0.0030517578125]]),
                "labelnames": ["Fist", "Raise", "Lower", "Open"],
                "numlabels": np.array([[4]], np.uint8),
                "sequence": np.array([[3, 4, 2, 1]], np.uint8),
                "reps": np.array([[1]], np.uint8),
                "timegest": np.array([[100]], np.uint16),
                "timerest": np.array([[100]], np.uint16),
            }
            raw = rng.integers(30000, 35000, (n, 96)).astype(np.uint16)
            write_mat(root / "data" / folder / f"{subject}-{t:03d}.mat", {"raw": raw, "p": p}, mat)
    return root


def write_myoarmband(
    root: Path, people: dict[str, tuple[str, ...]] | None = None, *, frames: int = 50
) -> Path:
    """A myoarmband tree: ``<cohort>/<person>/<session>/classe_<i>.dat`` (frames x 8 int16,
    i = 0..27) and each person's ``experiment.csv``; ``people`` maps ``cohort/person`` to its
    sessions (default: one pre-training and one evaluation person)."""
    rng = np.random.default_rng(0)
    people = people or {
        "PreTrainingDataset/Female0": ("training0",),
        "EvaluationDataset/Male0": ("training0", "Test0"),
    }
    for cohort in ("PreTrainingDataset", "EvaluationDataset"):
        (root / cohort).mkdir(parents=True, exist_ok=True)
    for person, sessions in people.items():
        (root / person).mkdir(parents=True, exist_ok=True)
        (root / person / "experiment.csv").write_text("sex,age,forearm\nF,30,25\n")
        for session in sessions:
            (root / person / session).mkdir(parents=True, exist_ok=True)
            for i in range(28):
                x = rng.integers(-128, 128, (frames, 8)).astype("<i2")
                x.tofile(root / person / session / f"classe_{i}.dat")
    return root


# The simulated hand movement standing in for each NinaPro movement of the EMBridge benchmark:
# per database, per exercise file, movement number within the exercise -> simulator gesture.
NINAPRO_MOVEMENTS = {
    "B": {1: "index_flexion", 2: "middle_flexion", 5: "thumb_abduction", 10: "wrist_flexion"}
    | {15: "hand_open"},
    "C": {1: "cylindrical_grip", 2: "claw", 5: "lateral_grip", 10: "tripod_grip", 15: "hand_close"},
    "D": {1: "ring_little_flexion"},
}


def write_ninapro_benchmark(
    root: Path, db2_subjects: int = 2, db7_subjects: int = 4, seconds: float = 40.0
) -> Path:
    """``root/DB2`` and ``root/DB7``: simulated people performing :data:`NINAPRO_MOVEMENTS`,
    written as NinaPro files (database-wide movement ids, 22- or 18-sensor glove in raw units
    that differ between the two gloves, 50 Hz mains)."""
    from emgcore.data.ninapro import GLOVE_18, GLOVE_22, SPECS
    from emgcore.data.simulator import SimConfig, simulate_recording

    people = {"db2": (db2_subjects, 1.3, 20.0), "db7": (db7_subjects, 1.0, 0.0)}
    for db, (n_subjects, gain, offset) in people.items():
        spec = SPECS[db]
        folder = root / db.upper()
        folder.mkdir(parents=True, exist_ok=True)
        for e, letter in enumerate(spec.exercises, start=1):
            movements = NINAPRO_MOVEMENTS[letter]
            cfg = SimConfig(
                layout="ring12",
                kinematics="joints20",
                gestures=tuple(movements.values()),
                hold_s=2.5,
                rest_s=1.0,
                free_fraction=0.0,
                duration_s=seconds,
                mains_hz=50.0,
                sessions=("A1",),
                seed={"db2": 0, "db7": 1}[db],
            )
            ids = np.zeros(len(cfg.gesture_names), np.int64)  # simulator id -> NinaPro id
            for number, gesture in movements.items():
                ids[cfg.gesture_names.index(gesture)] = spec.offset(e) + number
            for subject in range(n_subjects):
                rec = simulate_recording(cfg, subject, 0)
                angles = dict(zip(GLOVE_18, rec.kinematics.T[:18], strict=True))
                for finger in ("index", "middle", "ring", "little"):  # DIP follows PIP
                    angles[f"{finger}_dip"] = 0.7 * angles[f"{finger}_pip"]
                names = GLOVE_22 if spec.n_glove == 22 else GLOVE_18
                glove = gain * np.stack([angles[n] for n in names], axis=1) + offset
                gesture = ids[rec.labels["gesture"]][:, None].astype(np.float64)
                rep = rec.labels["repetition"][:, None].astype(np.float64)
                write_ninapro(
                    folder / f"S{subject + 1}_E{e}_A1.mat",
                    db,
                    emg=rec.emg.astype(np.float64),
                    glove=glove.astype(np.float64),
                    stimulus=gesture,
                    restimulus=gesture,
                    repetition=rep,
                    rerepetition=rep,
                    subject=np.array([[subject + 1.0]]),
                    exercise=np.array([[float(e)]]),
                )
    return root


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "fixtures")
    write_emg2pose_dataset(out / "emg2pose")
    for db in NINAPRO_SHAPES:
        (out / db).mkdir(parents=True, exist_ok=True)
        write_ninapro(out / db / "S1_E1_A1.mat", db)
    print(f"wrote fixtures under {out}")
