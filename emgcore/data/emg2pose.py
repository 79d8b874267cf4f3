"""emg2pose HDF5 (Salter et al. 2024): one lazy Recording per ``<session>_<side>.hdf5`` file.

Format (shared/notes/data-formats.md): group ``emg2pose``, compound dataset ``timeseries`` with
fields ``time`` (<f8, unix s), ``joint_angles`` (<f8, (20,), radians) and ``emg`` (<f4, (16,),
2 kHz, high-passed); attributes on the group; ``metadata.csv`` in the dataset root fixes the
splits and stage labels. Joint angles are converted to degrees (the unit results are reported
in); samples where all 20 angles are ~0 are IK failures and marked invalid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from emgcore.data._io import (
    check_time,
    file_fingerprint,
    h5_get,
    open_h5,
    read_rows,
    require_file,
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


def load_emg2pose(path: str | Path, meta: dict | None = None) -> Recording:
    """A lazy recording of one emg2pose file; ``meta`` adds metadata.csv facts for it."""
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
        n = ds.shape[0]
        time = read_rows(path, DATASET, "time", 0, n)
    for key in ATTRS:
        if key not in attrs:
            raise MissingFieldError("missing attribute", source=path, field=f"emg2pose.attrs.{key}")
    fs = float(attrs["sample_rate"])
    if int(attrs["num_channels"]) != n_ch:
        raise ShapeError(
            f"num_channels={attrs['num_channels']} but emg has {n_ch} channels",
            source=path,
            field=f"{DATASET}.emg",
        )
    check_time(time, fs, path, f"{DATASET}.time")

    def emg(a: int, b: int) -> np.ndarray:
        return read_rows(path, DATASET, "emg", a, b)

    def kin(a: int, b: int) -> np.ndarray:
        return np.rad2deg(read_rows(path, DATASET, "joint_angles", a, b))

    def valid(a: int, b: int) -> np.ndarray:
        ja = read_rows(path, DATASET, "joint_angles", a, b)
        return ~np.all(np.abs(ja) < IK_FAILURE_RAD, axis=1)

    src = str(path)
    rec_meta = {k: _plain(attrs[k]) for k in ("stage", "side", "start", "end", "filename")}
    rec_meta.update(meta or {})
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
        meta=rec_meta,
        fingerprint=file_fingerprint(path, "emg2pose", 1),
    )


def load_emg2pose_dataset(
    root: str | Path, split: str | None = None, limit: int | None = None
) -> list[Recording]:
    """Every file listed in ``root/metadata.csv`` (optionally one ``split``: train/val/test)."""
    root = require_file(root, "emg2pose dataset folder")
    meta = read_metadata(root / "metadata.csv")
    if split is not None:
        meta = meta[meta["split"] == split]
    out = []
    for row in meta.head(limit).itertuples(index=False) if limit else meta.itertuples(index=False):
        name = row.filename if str(row.filename).endswith(".hdf5") else f"{row.filename}.hdf5"
        rec = load_emg2pose(
            root / name,
            meta={
                "split": row.split,
                "generalization": row.generalization,
                "held_out_user": bool(row.held_out_user),
                "held_out_stage": bool(row.held_out_stage),
                "moving_hand": row.moving_hand,
            },
        )
        for col, value in (("user", rec.subject), ("stage", rec.meta["stage"])):
            if str(getattr(row, col)) != str(value):
                raise InvalidValueError(
                    f"metadata.csv says {getattr(row, col)!r}, file says {value!r}",
                    source=rec.source,
                    field=col,
                )
        out.append(rec)
    return out


def read_metadata(path: Path) -> pd.DataFrame:
    path = require_file(path, "emg2pose metadata.csv")
    df = pd.read_csv(path)
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
