"""Build the preprocessing cache once, across the cluster's CPUs, before a sweep's trials read it.

A trial builds any cache entry it lacks itself (``RecordingCache.get``), which is right for
small data: seconds. On a cluster-sized set the first stage's concurrent trials would each filter
the same recordings at once, one core each, while their GPUs wait. So the sweep hands the
(recording, pipeline) pairs its trials will read (``Method.cache_plan``) to :func:`warm` when the
recordings' EMG exceeds :data:`WARM_ABOVE_GB` (``EMG_WARM_CACHE_ABOVE_GB`` overrides): Ray Data
reads and filters every missing one as its own task on any node with a free CPU and writes it
into the cache folder. That only helps when every node sees the folder (shared storage,
``clusters/README.md``, "Data at cluster scale"), which :func:`shared_everywhere` checks first
by asking every node for a marker file; with node-local caches each node builds what its trials
read, on demand. An entry appears atomically (a rename), so a trial or a second sweep racing it
sees all of an entry or none.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WARM_ABOVE_GB = 1.0
WARM_ENV = "EMG_WARM_CACHE_ABOVE_GB"


def warm_threshold() -> float:
    """GB of EMG above which a sweep builds the cache with Ray Data before its trials start."""
    raw = os.environ.get(WARM_ENV)
    return WARM_ABOVE_GB if raw in (None, "") else float(raw)


def emg_bytes(pairs: Sequence[tuple[Any, Any]]) -> int:
    """The float32 EMG of the distinct recordings in ``pairs``."""
    seen = {id(r): r for r, _ in pairs}
    return sum(4 * r.emg.shape[0] * r.emg.shape[1] for r in seen.values())


def missing(pairs: Sequence[tuple[Any, Any]], root: str | Path) -> list[int]:
    """Indices of the pairs whose cache entry under ``root`` does not exist yet."""
    from emgcore.windows import RecordingCache

    cache = RecordingCache(root)
    return [
        i
        for i, (rec, pipe) in enumerate(pairs)
        if not (cache.root / cache.key(rec, pipe) / "header.json").exists()
    ]


def shared_everywhere(root: str | Path) -> bool:
    """Whether every alive node of the connected Ray cluster sees the folder ``root`` (a marker
    file written here, looked for by one zero-CPU task pinned to each node)."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder = Path(root).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".shared-{uuid.uuid4().hex}"
    marker.touch()
    try:

        @ray.remote(num_cpus=0)
        def sees(path: str) -> bool:
            return Path(path).exists()

        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        calls = [
            sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(
                str(marker)
            )
            for n in nodes
        ]
        return all(ray.get(calls, timeout=120))
    except (ray.exceptions.RayError, TimeoutError):  # a node that cannot answer: not shared
        return False
    finally:
        marker.unlink(missing_ok=True)


def warm(pairs: Sequence[tuple[Any, Any]], root: str | Path) -> dict[str, float]:
    """Build the cache entries of ``pairs`` (recording, :class:`~emgcore.preprocessing.Pipeline`)
    that ``root`` lacks, one Ray Data task per recording on the connected Ray cluster.

    Returns ``{"built": n, "cached": n already there, "seconds": s, "hours": recording-hours
    built}``. Each recording travels through the object store once (a lazily loaded file is a
    path and offsets; an in-memory one its arrays); errors are the loaders' own (a damaged file
    raises its :class:`~emgcore.errors.FormatError`, naming it)."""
    import ray

    todo = missing(pairs, root)
    t0 = time.perf_counter()
    hours = sum(pairs[i][0].n_samples / pairs[i][0].fs for i in todo) / 3600
    if todo:
        refs = [ray.put(pairs[i]) for i in todo]
        folder = str(Path(root).resolve())

        def build(row: dict[str, Any]) -> dict[str, Any]:
            from emgcore.windows import RecordingCache

            rec, pipe = ray.get(refs[row["item"]])
            t = time.perf_counter()
            RecordingCache(folder).get(rec, pipe)
            return {"item": row["item"], "seconds": time.perf_counter() - t}

        items = list(range(len(todo)))
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds.map(build, num_cpus=1).take_all()
    return {
        "built": float(len(todo)),
        "cached": float(len(pairs) - len(todo)),
        "seconds": time.perf_counter() - t0,
        "hours": hours,
    }
