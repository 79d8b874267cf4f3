"""Windows as torch Datasets, served from an on-disk cache of memory-mapped arrays.

:class:`RecordingCache` runs a pipeline's recording-level steps once per (source fingerprint,
steps) and stores the result as ``.npy`` files; a second run memory-maps them and does no
preprocessing. :class:`WindowDataset` slices fixed-length windows out of cached recordings.

Memory: pages of a memory map that a process has read count towards its resident set until they
are unmapped or dropped. The dataset tells the kernel to drop them (``MADV_DONTNEED``; they stay
in the page cache, so re-reading is cheap) after every ``resident_mb`` served, which bounds the
resident memory of a pass over a dataset much larger than RAM.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from emgcore.errors import FormatError, MissingFieldError
from emgcore.preprocessing import Pipeline
from emgcore.recording import ChannelLayout, Recording, digest

CACHE_ENV = "EMGCORE_CACHE"
CACHE_FORMAT = 2  # 2: headers carry emg_unit and channel_names


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, ".emgcore_cache"))


def npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, offset of the data)`` of a whole C-ordered ``.npy`` file.

    Raises :class:`~emgcore.errors.FormatError` naming the file when it is not a whole ``.npy``
    (a damaged header, or fewer bytes than its header's shape and dtype need: a truncated copy)."""
    with open(path, "rb") as f:
        try:
            major, _ = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if major == 1
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
        except (ValueError, EOFError, OSError) as e:
            raise _damaged(path, f"not a readable .npy file ({e})") from None
        offset = f.tell()
        size = os.fstat(f.fileno()).st_size
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if fortran:
        raise _damaged(path, "a Fortran-ordered array, which the cache never writes")
    if size < need:
        raise _damaged(path, f"truncated: {size} bytes, its header {shape} {dtype} needs {need}")
    return tuple(shape), dtype, offset


@dataclass(frozen=True)
class NpyFile:
    """A cached ``.npy`` array read row ranges at a time with ``pread``: it holds no file
    descriptor and no mapping between reads, so a data set of any number of recordings costs
    no open files, and what it reads is copied from the OS page cache (one copy per node,
    shared by every process reading the file) straight into the caller's buffer.

    Pickles as its path and layout (a few hundred bytes). Raises
    :class:`~emgcore.errors.FormatError` naming the file when it is damaged (on construction:
    :func:`npy_layout`; on a read: cut short since)."""

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int

    @classmethod
    def open(cls, path: Path) -> NpyFile:
        return cls(Path(path), *npy_layout(path))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def read_into(self, fd: int, out: np.ndarray, first: int) -> None:
        """Rows ``first : first + len(out)`` into the C-contiguous ``out`` (this file's dtype
        and row shape), from the open descriptor ``fd`` of :attr:`path`."""
        want = len(out) * self.row_bytes
        got = os.preadv(fd, [memoryview(out).cast("B")], self.offset + first * self.row_bytes)
        if got != want:
            raise _damaged(self.path, f"read {got} bytes of rows {first}+{len(out)}, not {want}")

    def __getitem__(self, key: slice) -> np.ndarray:
        """Rows ``a:b`` (a slice with step 1) as a new array."""
        a, b, step = key.indices(len(self))
        if step != 1:
            raise IndexError("NpyFile reads contiguous rows only")
        out = np.empty((max(0, b - a), *self.shape[1:]), self.dtype)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            self.read_into(fd, out, a)
        finally:
            os.close(fd)
        return out


class MappedArray:
    """A read-only ``.npy`` file mapped into memory, whose resident pages can be dropped
    (:class:`CachedRecording`'s arrays; :class:`WindowDataset` reads through them). Raises
    :class:`~emgcore.errors.FormatError` naming the file when it is damaged (:func:`npy_layout`).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        shape, dtype, offset = npy_layout(self.path)
        with open(path, "rb") as f:
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        # Windows are read in shuffled order: without this the kernel maps ~1 MB of read-around
        # per fault, and a pass over a large dataset balloons the resident set (measured: 6x).
        self._mmap.madvise(mmap.MADV_RANDOM)
        self.array = np.ndarray(shape, dtype, buffer=self._mmap, offset=offset)
        self.offset = offset

    def drop_resident(self) -> None:
        self._mmap.madvise(mmap.MADV_DONTNEED)


@dataclass
class CachedRecording:
    """A preprocessed recording: header plus memory-mapped arrays (same shapes as Recording)."""

    path: Path
    header: dict[str, Any]
    emg: np.ndarray  # (T, C) float32, memory-mapped
    kinematics: np.ndarray | None  # (T, J) float32
    labels: dict[str, np.ndarray]  # name -> (T,)
    valid: np.ndarray | None  # (T,) bool
    maps: list[MappedArray]

    @property
    def n_samples(self) -> int:
        return len(self.emg)

    def file(self, name: str) -> NpyFile | None:
        """The array ``name`` (``emg``, ``kinematics``, ``valid``, ``label.<name>``) as an
        :class:`NpyFile` for streamed reads, None when the recording has none."""
        m = next((m for m in self.maps if m.path.name == f"{name}.npy"), None)
        return None if m is None else NpyFile(m.path, m.array.shape, m.array.dtype, m.offset)

    @property
    def subject(self) -> str:
        return self.header["subject"]

    @property
    def session(self) -> str:
        return self.header["session"]

    @property
    def fs(self) -> float:
        return self.header["fs"]

    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(self.header["joint_names"])

    @property
    def source(self) -> str:
        return self.header["source"]

    def to_recording(self) -> Recording:
        """Back to an in-memory :class:`Recording` (for loaders and tests)."""
        h = self.header
        return Recording(
            emg=np.array(self.emg),
            fs=h["fs"],
            emg_unit=h["emg_unit"],
            channel_names=tuple(h["channel_names"]),
            layout=ChannelLayout.from_dict(h["layout"]),
            subject=h["subject"],
            session=h["session"],
            device=h["device"],
            source=h["source"],
            kinematics=None if self.kinematics is None else np.array(self.kinematics),
            joint_names=tuple(h["joint_names"]),
            kinematics_unit=h["kinematics_unit"],
            labels={k: np.array(v) for k, v in self.labels.items()},
            label_names={k: tuple(v) for k, v in h["label_names"].items()},
            valid=None if self.valid is None else np.array(self.valid),
            meta=h["meta"],
            fingerprint=h["fingerprint"],
        )


class RecordingCache:
    """Preprocessed recordings on disk, keyed by (source fingerprint, recording-level steps)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def key(self, rec: Recording, pipeline: Pipeline) -> str:
        return digest(CACHE_FORMAT, rec.fingerprint, pipeline.fingerprint())

    def get(self, rec: Recording, pipeline: Pipeline) -> CachedRecording:
        """The cached result of ``pipeline`` on ``rec``, computed and stored on first use."""
        path = self.root / self.key(rec, pipeline)
        if not (path / "header.json").exists():
            self._build(rec, pipeline, path)
        return self.open(path)

    def get_all(self, recs: Sequence[Recording], pipeline: Pipeline) -> list[CachedRecording]:
        return [self.get(r, pipeline) for r in recs]

    def _build(self, rec: Recording, pipeline: Pipeline, path: Path) -> None:
        out = pipeline.apply(rec)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".building-"))
        try:
            np.save(tmp / "emg.npy", np.ascontiguousarray(out.emg, dtype=np.float32))
            if out.kinematics is not None:
                np.save(
                    tmp / "kinematics.npy", np.ascontiguousarray(out.kinematics, dtype=np.float32)
                )
            for name, lab in out.labels.items():
                np.save(tmp / f"label.{name}.npy", lab)
            if out.valid is not None:
                np.save(tmp / "valid.npy", np.ascontiguousarray(out.valid, dtype=bool))
            header = out.header() | {"preprocessing": pipeline.recording_config()}
            (tmp / "header.json").write_text(json.dumps(header, default=str))
            try:
                os.rename(tmp, path)  # atomic: readers see all files or none
            except OSError:  # another process built it first: theirs is identical
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def open(path: Path) -> CachedRecording:
        """The cached recording in the folder ``path``, its arrays memory-mapped. A damaged file
        (cut short, not JSON / ``.npy``) raises :class:`~emgcore.errors.FormatError` naming it
        and saying to delete the folder, which the next :meth:`get` builds again."""
        try:
            header = json.loads((path / "header.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _damaged(path / "header.json", f"not readable JSON ({e})") from None
        maps: list[MappedArray] = []

        def load(name: str) -> np.ndarray | None:
            p = path / name
            if not p.exists():
                return None
            m = MappedArray(p)
            maps.append(m)
            return m.array

        labels = {p.name[6:-4]: load(p.name) for p in sorted(path.glob("label.*.npy"))}
        return CachedRecording(
            path, header, load("emg.npy"), load("kinematics.npy"), labels, load("valid.npy"), maps
        )  # type: ignore[arg-type]


def _damaged(path: Path, what: str) -> FormatError:
    """A damaged file of a cached recording: what is wrong, and how to rebuild it."""
    return FormatError(
        f"{what}; delete {path.parent} and the next run builds it again",
        source=path,
        field="preprocessing cache",
    )


Target = Literal["last", "sequence", "none"]


class WindowDataset(Dataset):
    """Fixed-length windows over cached recordings.

    Item ``i`` is a dict: ``emg`` (L, C) float32; ``target`` kinematics at the window's last
    sample (J,) or the whole window (L, J) per ``target``; ``label`` (the named per-sample label
    at the last sample) if ``label`` is set; ``recording`` and ``start`` for provenance.
    Windows whose last-sample target is invalid (IK failure) are dropped when ``target="last"``.
    A recording without the kinematics or label asked for raises
    :class:`~emgcore.errors.MissingFieldError` naming it.
    """

    def __init__(
        self,
        recordings: Sequence[CachedRecording],
        length: int,
        stride: int,
        *,
        target: Target = "last",
        label: str | None = None,
        pipeline: Pipeline | None = None,
        drop_invalid: bool = True,
        resident_mb: float = 128.0,
    ):
        if length <= 0 or stride <= 0:
            raise ValueError(f"window length and stride must be positive, got {length}, {stride}")
        self.recordings = list(recordings)
        self.length, self.stride, self.target, self.label = length, stride, target, label
        self.window_pipeline = Pipeline(pipeline.window_steps) if pipeline else Pipeline()
        for r in self.recordings:
            if target != "none" and r.kinematics is None:
                raise MissingFieldError(
                    f"target={target!r} needs kinematics; this recording has none",
                    source=r.source,
                    field="kinematics",
                )
            if label is not None and label not in r.labels:
                raise MissingFieldError(
                    f"no label {label!r} (has {sorted(r.labels)})",
                    source=r.source,
                    field=f"labels.{label}",
                )
        rec_ids, starts = [], []
        for i, r in enumerate(self.recordings):
            s = np.arange(0, r.n_samples - length + 1, stride, dtype=np.int64)
            if drop_invalid and target == "last" and r.valid is not None:
                s = s[np.asarray(r.valid[s + length - 1])]
            rec_ids.append(np.full(len(s), i, dtype=np.int32))
            starts.append(s)
        self.rec_ids = np.concatenate(rec_ids) if rec_ids else np.zeros(0, np.int32)
        self.starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self._budget = int(resident_mb * 2**20)
        self._served = 0
        # What one item may map in: the page cache hands out large folios (measured: ~800 KB of
        # resident file pages per 128 KB window), so count up to 2 MiB per array an item touches.
        channels = max((r.emg.shape[1] for r in self.recordings), default=1)
        self._window_bytes = length * 4 * channels + 3 * 2**21

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.recordings[self.rec_ids[i]]
        a = int(self.starts[i])
        b = a + self.length
        emg = np.array(r.emg[a:b])  # copy out of the map
        if self.window_pipeline.steps:
            emg = self.window_pipeline.apply_windows(emg).astype(np.float32, copy=False)
        item: dict[str, Any] = {
            "emg": torch.from_numpy(emg),
            "recording": int(self.rec_ids[i]),
            "start": a,
        }
        if self.target == "last":
            item["target"] = torch.from_numpy(np.array(r.kinematics[b - 1]))
        elif self.target == "sequence":
            item["target"] = torch.from_numpy(np.array(r.kinematics[a:b]))
            if r.valid is not None:
                item["valid"] = torch.from_numpy(np.array(r.valid[a:b]))
        if self.label is not None:
            item["label"] = int(r.labels[self.label][b - 1])
        self._served += self._window_bytes
        if self._served > self._budget:
            self.drop_resident()
        return item

    def drop_resident(self) -> None:
        """Release the pages this process has mapped in (they stay in the OS page cache)."""
        self._served = 0
        for r in self.recordings:
            for m in r.maps:
                m.drop_resident()
