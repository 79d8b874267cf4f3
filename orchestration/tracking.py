"""Everything MLflow: the only module of the project that imports it.

Run tree of one sweep (experiment = method)::

    sweep <id>                      parent: resolved config, leaderboards, final result, model
      stage <name>                  nested: the stage's leaderboard CSV and summary plot
        trial <trial id>            child, opened by rank 0 of the trial's Train workers
      final                         nested: the winner retrained with every seed, held-out scores

Runs are found again by a ``emg.key`` tag (``<sweep id>/<stage>/<trial>``) rather than kept in
memory, so a resumed sweep or a restarted worker continues the same run instead of opening a
duplicate. Every call goes through :func:`retry` (exponential backoff), metrics are buffered and
flushed in batches, and a flush that fails keeps its buffer, so a short tracking outage loses
nothing. A run is always ended FINISHED, FAILED or KILLED; :func:`end_orphans` closes whatever a
killed process left RUNNING.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

T = TypeVar("T")
DEFAULT_DB = "mlflow.db"
KEY = "emg.key"  # the tag that identifies a run across restarts
PARAM_MAX = 6000  # MLflow's limit on a param value's length


class TrackingUnavailable(RuntimeError):
    """The tracking backend cannot be reached; ``str()`` is the one line to show the user."""


def resolve_uri(uri: str | None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.

    The SQLite path is made absolute: Ray workers run in other working directories.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def artifact_root(uri: str) -> str | None:
    """Artifacts beside a SQLite file (``mlflow.db`` -> ``mlartifacts/``); a server decides."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when the backend is down (instead of minutes of HTTP retries)."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    raise TrackingUnavailable(
                        f"tracking server {uri} answered {r.status} on /health"
                    )
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingUnavailable(
                f"tracking server {uri} is unreachable ({reason}); start it, or pass "
                "--tracking-uri / MLFLOW_TRACKING_URI"
            ) from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingUnavailable(f"tracking database folder {folder} is not writable")


_TRANSIENT = (MlflowException, OSError, ConnectionError, TimeoutError)


def retry(
    fn: Callable[..., T],
    *args: Any,
    attempts: int = 8,
    delay: float = 0.5,
    max_delay: float = 20.0,
    **kwargs: Any,
) -> T:
    """Call ``fn`` and retry transient tracking errors with exponential backoff (~90 s in all).

    "database is locked" from concurrent SQLite writers and a restarting server are both
    transient; a bad request (e.g. a param re-logged with another value) is not retried.
    """
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except _TRANSIENT as e:
            code = getattr(e, "error_code", "")
            if code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST"):
                raise
            if i == attempts - 1:
                raise
            time.sleep(min(max_delay, delay * 2**i))
    raise AssertionError("unreachable")


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """A (nested) config as MLflow params with dotted keys: ``{"kinembed.lr": "0.003"}``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out |= flatten(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): str(list(obj) if isinstance(obj, tuple) else obj)[:PARAM_MAX]}


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


class Tracker:
    """One process's handle on the backend: experiments, runs, buffered metrics, registry."""

    def __init__(self, uri: str):
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    # -- experiments and runs ------------------------------------------------------------------

    def experiment(self, name: str) -> str:
        exp = retry(self.client.get_experiment_by_name, name)
        if exp is not None:
            return exp.experiment_id
        try:
            return retry(
                self.client.create_experiment, name, artifact_location=artifact_root(self.uri)
            )
        except MlflowException:  # created concurrently by another process
            return retry(self.client.get_experiment_by_name, name).experiment_id

    def find(self, experiment_id: str, key: str) -> str | None:
        runs = retry(
            self.client.search_runs,
            [experiment_id],
            filter_string=f"tags.`{KEY}` = '{key}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def open_run(
        self,
        experiment_id: str,
        key: str,
        name: str,
        tags: Mapping[str, str],
        parent: str | None = None,
    ) -> str:
        """The run tagged ``key`` (set RUNNING again when resumed), or a new one."""
        run_id = self.find(experiment_id, key)
        if run_id is not None:
            retry(self.client.update_run, run_id, status="RUNNING")
            return run_id
        all_tags = {KEY: key, **tags}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = retry(self.client.create_run, experiment_id, run_name=name, tags=all_tags)
        return run.info.run_id

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        retry(self.client.set_terminated, run_id, status)

    def end_orphans(self, experiment_id: str, tag: str, value: str, status: str) -> int:
        """End every run tagged ``tag = value`` still RUNNING (left by killed processes)."""
        runs = retry(
            self.client.search_runs,
            [experiment_id],
            filter_string=f"tags.`{tag}` = '{value}' and attributes.status = 'RUNNING'",
            max_results=10_000,
        )
        for r in runs:
            self.end(r.info.run_id, status)
        return len(runs)

    def status(self, run_id: str) -> str:
        return retry(self.client.get_run, run_id).info.status

    # -- data ------------------------------------------------------------------------------------

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:PARAM_MAX]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit on params
            retry(self.client.log_batch, run_id, params=items[i : i + 100])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        retry(self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: str | Path, folder: str | None = None) -> None:
        retry(self.client.log_artifact, run_id, str(path), folder)

    def logger(self, run_id: str) -> MetricLogger:
        return MetricLogger(self, run_id)


class MetricLogger:
    """Buffered metrics for one run: ``log({name: value}, step)``, sent by ``flush()``.

    A flush that fails after its retries keeps the buffer for the next one, so an outage that
    outlasts one flush loses nothing either.
    """

    def __init__(self, tracker: Tracker, run_id: str, every: int = 200):
        self.tracker, self.run_id, self.every = tracker, run_id, every
        self.buffer: list[Metric] = []

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        self.buffer += [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        if len(self.buffer) >= self.every:
            self.flush(raise_errors=False)

    def flush(self, raise_errors: bool = True) -> None:
        while self.buffer:
            chunk = self.buffer[:1000]  # MLflow's batch limit on metrics
            try:
                retry(self.tracker.client.log_batch, self.run_id, metrics=chunk)
            except _TRANSIENT:
                if raise_errors:
                    raise
                print("tracking: flush failed, keeping metrics for the next one", file=sys.stderr)
                return
            del self.buffer[: len(chunk)]


def open_trial_run(
    tr: Mapping[str, Any], params: Mapping[str, Any]
) -> tuple[Tracker, str, MetricLogger]:
    """A trial's run (rank 0): found again by its key or created under its parent, with params.

    ``tr`` is a trial spec's ``tracking``: ``uri``, ``experiment_id``, ``key``, ``name``,
    ``tags``, ``parent``.
    """
    tracker = Tracker(tr["uri"])
    run_id = tracker.open_run(tr["experiment_id"], tr["key"], tr["name"], tr["tags"], tr["parent"])
    tracker.log_params(run_id, params)
    return tracker, run_id, tracker.logger(run_id)


def end_with_error(tracker: Tracker, run_id: str, log: MetricLogger, e: BaseException) -> None:
    """End a trial's run on an exception: KILLED for interrupts, else FAILED, with the error."""
    status = "KILLED" if isinstance(e, KeyboardInterrupt | SystemExit) else "FAILED"
    log.flush(raise_errors=False)
    tracker.set_tags(run_id, {"emg.error": f"{type(e).__name__}: {e}"[:5000]})
    tracker.end(run_id, status)


def log_model_version(
    run_id: str,
    model: Any,
    input_example: Any,
    name: str,
    tags: Mapping[str, str],
    extra_files: Sequence[str | Path] = (),
) -> tuple[str, str]:
    """Log ``model`` (torch) in run ``run_id`` and register it; returns ``(model uri, version)``.

    MLflow 3 stores the traced graph (``pt2``: nothing runs on load, but only ``forward``
    survives); ``extra_files`` travel with it, e.g. weights and the config that rebuilds the
    full module (:func:`model_files` finds them again).
    """
    import mlflow.pytorch

    with mlflow.start_run(run_id=run_id):
        info = retry(
            mlflow.pytorch.log_model,
            model,
            name="model",
            input_example=input_example,
            extra_files=[str(f) for f in extra_files] or None,
        )
    version = retry(mlflow.register_model, info.model_uri, name, tags=dict(tags))
    return info.model_uri, str(version.version)


def register(
    run_id: str,
    model: Any,
    input_example: Any,
    name: str,
    score: float,
    champion_score: float | None,
    tags: Mapping[str, str],
    metric: str = "heldout_r2",
    extra_files: Sequence[str | Path] = (),
    mode: str = "max",
) -> tuple[str, bool]:
    """Log and register ``model``; move ``name@champion`` to it only if it is better.

    ``score`` and ``champion_score`` must come from the same held-out evaluation;
    ``champion_score`` is None when there is no champion yet and NaN when the champion could not
    be evaluated on that data (then the alias stays). Better is higher for ``mode="max"`` (R^2,
    accuracy), lower for ``"min"`` (an error such as JA-MAE); a tie keeps the champion. Both are
    tagged as ``metric`` and ``champion_<metric>``. Returns ``(version, became champion)``.
    """
    promote = beats_champion(score, champion_score, mode)
    old = math.nan if champion_score is None else champion_score
    all_tags = {
        metric: f"{score:.6f}",
        f"champion_{metric}": f"{old:.6f}",
        "became_champion": str(promote).lower(),
        **tags,
    }
    _, version = log_model_version(run_id, model, input_example, name, all_tags, extra_files)
    if promote:
        client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
        retry(client.set_registered_model_alias, name, "champion", version)
    return version, promote


def beats_champion(score: float, champion_score: float | None, mode: str = "max") -> bool:
    """The champion rule: no champion yet, or strictly better on the same evaluation (higher for
    ``mode="max"``, lower for ``"min"``); a champion that could not be scored (NaN) stays."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if champion_score is None:
        return True
    if not (math.isfinite(champion_score) and math.isfinite(score)):
        return False
    return score > champion_score if mode == "max" else score < champion_score


def champion(client: MlflowClient, name: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None


def rescore_champion(
    client: MlflowClient,
    name: str,
    score: Callable[[Any], float],
    where: str,
    load: Callable[[str], Any] | None = None,
) -> tuple[float | None, str]:
    """``name@champion`` scored again by ``score(model)`` on the evaluation a new version was
    scored on, for :func:`register`: ``(None, why)`` when there is no champion, ``(NaN, why)``
    when it cannot run on this data (other channels or window length), else ``(score, why)``.
    ``load`` turns the champion's URI into a model (default: the logged graph, :func:`load_model`);
    ``where`` names the evaluation in the reason."""
    current = champion(client, name)
    if current is None:
        return None, "no champion yet"
    try:
        import torch

        model = (load or load_model)(f"models:/{name}@champion")
        with torch.no_grad():
            old = float(score(model))
    except Exception as e:  # not comparable: the alias stays (see beats_champion)
        return math.nan, f"champion v{current.version} cannot be evaluated on {where}: {e}"[:500]
    return old, f"champion v{current.version} scores {old:.4f} on {where}"


def load_model(uri: str) -> Any:
    import mlflow.pytorch

    return retry(mlflow.pytorch.load_model, uri)


def model_files(uri: str) -> Path:
    """The folder holding a logged model's ``extra_files`` (downloaded when remote)."""
    import mlflow.artifacts

    return Path(retry(mlflow.artifacts.download_artifacts, artifact_uri=uri)) / "extra_files"


def use(uri: str) -> None:
    """Point this process's fluent API (``mlflow.start_run``, model logging) at ``uri``."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
