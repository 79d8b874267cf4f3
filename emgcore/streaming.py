"""Windows too many to hold: read out of the preprocessing cache on demand.

A :class:`WindowArray` stands where a ``(N, L, K)`` tensor of windows stood (or ``(N, K)``: one
sample per window, e.g. the pose at a window's last sample). It holds only an index, the
recording and first sample of every window (12 bytes a window), and the recordings' arrays:
cache files (:class:`~emgcore.windows.NpyFile`, from :class:`~emgcore.windows.RecordingCache`)
or in-memory arrays.

* ``x[idx]`` (an index tensor or array, a boolean mask, a slice, an int) gathers those windows
  into a tensor on ``x.device``: each window copied out of its recording, then the window-level
  steps (instance normalisation) and a per-recording affine (a pose scale) applied;
* :func:`take` ``(x, idx)`` is a lazy subset, a WindowArray again (splits, ``select``);
* ``len(x)``, ``x.shape``, ``x.device``, ``x.to(device)`` behave as a tensor's do, so training
  and evaluation code that indexes batches (``x[shard]``,
  :func:`emgcore.training.batched`) runs unchanged on either.

Memory: a batch is read with ``pread`` from the OS page cache straight into the batch's buffer.
The page cache holds one copy of what was read, shared by every process of a node; no process
holds a mapping or a file descriptor of its own, so a worker's memory is its batches whatever the
set's size, and a set of any number of recordings opens no files between reads.

Read-ahead: :func:`emgcore.training.fit` tells each streamed array which windows the epoch's
steps will ask for (:meth:`WindowArray.plan`: this worker's shard of every global batch, in
order). With ``workers > 0`` a torch ``DataLoader`` with that many processes gathers them ahead
of the step (into pinned memory when the array's device is CUDA, copied without blocking); a
request that is not the next planned one is simply read in place, so the plan can only make
reads earlier, never different.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from emgcore.preprocessing import Pipeline
from emgcore.windows import NpyFile

STORAGE = ("auto", "memory", "stream")


@dataclass
class Reader:
    """One array's read-ahead: the planned index sets and the loader gathering them."""

    plan: deque = field(default_factory=deque)
    ahead: Iterator[Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:  # the plan and its loader stay behind
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()


@dataclass(frozen=True, eq=False)
class WindowArray:
    """Windows ``(N, L, K)`` (``length`` samples) or samples ``(N, K)`` (``length=None``) of
    ``sources`` (per recording ``(T, K_r)`` arrays, or ``(T,)``), read on demand.

    ``rec (N,)``/``start (N,)``: each window's recording (index into ``sources``) and first
    sample. ``columns``: per recording, the columns to keep (None: all). ``steps``: window-level
    preprocessing applied to each gathered ``(n, L, K)`` batch. ``mean``/``denom`` ``(R, K)``:
    a per-recording affine ``(x - mean) / denom`` applied after the steps (None: none).
    ``workers``: loader processes for read-ahead (0: read in the step), per array.
    """

    sources: tuple[Any, ...]
    rec: np.ndarray
    start: np.ndarray
    length: int | None
    dtype: torch.dtype = torch.float32
    columns: tuple[np.ndarray | None, ...] | None = None
    steps: Pipeline = field(default_factory=Pipeline)
    mean: Tensor | None = None
    denom: Tensor | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    workers: int = 0
    reader: Reader = field(default_factory=Reader)

    # -- what a tensor has ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rec)

    @property
    def width(self) -> int:
        """``K``: the columns of one sample (0 for a 1-D source such as a validity mask)."""
        first = self.sources[0]
        if first.ndim == 1:
            return 0
        cols = self.columns[0] if self.columns else None
        return first.shape[1] if cols is None else len(cols)

    @property
    def shape(self) -> tuple[int, ...]:
        k = (self.width,) if self.width else ()
        return (len(self), *(() if self.length is None else (self.length,)), *k)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """What the windows would take as one in-memory tensor."""
        item = torch.empty(0, dtype=self.dtype).element_size()
        return int(np.prod(self.shape, dtype=np.int64)) * item

    def to(self, device: torch.device | str, non_blocking: bool = False) -> WindowArray:
        """The same windows, gathered onto ``device`` (they stay on disk until read)."""
        return self._derive(device=torch.device(device))

    def cpu(self) -> WindowArray:
        return self.to("cpu")

    def __getitem__(self, key: Any) -> Tensor:
        idx = _as_index(key, len(self))
        if np.ndim(key) == 0 and not isinstance(key, slice):
            return self._read(idx)[0]
        return self._read(idx)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:].cpu().numpy()
        return out if dtype is None else out.astype(dtype)

    # -- lazy subsets and read-ahead -----------------------------------------------------------
    def take(self, idx: Any) -> WindowArray:
        """The windows ``idx`` (indices, mask or slice) as a lazy subset."""
        i = _as_index(idx, len(self))
        return self._derive(rec=self.rec[i], start=self.start[i])

    def _derive(self, **changes: Any) -> WindowArray:
        """A copy with ``changes`` and a plan of its own."""
        return dataclasses.replace(self, **changes, reader=Reader())

    def materialize(self, chunk: int = 256) -> Tensor:
        """Every window as one tensor on ``self.device`` (what the in-memory path holds),
        read ``chunk`` windows at a time into it: the peak is the result and one chunk."""
        out = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        for a in range(0, len(self), chunk):
            out[a : a + chunk] = self[a : a + chunk]
        return out

    def plan(self, batches: Sequence[Tensor | np.ndarray]) -> None:
        """The index sets the next reads will ask for, in order; with ``workers`` loader
        processes they are gathered ahead (see the module docstring)."""
        r = self.reader
        r.ahead = None  # a previous epoch's loader: its workers exit when it is dropped
        r.plan = deque(np.asarray(_cpu(b), dtype=np.int64) for b in batches)
        if self.workers > 0 and r.plan:
            loader = torch.utils.data.DataLoader(
                _Planned(self._derive(device=torch.device("cpu")), list(r.plan)),
                batch_size=None,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                prefetch_factor=2,
            )
            r.ahead = iter(loader)

    def _read(self, idx: np.ndarray) -> Tensor:
        r = self.reader
        if r.plan and len(r.plan[0]) == len(idx) and np.array_equal(r.plan[0], idx):
            r.plan.popleft()
            if r.ahead is not None:
                t = next(r.ahead)
                if not r.plan:  # the epoch's last batch: its loader processes exit now
                    r.ahead = None
                return t.to(self.device, non_blocking=True)
        elif r.plan:  # asked for something else: the plan no longer describes the reads
            r.plan.clear()
            r.ahead = None
        return self.gather(idx).to(self.device)

    def gather(self, idx: np.ndarray) -> Tensor:
        """The windows ``idx`` (int64 indices) as a CPU tensor: read from their recordings
        (a cache file is opened once per batch and read with ``pread`` into the batch's
        buffer), window steps and affine applied."""
        recs, starts = self.rec[idx], self.start[idx]
        span = 1 if self.length is None else self.length
        np_dtype = torch.empty(0, dtype=self.dtype).numpy().dtype
        k = self.width
        out = np.empty((len(idx), span, *((k,) if k else ())), np_dtype)
        order = np.argsort(recs, kind="stable")  # each recording's windows together
        bounds = np.flatnonzero(np.diff(recs[order])) + 1
        for run in np.split(order, bounds) if len(order) else ():
            r = int(recs[run[0]])
            cols = self.columns[r] if self.columns else None
            self._read_recording(self.sources[r], cols, run, starts, out)
        if self.steps.steps:
            out = self.steps.apply_windows(out).astype(np_dtype, copy=False)
        t = torch.from_numpy(out)
        if self.mean is not None and self.denom is not None:
            ri = torch.from_numpy(recs.astype(np.int64))
            t = (t - self.mean[ri][:, None]) / self.denom[ri][:, None]
        return t[:, 0] if self.length is None else t

    def _read_recording(
        self, source: Any, cols: np.ndarray | None, run: np.ndarray, starts: np.ndarray, out: Any
    ) -> None:
        """Windows ``run`` (positions in the batch) of one recording into ``out``."""
        span = out.shape[1]
        if not isinstance(source, NpyFile):  # an in-memory array
            for j in run.tolist():
                s = int(starts[j])
                piece = source[s : s + span]
                out[j] = piece if cols is None else piece[:, cols]
            return
        direct = cols is None and source.dtype == out.dtype
        buf = None if direct else np.empty((span, *source.shape[1:]), source.dtype)
        fd = os.open(source.path, os.O_RDONLY)
        # no read-ahead: a window is read whole, and the next one wanted is anywhere in the set,
        # so the pages the kernel would read after it are IO spent for nothing (many times a
        # window on network storage with a large read-ahead)
        if hasattr(os, "posix_fadvise"):  # Linux; macOS has none
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        try:
            for j in run.tolist():
                if direct:
                    source.read_into(fd, out[j], int(starts[j]))
                else:
                    source.read_into(fd, buf, int(starts[j]))
                    out[j] = buf if cols is None else buf[:, cols]
        finally:
            os.close(fd)


class _Planned(torch.utils.data.Dataset):
    """The planned batches of one epoch as a map-style dataset: item ``k`` is batch ``k``."""

    def __init__(self, array: WindowArray, batches: list[np.ndarray]):
        self.array, self.batches = array, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> Tensor:
        return self.array.gather(self.batches[k])


def _cpu(t: Tensor | np.ndarray) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)


def _as_index(key: Any, n: int) -> np.ndarray:
    """``key`` (an int, a slice, or a 1-D integer or boolean tensor/array) as int64 indices
    into ``n`` windows. Keys that index more than the windows' axis (``x[i, j]``, ``x[:, 0]``,
    ``x[None]``) and non-integer keys raise IndexError: read the windows, then index them."""
    if isinstance(key, slice):
        return np.arange(*key.indices(n), dtype=np.int64)
    if isinstance(key, tuple) or key is None or key is Ellipsis:
        raise IndexError("windows index along their first axis only: x[idx], then the tensor")
    a = _cpu(key) if isinstance(key, Tensor) else np.asarray(key)
    if a.dtype == bool:
        if a.shape != (n,):
            raise IndexError(f"a mask of shape {a.shape} for {n} windows")
        return np.flatnonzero(a)
    if a.ndim > 1 or (a.size and a.dtype.kind not in "iu"):
        raise IndexError(f"window indices must be 1-D integers, got {a.dtype} of shape {a.shape}")
    a = np.atleast_1d(a).astype(np.int64, copy=False)
    if len(a) and (a.max() >= n or a.min() < -n):
        raise IndexError(f"index {a.max() if a.max() >= n else a.min()} out of {n} windows")
    return np.where(a < 0, a + n, a)


Windows = Tensor | WindowArray


def take(x: Windows, idx: Any) -> Windows:
    """``x``'s windows ``idx`` (indices or mask): a lazy subset of a :class:`WindowArray`, the
    indexed tensor otherwise."""
    if isinstance(x, WindowArray):
        return x.take(idx)
    if isinstance(idx, slice):
        return x[idx]
    return x[torch.as_tensor(_as_index(idx, len(x)), device=x.device)]


def is_streamed(x: Any) -> bool:
    return isinstance(x, WindowArray)


def check_storage(storage: str, stream_above_gb: float, loader_workers: int) -> None:
    """The storage settings of a data config (``GestureConfig``, ``PoseDataConfig``); a bad
    one raises ValueError naming it."""
    if storage not in STORAGE:
        raise ValueError(f"storage must be one of {STORAGE}, got {storage!r}")
    if not stream_above_gb > 0:
        raise ValueError(f"stream_above_gb must be > 0, got {stream_above_gb}")
    if loader_workers < -1:
        raise ValueError(f"loader_workers must be >= 0 (or -1: auto), got {loader_workers}")


def loader_workers(requested: int, device: str | torch.device) -> int:
    """Loader processes for streamed training windows: ``requested`` when it is ``>= 0``, else
    none on a CPU (the step and the reads share its cores) and 6 with a GPU: the paper-size
    EMG-MAE's A100 step needs ~5 cores of measured reading (clusters/README.md, "Data at
    cluster scale")."""
    if requested >= 0:
        return requested
    return 6 if torch.device(device).type == "cuda" else 0


def choose_storage(nbytes: int, storage: str, stream_above_gb: float) -> tuple[str, str]:
    """``(storage, why)``: ``"memory"`` or ``"stream"`` for windows that would take ``nbytes``
    held as tensors. ``storage``: ``auto`` streams above ``stream_above_gb``; ``memory`` and
    ``stream`` force one. ``why`` is the line a trial run records."""
    if storage not in STORAGE:
        raise ValueError(f"storage must be one of {STORAGE}, got {storage!r}")
    size = f"{nbytes / 2**30:.3g} GB of windows"
    if storage != "auto":
        return storage, f"{storage} ({size}; forced)"
    chosen = "stream" if nbytes > stream_above_gb * 2**30 else "memory"
    rel = ">" if chosen == "stream" else "<="
    return chosen, f"{chosen} ({size} {rel} stream_above_gb {stream_above_gb:g})"


def peak_rss() -> int:
    """This process's peak resident memory in bytes (``VmHWM``: its own address space's).

    Not ``getrusage``'s ``ru_maxrss``: Linux carries that over ``fork`` and ``exec`` from the
    parent, so a worker started by a process that once held 2 GB reports 2 GB however little it
    used itself (what failed the memory-limit test in CI). Falls back to ``ru_maxrss`` where
    there is no ``/proc`` (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
