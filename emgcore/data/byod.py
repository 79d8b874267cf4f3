"""Bring your own data: an open format a lab converts its recordings into in a few lines.

A dataset is a folder with ``sessions.csv`` and one HDF5 file per recording::

    sessions.csv   file, subject, session, device, fs, n_channels, n_samples
    <file>.h5      emg          (T, C) float32            required, in header.emg_unit
                   kinematics   (T, J) float32            optional
                   valid        (T,)   bool                optional (target usable?)
                   labels/<k>   (T,)   int                 optional, any number
                   attrs["header"] = JSON: layout (kind, positions_mm, circumference_mm, grid),
                                     emg_unit, channel_names, joint_names, kinematics_unit,
                                     label_names, meta
                   attrs["format_version"], attrs["fs"]

``emg_unit`` is one of :data:`emgcore.recording.EMG_UNITS` (``V``, ``mV``, ``uV``, ``a.u.``);
``channel_names`` is a list of ``C`` names or empty. Files written before format version 2 have
neither: they load with ``emg_unit="a.u."`` (unknown) and no channel names.

Write one with :func:`write_byod` from :class:`Recording` objects (optionally cutting each into
time blocks that act as sessions, :func:`emgcore.data.sessions.split_sessions`); read it back
lazily (arrays are sliced on demand) with :func:`load_byod`. The manifest lets splits be planned
without opening a file; loading checks that each file agrees with it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from emgcore.data._io import (
    file_fingerprint,
    h5_get,
    open_h5,
    read_csv,
    read_rows,
    require_file,
    warn_skipped,
)
from emgcore.data.sessions import split_sessions
from emgcore.errors import EmgDataError, InvalidValueError, MissingFieldError, ShapeError
from emgcore.recording import ChannelLayout, LazyArray, Recording, check_emg_unit

MANIFEST = "sessions.csv"
COLUMNS = ("file", "subject", "session", "device", "fs", "n_channels", "n_samples")
FORMAT_VERSION = 2  # 2: header.emg_unit and header.channel_names (1: neither; still read)
DEFAULT_EMG_UNIT = "a.u."  # what a version-1 file, which states no unit, loads with
HEADER_KEYS = (
    "layout",
    "emg_unit",
    "channel_names",
    "joint_names",
    "kinematics_unit",
    "label_names",
    "meta",
)


def write_byod(
    root: str | Path,
    recordings: Sequence[Recording],
    *,
    n_blocks: int | None = None,
    block_s: float | None = None,
    **split: object,
) -> Path:
    """Write ``recordings`` as a BYOD dataset in ``root`` (created); returns the manifest path.

    Each recording becomes one HDF5 file (``emg`` float32 in its ``emg_unit``; unit, channel
    names, layout and the rest in the JSON header). With ``n_blocks`` or ``block_s``, each
    recording is first cut into time blocks that act as sessions and every block is written as a
    recording of its own: :func:`~emgcore.data.sessions.split_sessions`, which also takes
    ``gap_s``, ``min_block_s`` and ``names`` here and raises its errors (blocks too short) before
    anything is written.
    """
    if n_blocks is not None or block_s is not None or split:
        recordings = [
            b
            for r in recordings
            for b in split_sessions(r, n_blocks, block_s=block_s, **split)  # type: ignore[arg-type]
        ]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, rec in enumerate(recordings):
        name = f"{_safe(rec.subject)}_{_safe(rec.session)}_{i:04d}.h5"
        with h5py.File(root / name, "w") as f:
            f.create_dataset("emg", data=np.asarray(rec.emg, dtype=np.float32), chunks=True)
            if rec.kinematics is not None:
                f.create_dataset("kinematics", data=np.asarray(rec.kinematics, dtype=np.float32))
            if rec.valid is not None:
                f.create_dataset("valid", data=np.asarray(rec.valid, dtype=bool))
            for k, v in rec.labels.items():
                f.create_dataset(f"labels/{k}", data=v)
            head = rec.header()
            f.attrs["header"] = json.dumps(
                {k: head[k] for k in HEADER_KEYS},
                default=str,
            )
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["fs"] = float(rec.fs)
        rows.append(
            {
                "file": name,
                "subject": rec.subject,
                "session": rec.session,
                "device": rec.device,
                "fs": rec.fs,
                "n_channels": rec.n_channels,
                "n_samples": rec.n_samples,
            }
        )
    manifest = root / MANIFEST
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(manifest, index=False)
    return manifest


def load_byod(root: str | Path) -> list[Recording]:
    """Every recording listed in ``root/sessions.csv``, lazily.

    Each file must agree with its row (fs, n_channels, n_samples), else
    :class:`InvalidValueError` naming the manifest and column; a file listed twice raises;
    HDF5 files in ``root`` that the manifest does not list are skipped and named in one
    :class:`UserWarning`.
    """
    root = require_file(root, "BYOD dataset folder")
    manifest = require_file(root / MANIFEST, "BYOD manifest")
    df = read_csv(manifest, dtype={"subject": str, "session": str, "device": str})
    for col in COLUMNS:
        if col not in df.columns:
            raise MissingFieldError("column missing", source=manifest, field=col)
    for col in ("fs", "n_channels", "n_samples"):  # numbers in every row, else name the row
        numbers = pd.to_numeric(df[col], errors="coerce")
        if (bad := numbers.isna() | (numbers <= 0)).any():
            i = int(bad.to_numpy().argmax())
            msg = f"row {i + 2}: expected a positive number, got {df[col].iloc[i]!r}"
            raise InvalidValueError(msg, source=manifest, field=col)
        df[col] = numbers
    if (blank := df["file"].isna() | (df["file"].astype(str).str.strip() == "")).any():
        i = int(blank.to_numpy().argmax())
        raise InvalidValueError(f"row {i + 2}: empty", source=manifest, field="file")
    files = df["file"].astype(str).tolist()
    if dup := sorted({f for f in files if files.count(f) > 1}):
        raise InvalidValueError(
            f"files listed more than once: {dup}", source=manifest, field="file"
        )
    unlisted = [p for p in (*root.glob("*.h5"), *root.glob("*.hdf5")) if p.name not in files]
    warn_skipped(root, unlisted, f"not listed in {MANIFEST}")
    return [_load_one(root, row, manifest) for row in df.itertuples(index=False)]


def _load_one(root: Path, row: object, manifest: Path) -> Recording:
    path = require_file(root / row.file, "BYOD recording listed in sessions.csv")  # type: ignore[attr-defined]
    with open_h5(path) as f:
        emg = h5_get(f, "emg", path)
        if emg.ndim != 2:
            raise ShapeError(f"must be (T, C), got {emg.shape}", source=path, field="emg")
        if emg.dtype.kind not in "fiu":
            msg = f"must hold numbers, got dtype {emg.dtype}"
            raise InvalidValueError(msg, source=path, field="emg")
        shape = emg.shape
        if "header" not in f.attrs:
            raise MissingFieldError("attribute missing", source=path, field="attrs.header")
        try:
            head = json.loads(f.attrs["header"])
        except json.JSONDecodeError as e:
            raise InvalidValueError(f"not JSON: {e}", source=path, field="attrs.header") from e
        if not isinstance(head, dict):
            msg = f"must be a JSON object, got {type(head).__name__}"
            raise InvalidValueError(msg, source=path, field="attrs.header")
        if "labels" in f and not isinstance(f["labels"], h5py.Group):
            msg = "must be a group of (T,) label datasets"
            raise InvalidValueError(msg, source=path, field="labels")
        kin_shape = f["kinematics"].shape if "kinematics" in f else None
        has_valid = "valid" in f
        file_fs = float(f.attrs["fs"]) if "fs" in f.attrs else None
        labels = {k: f[f"labels/{k}"][:] for k in f["labels"]} if "labels" in f else {}
    for col, got in (("fs", file_fs), ("n_channels", shape[1]), ("n_samples", shape[0])):
        if got is not None and float(getattr(row, col)) != got:
            raise InvalidValueError(
                f"sessions.csv says {getattr(row, col)}, {path.name} has {got}",
                source=manifest,
                field=col,
            )
    src = str(path)

    def reader(name: str):
        return lambda a, b: read_rows(path, name, None, a, b)

    try:
        layout = ChannelLayout.from_dict(head["layout"])
    except KeyError as e:
        raise MissingFieldError("layout entry missing", source=path, field=f"header.{e}") from e
    except EmgDataError as e:  # positions, grid or kind: say which file, as the header's field
        raise type(e)(e.message, source=path, field=f"header.{e.field}") from e
    except (TypeError, AttributeError, ValueError) as e:
        raise InvalidValueError(f"not a layout: {e}", source=path, field="header.layout") from e
    names = head.get("joint_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        msg = f"must be a list of names, got {names!r}"
        raise InvalidValueError(msg, source=path, field="header.joint_names")
    unit = check_emg_unit(
        head.get("emg_unit", DEFAULT_EMG_UNIT), source=path, field="header.emg_unit"
    )
    channels = head.get("channel_names", [])
    if not isinstance(channels, list) or not all(isinstance(n, str) for n in channels):
        msg = f"must be a list of names, got {channels!r}"
        raise InvalidValueError(msg, source=path, field="header.channel_names")
    if channels and len(channels) != shape[1]:
        msg = f"{len(channels)} names but emg has {shape[1]} channels"
        raise ShapeError(msg, source=path, field="header.channel_names")
    if layout.n_channels != shape[1]:
        msg = f"{layout.n_channels} electrodes but emg has {shape[1]} channels"
        raise ShapeError(msg, source=path, field="header.layout")
    return Recording(
        emg=LazyArray(reader("emg"), shape, np.float32, source=src, field="emg"),
        fs=float(row.fs),  # type: ignore[attr-defined]
        layout=layout,
        subject=str(row.subject),  # type: ignore[attr-defined]
        session=str(row.session),  # type: ignore[attr-defined]
        device=str(row.device),  # type: ignore[attr-defined]
        source=src,
        kinematics=None
        if kin_shape is None
        else LazyArray(reader("kinematics"), kin_shape, np.float32, source=src, field="kinematics"),
        joint_names=tuple(head.get("joint_names", ())),
        kinematics_unit=head.get("kinematics_unit", ""),
        labels=labels,
        label_names={k: tuple(v) for k, v in head.get("label_names", {}).items()},
        valid=LazyArray(reader("valid"), (shape[0],), bool, source=src, field="valid")
        if has_valid
        else None,
        meta=head.get("meta", {}),
        fingerprint=file_fingerprint(path, "byod", FORMAT_VERSION, float(row.fs)),  # type: ignore[attr-defined]
        emg_unit=unit,
        channel_names=tuple(channels),
    )


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in str(s))
