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
# Where each Tune trial's driver runs: it holds no CPU, and it runs on the head node. A Train run's
# controller runs beside its driver (Train V2 pins it to the driver's node), so a worker node that
# dies takes only the trial's workers with it: the controller restarts them from the last
# checkpoint on a node with capacity. A driver left to the scheduler can land on a worker node and
# die with it, and the trial with it (tests/orchestration/test_multinode.py).
TUNE_DRIVER_RESOURCES = {"CPU": 0, "memory": 2**20, "node:__internal_head__": 0.001}
# what the sweep's driver imports (module names): checked before anything else runs
NEEDED = ("ray", "mlflow", "torch", "numpy", "scipy", "yaml")


def environment_problem(needed: tuple[str, ...] = NEEDED) -> str:
    """One line saying which python runs this and what it lacks of ``needed``, and how to give
    a Ray job the project's environment; ``""`` when everything is there. Checked with
    ``find_spec`` (nothing is imported), so it costs milliseconds.

    ``ray job submit ... -- python orchestration/sweep.py`` runs the ``python`` the Ray cluster
    was started with (its ``PATH``), not the submitter's virtual environment."""
    import importlib.util
    import sys

    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if not missing:
        return ""
    return (
        f"{sys.executable} cannot import {', '.join(missing)}: the sweep needs the project's "
        "environment (make run creates .venv). As a Ray job, the job's python is the one Ray was "
        "started with: start Ray from the activated environment (. .venv/bin/activate && ray "
        "start --head), use a cluster image with the project installed, or list the packages "
        "in the job's runtime environment (--runtime-env-json '{\"pip\": [...]}' with "
        "pyproject.toml's dependencies)"
    )


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


# What defines a final run's model (a trial spec's keys): recorded on every registered version
# as its ``recipe`` tag, so a nightly run retrains exactly that with tonight's code.
RECIPE = ("method", "config", "overrides", "data", "sim", "seeds", "subjects", "fingerprint")


def recipe(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The final run's recipe from its trial spec (:data:`RECIPE`); ``pretrained``: the
    registered models it started from, pinned to their versions."""
    return {k: spec.get(k) for k in RECIPE} | {"pretrained": dict(spec.get("pretrained") or {})}


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


def declared_gpus_only(nodes: list[dict[str, Any]]) -> bool:
    """Whether every alive node with GPUs only declares them: ``ray start --num-gpus N`` (or a
    launcher's ``resources: {GPU: N}``) where Ray detected no GPU. Ray adds an
    ``accelerator_type:<model>`` resource (e.g. ``accelerator_type:A100``) to a node only when
    it detects NVIDIA GPUs there; a declared GPU without one is a CPU (a container started
    without ``--gpus all`` looks the same). ``nodes``: ``ray.nodes()``. ``False`` without GPU
    nodes (an autoscaler brings real ones)."""
    gpu_nodes = [n["Resources"] for n in nodes if n.get("Alive") and n["Resources"].get("GPU")]
    return bool(gpu_nodes) and not any(
        k.startswith("accelerator_type:") for res in gpu_nodes for k in res
    )


def train_device() -> str:
    """The torch device of this Train worker: its GPU (``ray.train.torch.get_device``), or the CPU
    where torch sees no CUDA (Ray hands a worker holding a logical GPU ``cuda:0`` regardless)."""
    import ray.train.torch
    import torch

    return str(ray.train.torch.get_device()) if torch.cuda.is_available() else "cpu"


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
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec, "method": method},
        torch_config=TorchConfig(backend=args.get("backend")),
        scaling_config=ray.train.ScalingConfig(**args["scaling"]),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=args["max_failures"]),
            callbacks=list(callbacks),
        ),
    )


def progress_file(path: str) -> Any:
    """A Train callback that appends each report of rank 0 to ``path``, one JSON line of its
    short scalar metrics (``unit``, ``units_done``, ``epoch``, the metric so far ...): how the
    driver follows a run it launched outside Tune (``Sweep._fit_once``, the final retrain). It
    runs in the Train controller, which Train places on the driver's node, so a local file is
    enough; a write that fails is skipped (progress is not worth failing a run for)."""
    from ray.train import UserCallback

    class ProgressFile(UserCallback):
        def __init__(self, path: str):
            self.path = path

        def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
            m = metrics[0] if metrics else {}
            short = {
                k: v
                for k, v in m.items()
                if isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) < 200)
            }
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(short) + "\n")
            except (OSError, TypeError, ValueError):
                pass

    return ProgressFile(path)


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


def end_detached_actors() -> list[str]:
    """End the detached actors this Ray job created that are still alive; their class names.

    A finished sweep should leave nothing running on a cluster it was submitted to, but Ray
    2.60's Train creates actors with ``lifetime="detached"``, which outlive the driver by
    design (~200 MB each):

    - ``PlacementGroupCleaner``, one per Train run (``train/v2/_internal/callbacks/
      placement_group_callback.py``): it removes the run's placement group should the
      controller die. It exits when the controller stops it or when it sees the controller dead
      through the state API; when neither happens (the controller ended by its Tune trial, a
      state-API call that fails) it stays.
    - ``_AutoscalingCoordinatorActor``, named ``AutoscalingCoordinator`` (``ray/data/_internal/
      cluster_autoscaler/default_autoscaling_coordinator.py``): a cluster-wide service created
      on first use (``get_if_exists``) that never exits.

    Only this job's actors are ended (an actor's job is its creator's). A named one can be
    shared (another job finds it by name), so it is ended only when no other user job of the
    cluster is alive. Ray's public ``ray.kill`` needs a handle, which nothing here holds for
    them; the kill goes to the GCS by actor id, as ``ray.kill`` itself does.
    """
    import ray
    from ray._private import state
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    job = ray.get_runtime_context().get_job_id()
    alive = state.actors(job_id=ray.JobID.from_hex(job), actor_state_name="ALIVE").values()
    mine = [a for a in alive if a["IsDetached"] and a["JobID"] == job]
    if not mine:
        return []
    if any(a["Name"] for a in mine) and _other_jobs_alive(job):
        mine = [a for a in mine if not a["Name"]]
    channel = init_grpc_channel(ray.get_runtime_context().gcs_address)
    try:
        stub = gcs_service_pb2_grpc.ActorInfoGcsServiceStub(channel)
        for a in mine:
            stub.KillActorViaGcs(
                gcs_service_pb2.KillActorViaGcsRequest(
                    actor_id=bytes.fromhex(a["ActorID"]), force_kill=True, no_restart=True
                ),
                timeout=10,
            )
    finally:
        channel.close()
    return [a["ActorClassName"] for a in mine]


def _other_jobs_alive(job: str) -> bool:
    """Whether a user job other than ``job`` is alive on the cluster (Ray's own, such as the
    dashboard's, live in ``_ray_internal_`` namespaces)."""
    import ray

    jobs = ray._private.worker.global_worker.gcs_client.get_all_job_info().values()
    return any(
        not j.is_dead
        and j.job_id.hex() != job
        and not j.config.ray_namespace.startswith("_ray_internal")
        for j in jobs
    )


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
