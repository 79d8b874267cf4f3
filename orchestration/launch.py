"""How one trial reaches Ray Train: the Tune driver, the TorchTrainer it runs, and cleanup.

Every Tune trial actor imports this module to run :func:`tune_driver`, and every Train worker
imports it to find :func:`train_loop`. So it imports nothing heavy at module level: MLflow,
emgcore and the sweep's own modules would cost each trial ~2 s of CPU before it starts, which on a
2-core laptop is CPU that concurrent trials would otherwise train with. A worker imports the
worker loop and unpacks its method only when it starts training. What every method's trial receives
(:func:`trial_spec`) and how it reads its data (:func:`load_recordings`) live here too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_WORKER_FAILURES = 2  # a trial's workers may die this often; each restart resumes


def local_cluster_options() -> dict[str, Any]:
    """``ray.init`` options for the in-process laptop cluster, beyond Ray's defaults.

    Both switch off cluster machinery that a single-node laptop cluster pays for on every trial
    and cannot use; each was measured with ``bench/bench_sweep.py`` (2 concurrent trials on 2
    cores). A cluster reached through ``--address`` keeps its own settings.

    - Ray's per-process metrics export (no Prometheus scrapes a laptop): ~5% of each
      concurrent trial's epoch speed.
    - Train's preemption watcher, one more actor per trial that polls for spot-node
      preemption, which a single node cannot have: ~1.5 s of CPU per trial start.
    """
    return {
        "_system_config": {"enable_metrics_collection": False},
        "runtime_env": {"env_vars": {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}},
    }


# Least time between two epoch reports to Train from a trial's workers; MLflow gets every epoch.
# Each report is a barrier through Train's sync actor, a controller poll and a hop through Tune's
# queue actor: at 1 s, two concurrent trials lost ~6% of their epoch speed to it on 2 cores
# (bench_sweep.py). It must exceed Train's controller poll (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s
# by default): a report waits until the previous one was polled.
REPORT_S = 5.0


def trial_spec(
    *,
    mode: str,
    method: str,
    config: str,
    overrides: Mapping[str, Any],
    data: str,
    sim: Mapping[str, Any],
    cache: str,
    tracking: Mapping[str, Any],
    subjects: list[str] | None = None,
    threads: int = 1,
    fingerprint: str = "",
    registry: str | None = None,
    fault: Mapping[str, Any] | None = None,
    materialised: str = "",
) -> dict[str, Any]:
    """What a trial's workers receive (JSON-able, so Tune can store and restore it).

    ``method``: a key of :data:`emgcore.methods.METHODS` (the workers receive the
    :class:`~emgcore.methods.base.Method` itself beside the spec, :func:`make_trainer`).
    ``registry``: the registered model name (default: the method's). ``tracking``: ``uri``,
    ``experiment_id``, ``parent`` run id, run ``key``, ``name`` and ``tags``.
    ``materialised``: a BYOD copy of a simulated ``data``, read instead of simulating again
    when this worker can see it. ``fault``: test-only fault injection (``kill_in_unit``,
    ``at_epoch``, ``marker``).
    """
    return {
        "method": method,
        "mode": mode,
        "config": config,
        "overrides": dict(overrides),
        "data": data,
        "sim": dict(sim),
        "cache": cache,
        "subjects": list(subjects or []),
        "threads": threads,
        "fingerprint": fingerprint,
        "registry": {"name": registry or method},
        "fault": dict(fault or {}),
        "materialised": materialised,
        "tracking": dict(tracking),
    }


def load_recordings(spec: Mapping[str, Any]) -> list:
    """The trial's data: the sweep's BYOD copy of a simulated dataset when this worker can see
    it, else the dataset itself (simulated again, or loaded from its path)."""
    from emgcore.data import load_byod, open_dataset
    from emgcore.data.byod import MANIFEST

    local = spec.get("materialised")
    if local and (Path(local) / MANIFEST).exists():
        return load_byod(local)
    return open_dataset(spec["data"], **spec.get("sim", {}))


def train_loop(config: dict[str, Any]) -> None:
    """The Train workers' entry point: :func:`orchestration.worker.train_loop`, imported here
    (each Tune trial actor imports this module, and needs none of it)."""
    from orchestration.worker import train_loop as run

    run(config)


def pack_method(method: Any) -> bytes:
    """A :class:`~emgcore.methods.base.Method` as bytes, for a trial's config: Tune's trial
    actors and Train's controller hold the config without unpickling what is inside (importing
    emgcore would cost each trial ~2 s of CPU, see the module doc); the workers unpack it. By
    value, so a method registered at run time (a notebook's, a test's) reaches the workers."""
    from ray import cloudpickle

    return cloudpickle.dumps(method)


def unpack_method(packed: bytes) -> Any:
    from ray import cloudpickle

    return cloudpickle.loads(packed)


def tune_driver(config: dict[str, Any]) -> None:
    """Launch one trial's TorchTrainer; its workers' reports reach Tune via TuneReportCallback."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = ray.tune.get_context().get_trial_id()
    spec = json.loads(json.dumps(config["spec"]))
    spec["overrides"] = {**spec["overrides"], **config["overrides"]}
    tr = spec["tracking"]
    tr["key"] = f"{tr['key']}/{trial_id}"
    tr["name"] = f"trial {trial_id}"
    tr["tags"] = {**tr["tags"], "emg.trial": trial_id}
    # the trial id in the name (and nothing random): a restarted trial finds and resumes its
    # own Train run, and never another's
    trainer = make_trainer(
        spec,
        config["method"],
        config["trainer"],
        f"train-{trial_id}",
        spec["storage"],
        (TuneReportCallback(),),
    )
    result = trainer.fit()
    release_placement_group(result.metrics.get("placement_group", ""))


def make_trainer(
    spec: dict[str, Any],
    method: bytes,
    args: dict[str, Any],
    name: str,
    storage: str,
    callbacks: tuple = (),
) -> Any:
    """A TorchTrainer over :func:`train_loop` for one trial's ``spec`` of the ``method``
    :func:`pack_method` packed."""
    import ray.train
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec, "method": method},
        scaling_config=ray.train.ScalingConfig(**args["scaling"]),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=args["max_failures"]),
            callbacks=list(callbacks),
        ),
    )


def placement() -> dict[str, str]:
    """``{"placement_group": hex}`` of the calling worker's group (for
    :func:`release_placement_group` once the trial is over)."""
    import ray

    pg = ray.util.get_current_placement_group()
    return {"placement_group": pg.id.hex() if pg is not None else ""}


def release_placement_group(pg_hex: str) -> None:
    """Remove a finished Train run's worker placement group if it is still there.

    Ray 2.60's Train controller stops its placement-group cleaner before it removes the group,
    and a Tune trial that returns can end the controller in between: the group then holds its
    CPUs/GPUs forever and later trials wait on them. Removing a removed group is a no-op.
    """
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    if not pg_hex:
        return
    state = ray.util.placement_group_table().get(pg_hex, {}).get("state")
    if state in ("CREATED", "PENDING", "RESCHEDULING"):
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_hex))))


def release_leaked_placement_groups() -> int:
    """Between stages no trial of this job runs: remove any of its groups still holding."""
    import ray

    job = ray.get_runtime_context().get_job_id()
    leaked = [
        pg
        for pg, info in ray.util.placement_group_table().items()
        if pg.endswith(job) and info["state"] == "CREATED"  # a group id ends with its job id
    ]
    for pg in leaked:
        release_placement_group(pg)
    return len(leaked)
