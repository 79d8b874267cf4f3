"""Small helpers the loaders share: file checks, fingerprints, HDF5 opening."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from emgcore.errors import FormatError, InvalidValueError, MissingFieldError, MissingFileError
from emgcore.recording import digest


def require_file(path: str | Path, what: str = "file") -> Path:
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"{what} does not exist", source=p)
    return p


def file_fingerprint(path: Path, *params: Any) -> str:
    """Identity of a file's content without reading it: resolved path, size, mtime, params."""
    st = path.stat()
    return digest("file", str(path.resolve()), st.st_size, st.st_mtime_ns, *params)


@contextlib.contextmanager
def open_h5(path: Path) -> Iterator[h5py.File]:
    """Open an HDF5 file read-only; unreadable or truncated files raise :class:`FormatError`."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FormatError(f"cannot open as HDF5 (truncated or not HDF5?): {e}", source=path) from e
    try:
        yield f
    finally:
        f.close()


def h5_get(f: h5py.File | h5py.Group, key: str, path: Path) -> Any:
    if key not in f:
        raise MissingFieldError(f"missing (found: {sorted(f.keys())})", source=path, field=key)
    return f[key]


def read_rows(path: Path, dataset: str, field: str | None, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a dataset (or of one field of a compound dataset)."""
    with open_h5(path) as f:
        ds = f[dataset]
        try:
            return ds.fields(field)[start:stop] if field else ds[start:stop]
        except (OSError, RuntimeError) as e:  # a truncated file fails on read, not on open
            name = f"{dataset}.{field}" if field else dataset
            raise FormatError(
                f"cannot read rows {start}:{stop}: {e}", source=path, field=name
            ) from e


def check_time(t: np.ndarray, fs: float, path: Path, field: str) -> None:
    """Timestamps must increase strictly and agree with the stated sampling rate (1%)."""
    if len(t) < 2:
        return
    check = np.diff(t)
    if not np.all(np.isfinite(t)):
        raise InvalidValueError(
            f"NaN or Inf at sample {np.flatnonzero(~np.isfinite(t))[0]}", source=path, field=field
        )
    if (bad := np.flatnonzero(check <= 0)).size:
        raise InvalidValueError(
            f"timestamps are not increasing at sample {bad[0] + 1}", source=path, field=field
        )
    measured = 1.0 / float(np.median(check))
    if abs(measured - fs) > 0.01 * fs:
        raise InvalidValueError(
            f"timestamps imply {measured:.1f} Hz but the file states sample_rate={fs:g} Hz "
            "(mismatched sampling rates)",
            source=path,
            field=field,
        )
