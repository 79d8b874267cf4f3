"""The two real recordings in ``../shared/data`` (see its README): myoarmband and flexemg."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from emgcore.data._io import file_fingerprint, require_file
from emgcore.errors import (
    FormatError,
    InvalidValueError,
    MissingFieldError,
    MissingFileError,
    ShapeError,
)
from emgcore.recording import ChannelLayout, Recording

REAL_DATA_ENV = "EMG_REAL_DATA"  # tests and benches find ../shared/data through this

# -- myoarmband (Côté-Allard et al. 2019): 8-channel Myo ring, 200 Hz, int8 values as int16 --------
MYO_GESTURES = (
    "neutral",
    "radial_deviation",
    "wrist_flexion",
    "ulnar_deviation",
    "wrist_extension",
    "hand_close",
    "hand_open",
)
MYO_COHORTS = {"PreTrainingDataset": "pre", "EvaluationDataset": "eval"}


def load_myoarmband_file(path: str | Path, subject: str, session: str) -> Recording:
    """One ``classe_<i>.dat``: frames x 8 int16; gesture = i % 7, cycle = i // 7."""
    path = require_file(path, "myoarmband file")
    try:
        i = int(path.stem.split("_")[1])
    except (IndexError, ValueError):
        raise InvalidValueError(
            "file name must be classe_<i>.dat", source=path, field="filename"
        ) from None
    size = path.stat().st_size
    if size == 0 or size % 16:
        raise ShapeError(
            f"{size} bytes is not a whole number of 8-channel int16 frames",
            source=path,
            field="emg",
        )
    raw = np.fromfile(path, dtype="<i2").reshape(-1, 8)  # ~5 s: tiny, read eagerly
    n = len(raw)
    return Recording(
        emg=raw.astype(np.float32),
        fs=200.0,
        layout=ChannelLayout.ring(8, circumference_mm=260.0),
        subject=subject,
        session=session,
        device="Myo armband",
        source=str(path),
        kinematics_unit="",
        labels={"gesture": np.full(n, i % 7), "cycle": np.full(n, i // 7)},
        label_names={"gesture": MYO_GESTURES},
        meta={"gesture": MYO_GESTURES[i % 7], "cycle": i // 7, "units": "Myo 8-bit a.u."},
    )


def load_myoarmband(
    root: str | Path, cohorts: tuple[str, ...] = tuple(MYO_COHORTS)
) -> list[Recording]:
    """Every ``<cohort>/<person>/<session>/classe_<i>.dat``; subject id = ``<cohort>/<person>``."""
    root = require_file(root, "myoarmband folder")
    out = []
    for cohort in cohorts:
        base = require_file(root / cohort, "myoarmband cohort folder")
        for person in sorted(p for p in base.iterdir() if p.is_dir()):
            for session in sorted(s for s in person.iterdir() if s.is_dir()):
                files = sorted(
                    session.glob("classe_*.dat"), key=lambda p: int(p.stem.split("_")[1])
                )
                for f in files:
                    subject = f"{MYO_COHORTS.get(cohort, cohort)}/{person.name}"
                    out.append(load_myoarmband_file(f, subject, session.name))
    if not out:
        raise MissingFileError("no classe_<i>.dat files found", source=root)
    return out


# -- flexemg (Moin et al. 2018): 64-channel 16 x 4 flexible grid, 1 kHz ----------------------------
FLEX_LABELS = ("rest", "Fist", "Raise", "Lower", "Open")


def flexemg_layout(root: str | Path) -> ChannelLayout:
    """The 16 x 4 grid from ``arraymap.mat`` (1-based channel numbers), 10 mm pitch assumed."""
    path = require_file(Path(root) / "arraymap.mat", "flexemg arraymap")
    m = scipy.io.loadmat(path, squeeze_me=True)
    if "arraymap" not in m:
        raise MissingFieldError("variable missing", source=path, field="arraymap")
    grid = np.asarray(m["arraymap"], dtype=np.int64)
    if grid.shape != (16, 4):
        raise ShapeError(f"expected (16, 4), got {grid.shape}", source=path, field="arraymap")
    return ChannelLayout.make_grid(16, 4, pitch_mm=10.0, index=grid - 1)


def load_flexemg_file(
    path: str | Path, layout: ChannelLayout, subject: str, part: str
) -> Recording:
    """One trial: ``raw`` (28000, 96) uint16, columns 0..63 EMG -> volts; labels from ``p``."""
    path = require_file(path, "flexemg file")
    try:
        m = scipy.io.loadmat(path, squeeze_me=True)
    except Exception as e:
        raise FormatError(f"cannot read as a MATLAB file: {e}", source=path) from e
    for key in ("raw", "p"):
        if key not in m:
            raise MissingFieldError("variable missing", source=path, field=key)
    raw, p = np.asarray(m["raw"]), m["p"]
    if raw.ndim != 2 or raw.shape[1] < 64:
        raise ShapeError(f"expected (T, >=64), got {raw.shape}", source=path, field="raw")
    try:
        lsb_mv = float(p["lsbmV"])
        seq = np.atleast_1d(np.asarray(p["sequence"].item(), dtype=np.int64))
        t_gest, t_rest = int(p["timegest"]), int(p["timerest"])
    except (ValueError, KeyError, TypeError) as e:
        raise MissingFieldError(
            f"cannot read lsbmV/sequence/timegest/timerest: {e}", source=path, field="p"
        ) from e
    emg = raw[:, :64].astype(np.float64)
    emg = ((emg - emg.mean(axis=0)) * lsb_mv * 1e-3).astype(np.float32)  # volts
    n = len(emg)
    if t_rest + len(seq) * t_gest > n:
        raise ShapeError(
            f"{n} samples cannot hold rest {t_rest} + {len(seq)} x {t_gest}",
            source=path,
            field="raw",
        )
    gesture = np.zeros(n, dtype=np.int64)
    for k, g in enumerate(seq):  # rest, then the gestures in p.sequence order, then rest
        gesture[t_rest + k * t_gest : t_rest + (k + 1) * t_gest] = g
    return Recording(
        emg=emg,
        fs=1000.0,
        layout=layout,
        subject=subject,
        session="Session1",
        device="flexible 16x4 HD-sEMG",
        source=str(path),
        labels={"gesture": gesture},
        label_names={"gesture": FLEX_LABELS},
        meta={"part": part, "trial": path.stem},
        fingerprint=file_fingerprint(path, "flexemg", 1),
    )


def load_flexemg(root: str | Path) -> list[Recording]:
    """Every ``data/<subj>-Session1{Train,Test}/<subj>-<trial>.mat``."""
    root = require_file(root, "flexemg folder")
    layout = flexemg_layout(root)
    out = []
    for folder in sorted(require_file(root / "data", "flexemg data folder").iterdir()):
        subject, _, part = folder.name.partition("-Session1")
        for f in sorted(folder.glob("*.mat")):
            out.append(load_flexemg_file(f, layout, subject, part or "Train"))
    if not out:
        raise MissingFileError("no trial .mat files found", source=root / "data")
    return out
