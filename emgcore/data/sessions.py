"""Sessions cut from one long recording: :func:`split_sessions`.

Labs often record one file per task or per subject, while the protocols (cross-session splits,
session k-fold, calibration curves) need several sessions per subject. Cutting a recording into
consecutive time blocks, each a :class:`~emgcore.recording.Recording` of its own with its own
``session``, gives them that. Blocks are not independent days (electrodes were not re-placed), so
a cross-session score on blocks measures drift within one sitting, and results should say so;
the cut is kept in every block's ``meta`` for exactly that reason.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence

import numpy as np

from emgcore.errors import InvalidValueError, ShapeError
from emgcore.recording import LazyArray, Recording, digest

# every block's meta gets these keys (sample indices are rows of the original source recording)
BLOCK_META = (
    "block",  # index of this block, 0-based, in time order
    "n_blocks",  # how many blocks the recording was cut into
    "block_start_sample",  # first row, in the source recording
    "block_end_sample",  # one past the last row, in the source recording
    "block_source_session",  # the session the block was cut from
    "block_source_fingerprint",  # that recording's fingerprint
)


def split_sessions(
    rec: Recording,
    n_blocks: int | None = None,
    *,
    block_s: float | None = None,
    gap_s: float = 0.0,
    min_block_s: float = 1.0,
    names: Sequence[str] | None = None,
) -> list[Recording]:
    """Cut ``rec`` into consecutive time blocks that act as sessions.

    Give exactly one of ``n_blocks`` (that many blocks covering the whole recording, lengths
    differing by at most one sample) or ``block_s`` (blocks of ``round(block_s * fs)`` samples
    from the start; a tail shorter than one block is dropped and named in a
    :class:`UserWarning`). ``gap_s`` seconds are left out between neighbouring blocks (so that no
    filter edge or window near a cut is shared by two sessions); with ``n_blocks`` the gaps come
    out of the blocks.

    Returns ``len == n_blocks`` recordings with ``emg (L_k, C)`` and every per-sample array
    (kinematics, labels, valid) cut the same way; subject, device, source, layout, unit and
    channel names are kept; ``session`` is ``names[k]`` or ``f"{rec.session}-b{k}"``; ``meta``
    is ``rec.meta`` plus :data:`BLOCK_META` (sample indices count rows of the original
    recording, also when ``rec`` is itself a block); the fingerprint is derived from ``rec``'s
    and the cut. Lazy arrays stay lazy (a block reads only its rows).

    Raises :class:`InvalidValueError` (field ``n_blocks`` / ``block_s`` / ``gap_s`` /
    ``names``) for a missing, doubled or non-positive size, negative gap or names of the wrong
    number or repeated; :class:`ShapeError` (field ``emg``, naming ``rec.source``) when a block
    would be shorter than ``min_block_s`` seconds or the recording is shorter than one block.
    """
    src, fs, t = rec.source, rec.fs, rec.n_samples
    if (n_blocks is None) == (block_s is None):
        raise InvalidValueError(
            f"give exactly one of n_blocks or block_s (got n_blocks={n_blocks!r}, "
            f"block_s={block_s!r})",
            source=src,
            field="n_blocks",
        )
    if not (np.isfinite(gap_s) and gap_s >= 0):
        raise InvalidValueError(f"must be >= 0 seconds, got {gap_s!r}", source=src, field="gap_s")
    gap = round(gap_s * fs)
    min_len = max(1, round(min_block_s * fs))
    dur = f"{t} samples ({t / fs:.3g} s at {fs:g} Hz)"
    tail = 0
    if n_blocks is not None:
        whole = isinstance(n_blocks, (int, np.integer)) and not isinstance(n_blocks, bool)
        if not whole or n_blocks < 1:
            raise InvalidValueError(
                f"must be a whole number >= 1, got {n_blocks!r}", source=src, field="n_blocks"
            )
        n = int(n_blocks)
        edges = np.round(np.linspace(0, t + gap, n + 1)).astype(np.int64)
        bounds = [(int(a), int(b) - gap) for a, b in itertools.pairwise(edges)]
        bounds[-1] = (bounds[-1][0], t)
        shortest = max(0, min(b - a for a, b in bounds))
        if shortest < min_len:
            raise ShapeError(
                f"{dur} cut into {n} blocks"
                + (f" with {gap_s:g} s gaps" if gap else "")
                + f" gives blocks of {shortest} samples ({shortest / fs:.3g} s), shorter than "
                f"min_block_s={min_block_s:g} s: use fewer blocks",
                source=src,
                field="emg",
            )
    else:
        if not (isinstance(block_s, (int, float)) and np.isfinite(block_s) and block_s > 0):
            raise InvalidValueError(
                f"must be > 0 seconds, got {block_s!r}", source=src, field="block_s"
            )
        size = round(block_s * fs)
        if size < min_len:
            raise ShapeError(
                f"block_s={block_s:g} s is {size} samples at {fs:g} Hz, shorter than "
                f"min_block_s={min_block_s:g} s",
                source=src,
                field="emg",
            )
        n = (t + gap) // (size + gap)
        if n < 1:
            raise ShapeError(
                f"{dur} is shorter than one block of block_s={block_s:g} s", source=src, field="emg"
            )
        bounds = [(k * (size + gap), k * (size + gap) + size) for k in range(n)]
        tail = t - bounds[-1][1]
        if tail > gap:
            warnings.warn(
                f"{src}: split_sessions dropped the last {tail} samples ({tail / fs:.3g} s) of "
                f"{rec.subject}/{rec.session}: shorter than one block of {block_s:g} s",
                stacklevel=2,
            )
    if names is None:
        names = [f"{rec.session}-b{k}" for k in range(n)]
    else:
        names = [str(x) for x in names]
        if len(names) != n or len(set(names)) != n or not all(x.strip() for x in names):
            raise InvalidValueError(
                f"need {n} different non-empty session names, got {names!r}",
                source=src,
                field="names",
            )
    offset = int(rec.meta.get("block_start_sample", 0))  # a block of a block: count from the source
    return [_block(rec, a, b, names[k], k, n, offset) for k, (a, b) in enumerate(bounds)]


def _block(rec: Recording, a: int, b: int, session: str, k: int, n: int, offset: int) -> Recording:
    meta = dict(rec.meta)
    source_session = meta.get("block_source_session", rec.session)
    source_fp = meta.get("block_source_fingerprint", rec.fingerprint)
    meta.update(
        {
            "block": k,
            "n_blocks": n,
            "block_start_sample": offset + a,
            "block_end_sample": offset + b,
            "block_source_session": source_session,
            "block_source_fingerprint": source_fp,
        }
    )
    return rec.replace(
        emg=_rows(rec.emg, a, b),
        kinematics=None if rec.kinematics is None else _rows(rec.kinematics, a, b),
        valid=None if rec.valid is None else _rows(rec.valid, a, b),
        labels={name: lab[a:b] for name, lab in rec.labels.items()},
        session=session,
        meta=meta,
        fingerprint=digest(rec.fingerprint, "block", a, b, session),
    )


def _rows(x: np.ndarray | LazyArray, a: int, b: int) -> np.ndarray | LazyArray:
    if not isinstance(x, LazyArray):
        return x[a:b]
    return LazyArray(
        lambda i, j: x.read(a + i, a + j),
        (b - a, *x.shape[1:]),
        x.dtype,
        source=x.source,
        field=x.field,
        check_finite=False,  # the parent checks what it reads
    )
