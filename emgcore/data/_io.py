"""Small helpers the loaders share: file checks, fingerprints, HDF5 and CSV opening, the one
MATLAB reader (v5 and v7.3), timestamp checks, and the warning naming what a folder walk skipped.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.io

from emgcore.errors import FormatError, InvalidValueError, MissingFieldError, MissingFileError
from emgcore.recording import digest


def require_file(path: str | Path, what: str = "file") -> Path:
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"{what} does not exist", source=p)
    return p


def read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    """A CSV table (pandas); an empty or malformed file raises :class:`FormatError` naming it."""
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise FormatError(f"cannot read as CSV: {e}".strip(), source=path) from e
    except OSError as e:  # a folder, unreadable
        raise FormatError(f"cannot read: {e.strerror}", source=path) from e


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


# A step between timestamps longer than this many sample periods is a gap (samples lost): the
# file's clock jitters by far less than half a period, and one lost sample already shows as 2.
GAP_PERIODS = 1.5


def time_segments(t: np.ndarray, fs: float, path: Path, field: str) -> np.ndarray:
    """Check a recording's timestamps ``t (T,)`` (seconds) against its stated rate ``fs`` (Hz).

    Returns the first sample of every continuous segment, ``(K,)`` int64 starting with 0: a step
    longer than :data:`GAP_PERIODS` periods starts a new one. Raises
    :class:`InvalidValueError` naming ``path`` and ``field`` for NaN/Inf times, time going
    back, duplicated timestamps, or a median rate more than 1% from ``fs``.
    """
    if len(t) and not np.all(np.isfinite(t)):
        raise InvalidValueError(
            f"NaN or Inf at sample {np.flatnonzero(~np.isfinite(t))[0]}", source=path, field=field
        )
    if len(t) < 2:
        return np.zeros(1, np.int64)
    step = np.diff(t)
    if (bad := np.flatnonzero(step < 0)).size:
        raise InvalidValueError(
            f"time goes back at sample {bad[0] + 1} ({float(t[bad[0] + 1])!r} after "
            f"{float(t[bad[0]])!r})",
            source=path,
            field=field,
        )
    if (bad := np.flatnonzero(step == 0)).size:
        raise InvalidValueError(
            f"{bad.size} duplicated timestamp(s), first at sample {bad[0] + 1} (the time of "
            f"sample {bad[0]})",
            source=path,
            field=field,
        )
    measured = 1.0 / float(np.median(step))
    if abs(measured - fs) > 0.01 * fs:
        raise InvalidValueError(
            f"timestamps imply {measured:.1f} Hz but the file states sample_rate={fs:g} Hz "
            "(mismatched sampling rates)",
            source=path,
            field=field,
        )
    gaps = np.flatnonzero(step > GAP_PERIODS / fs)
    return np.r_[0, gaps + 1].astype(np.int64)


# -- MATLAB .mat files: v5 (scipy) and v7.3 (HDF5) -------------------------------------------------
# Both come back in one shape convention, so a loader never asks which version it was given:
# numeric and logical arrays as ndarrays in MATLAB's own shape (at least 2-D: a (N, 1) label
# column stays (N, 1)); char arrays as ``str`` (several rows: a list of ``str``); cells as lists
# in MATLAB's column-major element order; scalar structs as dicts of their fields.
MAT_HDF5_SKIP = ("#refs#", "#subsystem#")


def read_mat(path: Path, variable_names: list[str] | None = None) -> dict[str, Any]:
    """The variables of a MATLAB file (all, or those of ``variable_names`` present).

    v5 / v7 files are read with :func:`scipy.io.loadmat`, v7.3 files (HDF5 inside, MATLAB's
    ``-v7.3``) with h5py, undoing what v7.3 does to arrays: stored transposed, chars as uint16
    codes, cells as object references into ``#refs#``. Raises :class:`FormatError` naming the
    file for anything unreadable (truncated, not a MATLAB file, sparse or object variables).
    """
    if h5py.is_hdf5(path):
        with open_h5(path) as f:
            names = [k for k in f if k not in MAT_HDF5_SKIP]
            names = names if variable_names is None else [k for k in variable_names if k in f]
            try:
                return {k: _h5_mat(f[k], f, path, k) for k in names}
            except FormatError:
                raise
            except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
                raise FormatError(f"cannot read as a MATLAB v7.3 file: {e}", source=path) from e
    try:
        raw = scipy.io.loadmat(
            path, variable_names=variable_names, struct_as_record=False, chars_as_strings=True
        )
    except Exception as e:  # scipy raises ValueError/TypeError/OSError for corrupt files
        raise FormatError(f"cannot read as a MATLAB v5 file: {e}", source=path) from e
    return {k: _v5_mat(v) for k, v in raw.items() if not k.startswith("__")}


def _v5_mat(v: Any) -> Any:
    if isinstance(v, scipy.io.matlab.mat_struct):
        return {k: _v5_mat(getattr(v, k)) for k in v._fieldnames}
    if isinstance(v, np.ndarray) and v.dtype.kind == "U":  # char rows (chars_as_strings)
        rows = [str(s) for s in v.ravel()]
        return rows[0] if len(rows) == 1 else rows
    if isinstance(v, np.ndarray) and v.dtype == object:
        items = [_v5_mat(x) for x in v.ravel(order="F")]
        return items[0] if v.size == 1 and isinstance(items[0], dict) else items  # struct: dict
    return v


def _h5_mat(node: Any, f: h5py.File, path: Path, name: str) -> Any:
    cls = node.attrs.get("MATLAB_class", b"")
    cls = cls.decode() if isinstance(cls, bytes) else str(cls)
    if isinstance(node, h5py.Group):
        if cls != "struct" or "MATLAB_sparse" in node.attrs:
            raise FormatError(
                f"MATLAB class {cls or 'unknown'} (sparse, object or struct array) is not "
                "supported",
                source=path,
                field=name,
            )
        return {k: _h5_mat(node[k], f, path, f"{name}.{k}") for k in node}
    if node.attrs.get("MATLAB_empty", 0):  # MATLAB stores an empty value as its dimensions
        return "" if cls == "char" else [] if cls == "cell" else np.zeros((0, 0))
    data = node[()]
    if cls == "cell":
        return [_h5_mat(f[ref], f, path, name) for ref in np.ravel(data)]  # column-major
    arr = np.asarray(data).T  # HDF5 holds MATLAB's column-major array as its transpose
    if arr.ndim < 2:
        arr = arr.reshape(1, -1)
    if cls == "char":
        rows = ["".join(map(chr, row)) for row in arr.astype(np.uint32)]
        return rows[0] if len(rows) == 1 else rows
    if cls == "logical":
        return arr.astype(bool)
    if arr.dtype.names and {"real", "imag"} <= set(arr.dtype.names):
        return arr["real"] + 1j * arr["imag"]
    return arr


def warn_skipped(root: Path, skipped: list[Path], expected: str) -> None:
    """One :class:`UserWarning` naming every path a folder-walking loader left out (none: no
    warning), so extra files are never read as data nor dropped without a word."""
    if skipped:
        names = ", ".join(str(p.relative_to(root)) for p in sorted(skipped))
        warnings.warn(f"{root}: skipped {len(skipped)} path(s), {expected}: {names}", stacklevel=3)
