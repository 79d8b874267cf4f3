"""The two real recordings in ``../shared/data`` (see its README): myoarmband and flexemg."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from emgcore.data._io import file_fingerprint, read_mat, require_file, warn_skipped
from emgcore.errors import (
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
    """One ``classe_<i>.dat``: frames x 8 int16; gesture = i % 7, cycle = i // 7.

    Returns ``emg (T, 8)`` float32 in the Myo's own 8-bit scale (``emg_unit="a.u."``: the
    device reports no physical unit) at 200 Hz, ``labels["gesture"]``/``["cycle"]`` ``(T,)``.
    """
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
        emg_unit="a.u.",
    )


MYO_PERSON = re.compile(r"^(Female|Male)\d+$")
MYO_SESSION = re.compile(r"^(training|Test)\d+$")
MYO_FILE = re.compile(r"^classe_(\d+)\.dat$")
MYO_EXPECTED = {"README.md", "LICENSE", "experiment.csv"}  # documentation beside the data


def load_myoarmband(
    root: str | Path, cohorts: tuple[str, ...] = tuple(MYO_COHORTS)
) -> list[Recording]:
    """Every ``<cohort>/<person>/<session>/classe_<i>.dat``; subject id = ``<cohort>/<person>``.

    Names are parsed strictly (person ``Female<k>`` / ``Male<k>``, session ``training<k>`` /
    ``Test<k>``, file ``classe_<i>.dat``); anything else in the tree is skipped and named in one
    :class:`UserWarning`, never guessed into a subject or session.
    """
    root = require_file(root, "myoarmband folder")
    out, skipped = [], []
    skipped += [
        p for p in root.iterdir() if p.name not in MYO_COHORTS and p.name not in MYO_EXPECTED
    ]
    for cohort in cohorts:
        base = require_file(root / cohort, "myoarmband cohort folder")
        for person in sorted(base.iterdir()):
            if not (person.is_dir() and MYO_PERSON.match(person.name)):
                skipped.append(person)
                continue
            for session in sorted(person.iterdir()):
                if session.name in MYO_EXPECTED:
                    continue
                if not (session.is_dir() and MYO_SESSION.match(session.name)):
                    skipped.append(session)
                    continue
                files = []
                for f in session.iterdir():
                    m = MYO_FILE.match(f.name)
                    if m and f.is_file():
                        files.append((int(m.group(1)), f))
                    else:
                        skipped.append(f)
                for _, f in sorted(files):
                    subject = f"{MYO_COHORTS.get(cohort, cohort)}/{person.name}"
                    out.append(load_myoarmband_file(f, subject, session.name))
    warn_skipped(root, skipped, "not myoarmband <cohort>/<Female|Male k>/<session>/classe_<i>.dat")
    if not out:
        raise MissingFileError("no classe_<i>.dat files found", source=root)
    return out


# -- flexemg (Moin et al. 2018): 64-channel 16 x 4 flexible grid, 1 kHz ----------------------------
FLEX_LABELS = ("rest", "Fist", "Raise", "Lower", "Open")


FLEX_FOLDER = re.compile(r"^(?P<subject>\d+)-Session(?P<session>\d+)(?P<part>Train|Test)$")
FLEX_FILE = re.compile(r"^(?P<subject>\d+)-(?P<trial>\d+)\.mat$")
FLEX_VERSION = 2  # in the fingerprint: v1 named every session "Session1" (cached copies stale)


def flexemg_layout(root: str | Path) -> ChannelLayout:
    """The 16 x 4 grid from ``arraymap.mat`` (1-based channel numbers), 10 mm pitch assumed."""
    path = require_file(Path(root) / "arraymap.mat", "flexemg arraymap")
    m = read_mat(path, ["arraymap"])
    if "arraymap" not in m:
        raise MissingFieldError("variable missing", source=path, field="arraymap")
    grid = np.asarray(m["arraymap"])
    if grid.shape != (16, 4) or grid.dtype.kind not in "fiu":
        raise ShapeError(
            f"expected (16, 4) numbers, got {grid.dtype} {grid.shape}",
            source=path,
            field="arraymap",
        )
    try:
        return ChannelLayout.make_grid(16, 4, pitch_mm=10.0, index=grid.astype(np.int64) - 1)
    except (ShapeError, IndexError) as e:
        msg = e.message if isinstance(e, ShapeError) else str(e)
        raise ShapeError(
            f"not a map of channels 1-64, each once: {msg}", source=path, field="arraymap"
        ) from None


def load_flexemg_file(
    path: str | Path, layout: ChannelLayout, subject: str, part: str, session: str = "Session1"
) -> Recording:
    """One trial: ``raw`` (T, >= 64) uint16, columns 0..63 EMG -> volts; labels from ``p``.

    Returns a recording of ``emg (T, 64)`` float32 volts (``emg_unit="V"``) at 1 kHz,
    ``labels["gesture"] (T,)``.
    Raises :class:`MissingFieldError` / :class:`ShapeError` naming the file and variable.
    """
    path = require_file(path, "flexemg file")
    m = read_mat(path, ["raw", "p"])  # v5 or v7.3
    for key in ("raw", "p"):
        if key not in m:
            raise MissingFieldError("variable missing", source=path, field=key)
    raw, p = np.asarray(m["raw"]), m["p"]
    if raw.ndim != 2 or raw.shape[1] < 64 or raw.dtype.kind not in "fiu":
        raise ShapeError(
            f"expected (T, >=64) numbers, got {raw.dtype} {raw.shape}", source=path, field="raw"
        )
    try:
        lsb_mv = float(_scalar(p["lsbmV"]))
        seq = np.ravel(np.asarray(p["sequence"])).astype(np.int64)
        t_gest, t_rest = int(_scalar(p["timegest"])), int(_scalar(p["timerest"]))
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise MissingFieldError(
            f"cannot read lsbmV/sequence/timegest/timerest: {e!r}", source=path, field="p"
        ) from None
    if bad := sorted(set(seq.tolist()) - set(range(1, len(FLEX_LABELS)))):
        raise InvalidValueError(
            f"gesture ids {bad} outside 1-{len(FLEX_LABELS) - 1}", source=path, field="p.sequence"
        )
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
        session=session,
        device="flexible 16x4 HD-sEMG",
        source=str(path),
        labels={"gesture": gesture},
        label_names={"gesture": FLEX_LABELS},
        meta={"part": part, "trial": path.stem},
        fingerprint=file_fingerprint(path, "flexemg", FLEX_VERSION, session, part),
        emg_unit="V",
    )


def load_flexemg(root: str | Path) -> list[Recording]:
    """Every ``data/<subj>-Session<k>{Train,Test}/<subj>-<trial>.mat`` (session ``Session<k>``,
    meta ``part`` Train or Test).

    Folder and file names are parsed strictly: anything else under ``data/`` is skipped and
    named in one :class:`UserWarning`; a trial whose subject differs from its folder's raises
    :class:`InvalidValueError`.
    """
    root = require_file(root, "flexemg folder")
    layout = flexemg_layout(root)
    out, skipped = [], []
    for folder in sorted(require_file(root / "data", "flexemg data folder").iterdir()):
        fm = FLEX_FOLDER.match(folder.name)
        if not (fm and folder.is_dir()):
            skipped.append(folder)
            continue
        session = f"Session{int(fm['session'])}"
        for f in sorted(folder.iterdir()):
            tm = FLEX_FILE.match(f.name)
            if not (tm and f.is_file()):
                skipped.append(f)
                continue
            if tm["subject"] != fm["subject"]:
                raise InvalidValueError(
                    f"subject {tm['subject']} in the folder of subject {fm['subject']}",
                    source=f,
                    field="filename",
                )
            out.append(load_flexemg_file(f, layout, fm["subject"], fm["part"], session))
    warn_skipped(root / "data", skipped, "not <subj>-Session<k>{Train,Test}/<subj>-<trial>.mat")
    if not out:
        raise MissingFileError("no trial .mat files found", source=root / "data")
    return out


def _scalar(v: object) -> object:
    a = np.ravel(np.asarray(v))
    if a.size != 1:
        raise ValueError(f"expected one value, got {a.size}")
    return a[0]
