"""emg2pose HDF5 (Salter et al. 2024): one lazy Recording per ``<session>_<side>.hdf5`` file.

Format (shared/notes/data-formats.md): group ``emg2pose``, compound dataset ``timeseries`` with
fields ``time`` (<f8, unix s), ``joint_angles`` (<f8, (20,), radians) and ``emg`` (<f4, (16,),
2 kHz, high-passed); attributes on the group; ``metadata.csv`` in the dataset root fixes the
splits and stage labels. The format states no EMG unit (neither the file attributes nor the
dataset's documentation give one), so recordings carry ``emg_unit="a.u."``; channels are the 16
band electrodes, unnamed. Joint angles are converted to degrees (the unit results are reported
in); samples where all 20 angles are ~0 are IK failures and marked invalid. Timestamps are
checked on load (:func:`emgcore.data._io.time_segments`); a gap splits a file into continuous
segments (:func:`load_emg2pose_segments`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from emgcore.data._io import (
    file_fingerprint,
    h5_get,
    open_h5,
    read_csv,
    read_rows,
    require_file,
    time_segments,
    warn_skipped,
)
from emgcore.errors import InvalidValueError, MissingFieldError, ShapeError
from emgcore.recording import ChannelLayout, LazyArray, Recording

DTYPE = np.dtype([("time", "<f8"), ("joint_angles", "<f8", (20,)), ("emg", "<f4", (16,))])
ATTRS = (
    "filename",
    "session",
    "stage",
    "user",
    "side",
    "sample_rate",
    "num_channels",
    "start",
    "end",
)
METADATA_COLUMNS = (
    "user",
    "session",
    "stage",
    "side",
    "moving_hand",
    "held_out_user",
    "held_out_stage",
    "split",
    "generalization",
    "filename",
    "start",
)
JOINTS = (
    "THUMB_CMC_FE",
    "THUMB_CMC_AA",
    "THUMB_MCP_FE",
    "THUMB_IP_FE",
    *(
        f"{f}_{j}"
        for f in ("INDEX", "MIDDLE", "RING", "PINKY")
        for j in ("MCP_AA", "MCP_FE", "PIP_FE", "DIP_FE")
    ),
)
IK_FAILURE_RAD = 1e-6  # all angles within this of zero = inverse kinematics failed
DATASET = "emg2pose/timeseries"
EMG_UNIT = "a.u."  # the published format states no unit for its (high-passed) emg field


def load_emg2pose(path: str | Path, meta: dict | None = None) -> Recording:
    """One emg2pose file as one lazy recording; ``meta`` adds metadata.csv facts for it.

    Shapes: ``emg (T, 16)`` float32 (``emg_unit="a.u."``: the format states none),
    ``kinematics (T, 20)`` degrees, ``valid (T,)`` (IK
    failures False), ``fs`` from the ``sample_rate`` attribute. Raises an
    :class:`~emgcore.errors.EmgDataError` naming the file and field for bad timestamps,
    attributes or layout, and for a file whose timestamps have a gap (it is not one continuous
    recording: :func:`load_emg2pose_segments` reads it as one recording per segment).
    """
    segments = load_emg2pose_segments(path, meta)
    if len(segments) > 1:
        starts = [r.meta["segment_start_sample"] for r in segments[1:]]
        raise InvalidValueError(
            f"{len(segments) - 1} gap(s) in the timestamps (at samples {starts}); the file is "
            f"{len(segments)} continuous segments: read them with load_emg2pose_segments",
            source=segments[0].source,
            field=f"{DATASET}.time",
        )
    return segments[0]


def load_emg2pose_segments(path: str | Path, meta: dict | None = None) -> list[Recording]:
    """One emg2pose file as lazy recordings, one per continuous stretch of its timestamps.

    A gap (a step over :data:`emgcore.data._io.GAP_PERIODS` sample periods: samples lost)
    splits the file; each segment is a recording of its own (same subject, session and stage;
    ``meta["segment"]`` its index, ``meta["segment_start_sample"]`` its first row in the file).
    Splitting, rather than marking samples around the gap invalid, is what keeps every consumer
    honest without each knowing about gaps: filters run over one recording at a time and every
    window (gestures, poseest, :class:`~emgcore.windows.WindowDataset`) is cut inside one, so
    nothing ever spans the gap; an invalid mask would only guard the pose targets. A file
    without gaps is one segment, the same recording :func:`load_emg2pose` returns.
    """
    path = require_file(path, "emg2pose file")
    with open_h5(path) as f:
        group = h5_get(f, "emg2pose", path)
        ds = h5_get(group, "timeseries", path)
        attrs = dict(group.attrs)
        names = ds.dtype.names or ()
        for name in ("time", "joint_angles", "emg"):
            if name not in names:
                raise MissingFieldError(
                    f"compound field missing (has {list(names)})",
                    source=path,
                    field=f"{DATASET}.{name}",
                )
        if ds.dtype["joint_angles"].shape != (20,):
            raise ShapeError(
                f"expected 20 joint angles, got {ds.dtype['joint_angles'].shape}",
                source=path,
                field=f"{DATASET}.joint_angles",
            )
        n_ch = ds.dtype["emg"].shape[0] if ds.dtype["emg"].shape else 1
        n = ds.shape[0] if ds.ndim == 1 else -1
        if n < 0:
            raise ShapeError(
                f"expected a 1-D table of samples, got shape {ds.shape}", source=path, field=DATASET
            )
        time = read_rows(path, DATASET, "time", 0, n)
    for key in ATTRS:
        if key not in attrs:
            raise MissingFieldError("missing attribute", source=path, field=f"emg2pose.attrs.{key}")
    fs = _number(attrs["sample_rate"], path, "sample_rate")
    if not (np.isfinite(fs) and fs > 0):
        raise InvalidValueError(
            f"sampling rate must be > 0, got {fs}", source=path, field="emg2pose.attrs.sample_rate"
        )
    stated = _number(attrs["num_channels"], path, "num_channels")
    if stated != n_ch:
        raise ShapeError(
            f"num_channels={attrs['num_channels']} but emg has {n_ch} channels",
            source=path,
            field=f"{DATASET}.emg",
        )
    if n == 0:
        raise ShapeError("has no samples", source=path, field=DATASET)
    firsts = time_segments(time, fs, path, f"{DATASET}.time")
    bounds = np.r_[firsts, n]
    src = str(path)
    base_meta = {k: _plain(attrs[k]) for k in ("stage", "side", "start", "end", "filename")}
    base_meta.update(meta or {})
    out = []
    for k, (a0, b0) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)):
        one = len(firsts) == 1
        rec_meta = base_meta if one else base_meta | {"segment": k, "segment_start_sample": a0}
        out.append(_segment(path, src, a0, b0, n_ch, fs, attrs, rec_meta, one))
    return out


def _segment(
    path: Path,
    src: str,
    a0: int,
    b0: int,
    n_ch: int,
    fs: float,
    attrs: dict,
    meta: dict,
    whole: bool,
) -> Recording:
    """Rows ``a0:b0`` of the file as a lazy recording."""

    def emg(a: int, b: int) -> np.ndarray:
        return read_rows(path, DATASET, "emg", a0 + a, a0 + b)

    def kin(a: int, b: int) -> np.ndarray:
        return np.rad2deg(read_rows(path, DATASET, "joint_angles", a0 + a, a0 + b))

    def valid(a: int, b: int) -> np.ndarray:
        ja = read_rows(path, DATASET, "joint_angles", a0 + a, a0 + b)
        return ~np.all(np.abs(ja) < IK_FAILURE_RAD, axis=1)

    n = b0 - a0
    # a whole file keeps its old fingerprint (cached copies stay valid); segments are their own
    fp = (
        file_fingerprint(path, "emg2pose", 1)
        if whole
        else file_fingerprint(path, "emg2pose", 1, "segment", a0, b0)
    )
    return Recording(
        emg=LazyArray(emg, (n, n_ch), np.float32, source=src, field=f"{DATASET}.emg"),
        fs=fs,
        layout=ChannelLayout.ring(n_ch),
        subject=str(_plain(attrs["user"])),
        session=str(_plain(attrs["session"])),
        device="emg2pose-band",
        source=src,
        kinematics=LazyArray(kin, (n, 20), np.float32, source=src, field=f"{DATASET}.joint_angles"),
        joint_names=JOINTS,
        kinematics_unit="deg",
        valid=LazyArray(valid, (n,), bool, source=src, field=f"{DATASET}.joint_angles"),
        meta=meta,
        fingerprint=fp,
        emg_unit=EMG_UNIT,
    )


def _number(v: object, path: Path, name: str) -> float:
    try:
        return float(_plain(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidValueError(
            f"not a number: {v!r}", source=path, field=f"emg2pose.attrs.{name}"
        ) from None


def load_emg2pose_dataset(
    root: str | Path, split: str | None = None, limit: int | None = None
) -> list[Recording]:
    """Every file listed in ``root/metadata.csv`` (optionally one ``split``: train/val/test),
    as :func:`load_emg2pose_segments` reads it (a file with gaps gives one recording per
    continuous segment). ``.hdf5`` files in ``root`` that metadata.csv does not list are skipped
    and named in one :class:`UserWarning`; a file listed twice raises."""
    root = require_file(root, "emg2pose dataset folder")
    meta = read_metadata(root / "metadata.csv")
    names = [f if str(f).endswith(".hdf5") else f"{f}.hdf5" for f in meta["filename"].astype(str)]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise InvalidValueError(
            f"files listed more than once: {dup}", source=root / "metadata.csv", field="filename"
        )
    warn_skipped(
        root, [p for p in root.glob("*.hdf5") if p.name not in names], "not in metadata.csv"
    )
    meta = meta.assign(file_=names)
    if split is not None:
        meta = meta[meta["split"] == split]
    out = []
    for row in meta.head(limit).itertuples(index=False) if limit else meta.itertuples(index=False):
        recs = load_emg2pose_segments(
            root / row.file_,
            meta={
                "split": row.split,
                "generalization": row.generalization,
                "held_out_user": bool(row.held_out_user),
                "held_out_stage": bool(row.held_out_stage),
                "moving_hand": row.moving_hand,
            },
        )
        rec = recs[0]
        for col, value in (("user", rec.subject), ("stage", rec.meta["stage"])):
            if str(getattr(row, col)) != str(value):
                raise InvalidValueError(
                    f"metadata.csv says {getattr(row, col)!r}, file says {value!r}",
                    source=rec.source,
                    field=col,
                )
        out += recs
    return out


def read_metadata(path: Path) -> pd.DataFrame:
    path = require_file(path, "emg2pose metadata.csv")
    df = read_csv(path)
    for col in METADATA_COLUMNS:
        if col not in df.columns:
            raise MissingFieldError("column missing", source=path, field=col)
    if bad := sorted(set(df["split"]) - {"train", "val", "test"}):
        raise InvalidValueError(f"unknown split values {bad}", source=path, field="split")
    return df


def write_emg2pose(path: str | Path, rec: Recording, *, chunk_rows: int = 100_000) -> Path:
    """Write a recording in the exact emg2pose layout (tests, benchmarks, format conversion).

    Kinematics must be the 20 emg2pose joint angles in degrees (stored as radians).
    """
    import h5py

    path = Path(path)
    n = rec.n_samples
    with h5py.File(path, "w") as f:
        g = f.create_group("emg2pose")
        ds = g.create_dataset("timeseries", shape=(n,), dtype=DTYPE, chunks=(min(n, 10_000),))
        t0 = float(rec.meta.get("start", 1.6e9))
        for a in range(0, n, chunk_rows):
            b = min(n, a + chunk_rows)
            block = np.zeros(b - a, DTYPE)
            block["time"] = t0 + np.arange(a, b) / rec.fs
            block["emg"] = np.asarray(rec.emg[a:b])
            if rec.kinematics is not None:
                block["joint_angles"] = np.deg2rad(np.asarray(rec.kinematics[a:b], np.float64))
            ds[a:b] = block
        g.attrs.update(
            {
                "filename": path.stem,
                "session": rec.session,
                "stage": rec.meta.get("stage", ""),
                "user": rec.subject,
                "side": rec.meta.get("side", "right"),
                "sample_rate": float(rec.fs),
                "num_channels": rec.n_channels,
                "start": t0,
                "end": t0 + n / rec.fs,
            }
        )
    return path


def _plain(v: object) -> object:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v
