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

import contextlib
import functools
import glob
import hashlib
import math
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from emgcore.config import PARAM_MAX
from emgcore.methods.base import INFERENCE_FILE, Score, better, exact

T = TypeVar("T")
DEFAULT_DB = "mlflow.db"
KEY = "emg.key"  # the tag that identifies a run across restarts
# how an earlier attempt of a run ended (its error; KILLED by the next start when its driver
# died): dropped when the run is reopened or ends FINISHED (Tracker.clear_stale)
STALE_TAGS = ("emg.error", "emg.ended")


class TrackingUnavailable(RuntimeError):
    """The tracking backend cannot be reached; ``str()`` is the one line to show the user."""


def resolve_uri(uri: str | None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.

    Local paths (SQLite files, a file store) are made absolute: Ray workers run in other working
    directories.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    elif uri.startswith("file:") or not _scheme(uri):  # a plain path is a file store
        uri = Path(urllib.parse.urlparse(uri).path or uri).resolve().as_uri()
    return uri


def artifact_root(uri: str) -> str | None:
    """Artifacts beside a SQLite file (``mlflow.db`` -> ``mlartifacts/``); a server decides."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


# the schemes MLflow 3 has stores for (its tracking store registry); "+driver" suffixes allowed
_DATABASES = ("postgresql", "mysql", "mssql")
_SCHEMES = ("sqlite", "http", "https", "file", "databricks", "databricks-uc", "uc", *_DATABASES)
_SQLITE_MAGIC = b"SQLite format 3\x00"
_LOCK_S = 300.0  # initialising a store takes seconds; a lock held longer is someone stuck
_ready: set[str] = set()  # stores this process has checked (and initialised) already


def _scheme(uri: str) -> str:
    """``uri``'s scheme; MLflow also takes a bare ``databricks`` (its default profile)."""
    return urllib.parse.urlparse(uri).scheme or (uri if uri in _SCHEMES else "")


def _line(e: BaseException) -> str:
    """An exception as one short line (MLflow's messages run to paragraphs)."""
    text = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    return text[:300]


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line naming ``uri`` and what to do, for every state of the backend a
    user can reach: a server that is down, a scheme MLflow has no store for, a SQLite path in a
    missing or read-only folder, a file that is not SQLite, a store half-migrated or written by
    another MLflow version, a file store (refused by MLflow 3 unless opted in). A new SQLite
    file is created here, once, under a lock (:func:`_init_sqlite`). Then one read through
    MLflow itself catches whatever is left (a missing database driver, bad credentials)."""
    if uri in _ready:
        return
    scheme = _scheme(uri)
    if scheme.split("+")[0] not in _SCHEMES:
        raise TrackingUnavailable(
            f"tracking URI {uri} has an unknown scheme {scheme + ':' if scheme else ''!r}: use "
            "sqlite:///<path>.db, http(s)://<server> or a database URL (postgresql://, mysql://, "
            "mssql://)"
        )
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                pass
        except urllib.error.HTTPError as e:  # something answers, but not an MLflow server
            raise TrackingUnavailable(
                f"tracking server {uri} answered {e.code} on /health: is it an MLflow server? "
                "Pass --tracking-uri / MLFLOW_TRACKING_URI"
            ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingUnavailable(
                f"tracking server {uri} is unreachable ({reason}); start it, or pass "
                "--tracking-uri / MLFLOW_TRACKING_URI"
            ) from None
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme == "file" and not MLFLOW_ALLOW_FILE_STORE.get():
        raise TrackingUnavailable(
            f"tracking URI {uri} is a file store, which MLflow 3 refuses (maintenance mode): "
            "convert it with 'mlflow migrate-filestore' and pass sqlite:///<path>.db, or set "
            "MLFLOW_ALLOW_FILE_STORE=true"
        )
    try:  # one read of each store through MLflow; few retries: what fails here rarely passes
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        retry(client.search_experiments, max_results=1, attempts=3)
        retry(client.search_registered_models, max_results=1, attempts=3)
    except Exception as e:
        raise TrackingUnavailable(f"tracking store {uri} cannot be used: {_line(e)}") from None
    _ready.add(uri)


def _check_sqlite(uri: str) -> None:
    """A SQLite store's file, checked without changing it; created when absent or empty."""
    rest = uri.removeprefix("sqlite:///")
    if not uri.startswith("sqlite:///") or not rest or rest.startswith(":memory:"):
        raise TrackingUnavailable(
            f"tracking URI {uri} is not a SQLite file: Ray workers need a file, pass "
            "sqlite:///<path>.db"
        )
    db = Path(rest)
    folder = db.parent
    if not folder.is_dir():
        raise TrackingUnavailable(
            f"tracking database folder {folder} does not exist ({uri}): create it or pass "
            "another --tracking-uri"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TrackingUnavailable(
            f"tracking database folder {folder} is not writable ({uri}): fix its permissions "
            "or pass another --tracking-uri"
        )
    if db.is_dir():
        raise TrackingUnavailable(
            f"tracking database {db} is a folder, not a SQLite file: pass sqlite:///<path>.db"
        )
    if not db.exists() or db.stat().st_size == 0:
        _init_sqlite(db)
    _check_sqlite_file(db, uri)


def _check_sqlite_file(db: Path, uri: str) -> None:
    """An existing file: SQLite, writable, MLflow's tables at this MLflow's schema revision."""
    what = f"tracking database {db}"
    if not os.access(db, os.R_OK | os.W_OK):
        raise TrackingUnavailable(
            f"{what} is not writable: fix its permissions or pass another --tracking-uri"
        )
    with db.open("rb") as f:
        if f.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
            raise TrackingUnavailable(
                f"{what} is not a SQLite database: move it away or pass another --tracking-uri"
            )
    try:
        # a generous busy timeout: other sweeps may be writing, which is no damage
        with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=60) as c:
            tables = {r[0] for r in c.execute("select name from sqlite_master where type='table'")}
            rev = ""
            if "alembic_version" in tables:
                row = c.execute("select version_num from alembic_version").fetchone()
                rev = row[0] if row else ""
        c.close()
    except sqlite3.Error as e:
        raise TrackingUnavailable(f"{what} cannot be read ({e}): is it damaged?") from None
    if half := sorted(t for t in tables if t.startswith("_alembic_tmp_")):
        raise TrackingUnavailable(
            f"{what} was left half-migrated by an interrupted MLflow schema migration (table "
            f"{half[0]}): restore a backup, or move it away to start a new store"
        )
    if "experiments" not in tables or not rev:
        raise TrackingUnavailable(
            f"{what} is a SQLite database but not an MLflow store: pass another --tracking-uri"
        )
    from mlflow.store.db.utils import _get_latest_schema_revision

    head = _get_latest_schema_revision()
    if rev != head:  # MLflow refuses it; upgrading in place is the user's call (take a backup)
        raise TrackingUnavailable(
            f"{what} has MLflow schema {rev}, this MLflow {mlflow.__version__} needs {head}: back "
            f"it up, then run 'mlflow db upgrade {uri}' (or use the MLflow that wrote it)"
        )


def _init_sqlite(db: Path) -> None:
    """Create a new SQLite store: once, under a lock on ``<db>.lock``, and atomically.

    MLflow creates and migrates a new database on first use, and two processes doing so at once
    race (seen: ``duplicate column name: step``, ``table runs already exists``, alembic's
    "expected to match one row"), which can leave the file half-migrated (``_alembic_tmp_*``
    tables) and unusable. So the project's processes take a file lock, and the first builds
    the whole schema in a copy beside it that is renamed into place: ``db`` is either absent
    or complete, even when the process is killed mid-migration.
    """
    from filelock import FileLock, Timeout
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    try:
        with FileLock(f"{db}.lock", timeout=_LOCK_S):
            if db.exists() and db.stat().st_size > 0:
                return  # another process made it while this one waited
            for stale in db.parent.glob(f"{glob.escape(db.name)}.init*"):
                stale.unlink(missing_ok=True)  # left by a killed process (it held this lock)
            tmp = db.with_name(f"{db.name}.init{os.getpid()}")
            tmp_uri = f"sqlite:///{tmp}"
            try:
                store = SqlAlchemyStore(tmp_uri, artifact_root(f"sqlite:///{db}"))
                store.engine.dispose()
                SqlAlchemyStore._engine_map.pop(tmp_uri, None)  # MLflow caches engines by URI
                os.replace(tmp, db)
            finally:
                tmp.unlink(missing_ok=True)
    except Timeout:
        raise TrackingUnavailable(
            f"tracking database {db}: another process has held {db}.lock for {_LOCK_S:.0f} s; "
            "if none is running, delete the lock file"
        ) from None


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


# MLflow's rule for metric, param and tag keys (mlflow/utils/validation.py) is ``[/\w.\- :]*``,
# at most 250 characters, and no key that path-normalises to another ("a//b", "x/..", "."). A
# part keeps only ASCII letters, digits, ``_ - .`` and space: ``:`` is refused on Windows, ``\w``
# is Unicode only in Python, and ``/`` separates the parts of a key.
_NOT_KEY = re.compile(r"[^A-Za-z0-9_\-. ]")
KEY_MAX = 240  # a key, leaving room for the ``emg.name.`` tag that names it
NAME_TAG = "emg.name."  # tag ``emg.name.<key>``: the readable key a renamed one stands for


@functools.lru_cache(maxsize=65536)
def key_part(name: str, limit: int = KEY_MAX) -> str:
    """Any name (a subject, session, label) as a valid part of an MLflow key, stable across
    processes: itself when MLflow takes it, else its refused characters as ``_``, cut to
    ``limit``, plus ``--`` and 8 hex digits of the name's SHA-256, so names that read alike
    after the replacement (``P01 (pilot)``, ``P01 [pilot]``) stay distinct."""
    part = _NOT_KEY.sub("_", name)
    if part == name and len(part) <= limit and part.strip("."):
        return part  # "", "." and ".." would normalise away as path segments
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{part[: limit - 10]}--{digest}"


def mlflow_key(key: str) -> str:
    """A key built from any names (``r2.<subject>/<fold>``) as one MLflow takes: each
    ``/``-separated part through :func:`key_part` (a key MLflow takes already is unchanged),
    the whole once more when it is longer than :data:`KEY_MAX`. Every metric, param and tag
    key goes through here (:class:`Tracker`, :class:`MetricLogger`), so no data name can fail
    a trial at a flush."""
    out = "/".join(key_part(p) for p in key.split("/"))
    return out if len(out) <= KEY_MAX else key_part(key)


def _renamed(keys: Sequence[str]) -> dict[str, str]:
    """``{mlflow key: readable key}`` for the keys :func:`mlflow_key` changes."""
    return {m: k for k in keys if (m := mlflow_key(k)) != k}


def name_tags(renamed: Mapping[str, str]) -> dict[str, str]:
    """The tags that keep renamed keys readable: ``emg.name.<mlflow key>`` = the readable."""
    return {f"{NAME_TAG}{m}": k[:PARAM_MAX] for m, k in renamed.items()}


GIT_COMMIT_ENV = "EMG_GIT_COMMIT"


def git_commit() -> str:
    """The code's commit: ``$EMG_GIT_COMMIT`` when set (a Ray job's working directory is
    uploaded without ``.git``: the submitter names the commit, ``clusters/nightly/``), else
    ``git rev-parse HEAD`` of this checkout, else ``"unknown"``."""
    if commit := os.environ.get(GIT_COMMIT_ENV, "").strip():
        return commit
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


# -- what the MLflow UI shows ---------------------------------------------------------------------
# MLflow 3's UI opens in its GenAI mode (traces, no metric columns). The ``workflowType`` URL
# parameter switches it to model training, and a saved view (an experiment tag the UI reads,
# ``mlflow.sharedViewState.<key>``, opened by ``viewStateShareKey=<key>``) brings the columns to
# compare: so every link the sweep prints opens ready to compare, with no clicking in the UI.
UI_MODE = "workflowType=machine_learning"
VIEW_TAG = "mlflow.sharedViewState."
# the experiment kind MLflow's UI reads where the workflowType switch is absent (Databricks)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
NOTE = "mlflow.note.content"  # a run's description, shown on its page (markdown)
SEARCHED = "searched."  # the prefix of a trial's searched values (:func:`open_trial_run`)
CHECKPOINT_MAX_BYTES = 256 * 2**20  # a larger checkpoint stays in Ray's storage only
LABEL_MAX = 120


def _value_text(v: Any) -> str:
    """A searched value, short: ``0.001``, ``vicreg``, ``[256,128]``, ``true``."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_value_text(x) for x in v) + "]"
    return str(v)


def run_label(values: Mapping[str, Any], limit: int = LABEL_MAX) -> str:
    """A trial run's name from the values it tries: ``lr=0.001 loss=vicreg`` (each key's last
    dotted part, the whole key where two searched keys end alike), cut to ``limit``."""
    short = {k: k.rsplit(".", 1)[-1] for k in values}
    seen = [s for s in short.values()]
    words = [
        f"{short[k] if seen.count(short[k]) == 1 else k}={_value_text(v)}"
        for k, v in values.items()
    ]
    label = " ".join(words)
    return label if len(label) <= limit else label[: limit - 3] + "..."


def _redact(uri: str) -> str:
    """``uri`` without the password a database or server URI may carry (it is printed)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def ui_links(
    uri: str,
    experiment_id: str,
    view: str | None = None,
    model: str | None = None,
    run: str | None = None,
) -> dict[str, str]:
    """How to open ``uri`` in MLflow's UI: ``command`` (the ``mlflow ui`` that serves a store
    no server serves; absent for a server), ``experiment`` (the experiment's runs in model
    training mode), ``view`` (the same page through the sweep's saved view: its runs, flat, with
    the metric, searched-value and winner columns), ``model`` (the registered model) and
    ``run`` (one run's page)."""
    if _scheme(uri) in ("http", "https"):
        base, out = _redact(uri).rstrip("/"), {}
    else:  # a local server on MLflow's default port
        base = "http://127.0.0.1:5000"
        out = {
            "command": f"mlflow ui --backend-store-uri {_redact(uri)} --host 127.0.0.1 --port 5000"
        }
    out["experiment"] = f"{base}/#/experiments/{experiment_id}/runs?{UI_MODE}"
    if view:
        key = urllib.parse.quote(view, safe="")
        out["view"] = f"{out['experiment']}&viewStateShareKey={key}"
    if model:
        out["model"] = f"{base}/#/models/{urllib.parse.quote(model, safe='')}?{UI_MODE}"
    if run:
        out["run"] = f"{base}/#/experiments/{experiment_id}/runs/{run}"
    return out


def sweep_view(
    sweep_id: str, metric: str, mode: str, final: Sequence[str], searched: Sequence[str]
) -> dict[str, Any]:
    """The saved view of one sweep: every run but its parent (so the UI lists them flat, not
    folded under the parent), best ``metric`` first, with the columns to compare, in this order
    (the table draws only the columns in sight): run name, stage, winner, ``metric`` (trials),
    ``best_<metric>`` (stages), the ``final`` metrics, the registered model, and every searched
    key (``searched.<key>``). The state is what MLflow 3.17's "Save view" writes."""
    first = ["tags.`emg.stage`", "tags.`emg.winner`"]
    metrics = [f"metrics.`{m}`" for m in dict.fromkeys((metric, f"best_{metric}", *final))]
    params = [f"params.`{mlflow_key(SEARCHED + k)}`" for k in dict.fromkeys(searched)]
    columns = [*first, *metrics, "attributes.`Models`", *params]
    return {
        "searchFilter": f"tags.`emg.sweep` = '{sweep_id}' and tags.`emg.stage` LIKE '%'",
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": mode == "min",
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": columns,
        "columnOrder": ["attributes.`Run Name`", *columns, "runDateAndNestInfo", "duration"],
        "columnWidths": {"attributes.`Run Name`": 320} | {p: 160 for p in params},
    }


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _first_sentence(text: str | None) -> str:
    para = " ".join((text or "").strip().split("\n\n", 1)[0].split())
    return re.split(r"(?<!Sec)(?<!e\.g)(?<!i\.e)\. ", para, maxsplit=1)[0].rstrip(".")


def method_of(name: str, fallback: str) -> str:
    """The method a registered model ``name`` belongs to: the longest method name it is or
    starts with (``mae-emg``: ``mae``), else ``fallback`` (a renamed registry)."""
    from emgcore.methods import METHODS

    found = [m for m in METHODS if name == m or name.startswith(f"{m}-")]
    return max(found, key=len) if found else fallback


def method_summary(method: str) -> tuple[str, str]:
    """``method``'s module (as a path) and one line, the first sentence of its docstring;
    ``("", "")`` for a method outside ``emgcore.methods`` (a test's)."""
    import importlib

    try:
        from emgcore.methods import METHODS

        module = importlib.import_module(METHODS[method].trial.__module__)
    except Exception:
        return "", ""
    path = module.__name__.replace(".", "/") + ".py"
    return (path, _first_sentence(module.__doc__)) if path.startswith("emgcore/") else ("", "")


def _signature_text(model_uri: str, example: Any) -> tuple[str, str]:
    """What a logged model takes and returns, from its signature (``float32 (-1, 256)``); the
    input from ``example``'s shape when the signature cannot be read."""

    def spec(schema: Any) -> str:
        try:
            return ", ".join(f"{s.type} {tuple(s.shape)}".replace(",)", ")") for s in schema.inputs)
        except Exception:
            return "?"

    try:
        import mlflow.models

        sig = retry(mlflow.models.get_model_info, model_uri, attempts=3).signature
        if sig is not None:
            return spec(sig.inputs), spec(sig.outputs) if sig.outputs else "?"
    except Exception:
        pass
    shape = tuple(getattr(example, "shape", ()))
    return (f"{getattr(example, 'dtype', '?')} {(-1, *shape[1:])}" if shape else "?"), "?"


def model_description(
    name: str, method: str, takes: str, returns: str, extra: Sequence[str], selection: Score
) -> str:
    """The registered model's description (markdown): the method, what it takes and returns,
    how to load it, and the champion rule."""
    path, line = method_summary(method)
    files = ", ".join(f"`{f}`" for f in extra)
    text = [
        f"**{name}**: the models the `{method}` method registers (emg-orchestra, "
        f"`python orchestration/sweep.py {method}`{f', `{path}`' if path else ''})."
        + (f" {line}." if line else ""),
        "",
        f"- **Takes** `{takes}`: a batch of windows, one row each (the `input_example` logged "
        "with every version).",
        f"- **Returns** `{returns}`: one row per window.",
        f"- **Champion** (`@champion`): moves only when a version beats it on the selection "
        f"split ({selection.metric}, {'higher' if selection.mode == 'max' else 'lower'} is "
        "better) and beats the trivial baseline on the selection and the test split; each "
        "version's description and tags give its scores and the decision.",
        "",
        "Load it:",
        "",
        "```python",
        "import mlflow.pytorch, torch",
        "",
        f'model = mlflow.pytorch.load_model("models:/{name}@champion")',
        "out = model(torch.as_tensor(x))  # x: the input above",
        "```",
    ]
    if extra:
        text += [
            "",
            f"Files beside the graph ({files}): "
            f'`mlflow.artifacts.download_artifacts("models:/{name}@champion")` + `/extra_files`.',
        ]
    if INFERENCE_FILE in extra:  # the whole path from raw EMG (README, "Using a champion")
        text += [
            "",
            "From raw EMG `(T, C)` as recorded, at the training recordings' rate `fs` (Hz):",
            "",
            "```python",
            "from emgcore.methods import load_inference",
            "",
            "pipe = load_inference(mlflow.artifacts.download_artifacts("
            f'"models:/{name}@champion"))',
            "out = pipe.predict(emg, fs)",
            "```",
        ]
    return "\n".join(text)


def version_description(
    sweep: str, run_id: str, selection: Score, test: Score, champion: bool, reason: str
) -> str:
    """A version's description (markdown): the decision first (the registry's version list
    shows only the first line), then the sweep, the scores beside their baselines, why."""

    def score(s: Score, role: str) -> str:
        return (
            f"- {role}: **{s.metric} {s.value:.4f}** (trivial baseline {s.trivial:.4f}) on "
            f"{s.split}"
        )

    decision = "Became champion" if champion else "Not champion"
    return "\n".join(
        [
            f"**{decision}**: {selection.metric} {selection.value:.4f}, {test.metric} "
            f"{test.value:.4f} (sweep `{sweep or '?'}`)",
            "",
            score(selection, "selection (chooses the champion)"),
            score(test, "test (reported; can only veto)"),
            "",
            f"Decision: {reason}. Sweep `{sweep or '?'}`, final run `{run_id}`.",
        ]
    )


class Tracker:
    """One process's handle on the backend: experiments, runs, buffered metrics, registry."""

    def __init__(self, uri: str):
        check_reachable(uri)  # once per process: a new SQLite store is created here, safely
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    # -- experiments and runs ------------------------------------------------------------------

    def check_experiment(self, name: str) -> Any | None:
        """Experiment ``name`` (None when it does not exist yet); one line when it is deleted:
        MLflow refuses runs in it, and restoring what someone deleted is theirs to decide."""
        exp = retry(self.client.get_experiment_by_name, name)
        if exp is not None and exp.lifecycle_stage == "deleted":
            raise TrackingUnavailable(
                f"experiment {name!r} (id {exp.experiment_id}) in {self.uri} is deleted: restore "
                f"it (MLFLOW_TRACKING_URI={self.uri} mlflow experiments restore --experiment-id "
                f"{exp.experiment_id}) or pass --experiment with another name"
            )
        return exp

    def experiment(self, name: str) -> str:
        """Experiment ``name``'s id, created when missing; marked a model-training experiment
        (:data:`EXPERIMENT_KIND`) unless someone gave it a kind already."""
        exp = self.check_experiment(name)
        if exp is None:
            try:
                return retry(
                    self.client.create_experiment,
                    name,
                    artifact_location=artifact_root(self.uri),
                    tags=dict([EXPERIMENT_KIND]),
                )
            except MlflowException:  # created concurrently by another process
                exp = retry(self.client.get_experiment_by_name, name)
        if EXPERIMENT_KIND[0] not in exp.tags:
            retry(self.client.set_experiment_tag, exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id

    def save_view(self, experiment_id: str, key: str, name: str, state: Mapping[str, Any]) -> str:
        """Save ``state`` as the experiment's view ``key`` (``name`` in the UI's Views menu),
        as MLflow's UI saves one: the tag ``mlflow.sharedViewState.<key>`` holding
        ``{name, createdAt, updatedAt, state}`` with the state as JSON. Returns ``key``."""
        import base64
        import json
        import zlib

        now = int(time.time() * 1000)
        text = json.dumps(state, separators=(",", ":"))
        if len(text) > 15_000:  # MLflow takes 20,000 characters: compressed as the UI does
            text = "deflate;" + base64.b64encode(zlib.compress(text.encode())).decode()
        value = json.dumps({"name": name, "createdAt": now, "updatedAt": now, "state": text})
        retry(self.client.set_experiment_tag, experiment_id, VIEW_TAG + key, value)
        return key

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
            self.clear_stale(run_id)  # an earlier attempt's error is not this attempt's
            return run_id
        all_tags = {KEY: key, **tags}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = retry(self.client.create_run, experiment_id, run_name=name, tags=all_tags)
        return run.info.run_id

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        if status == "FINISHED":
            self.clear_stale(run_id)
        retry(self.client.set_terminated, run_id, status)

    def clear_stale(self, run_id: str) -> None:
        """Drop the tags that say how an earlier attempt of a run ended (:data:`STALE_TAGS`):
        a reopened or FINISHED run is not that attempt. The sweep's state keeps the history."""
        tags = retry(self.client.get_run, run_id).data.tags
        for key in STALE_TAGS:
            if key in tags:
                retry(self._delete_tag, run_id, key)

    def _delete_tag(self, run_id: str, key: str) -> None:
        try:
            self.client.delete_tag(run_id, key)
        except MlflowException as e:  # deleted meanwhile: nothing left to do
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise

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

    def sweeps(
        self, *, sweep: str | None = None, method: str | None = None, running: bool = False
    ) -> list[Run]:
        """Sweep parent runs (those tagged ``emg.driver``) in every active experiment, newest
        first: one sweep id's, one method's, or only those still RUNNING."""
        where = ["tags.`emg.driver` LIKE '%'"]
        if sweep:
            where.append(f"tags.`{KEY}` = '{sweep}'")
        if method:
            where.append(f"tags.`emg.method` = '{method}'")
        if running:
            where.append("attributes.status = 'RUNNING'")
        ids = [e.experiment_id for e in retry(self.client.search_experiments)]
        if not ids:
            return []
        return retry(
            self.client.search_runs,
            ids,
            filter_string=" and ".join(where),
            order_by=["attributes.start_time DESC"],
            max_results=1000,
        )

    def status(self, run_id: str) -> str:
        return retry(self.client.get_run, run_id).info.status

    # -- data ------------------------------------------------------------------------------------

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Params under valid keys (:func:`mlflow_key`); renamed ones keep their readable key
        in an ``emg.name.`` tag."""
        items = [Param(mlflow_key(k), str(v)[:PARAM_MAX]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit on params
            retry(self.client.log_batch, run_id, params=items[i : i + 100])
        self._send_tags(run_id, name_tags(_renamed(list(params))))

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Tags under valid keys (:func:`mlflow_key`), with ``emg.name.`` tags for renamed."""
        named = {mlflow_key(k): str(v) for k, v in tags.items()}
        self._send_tags(run_id, named | name_tags(_renamed(list(tags))))

    def _send_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        items = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit on tags
            retry(self.client.log_batch, run_id, tags=items[i : i + 100])

    def log_artifact(self, run_id: str, path: str | Path, folder: str | None = None) -> None:
        retry(self.client.log_artifact, run_id, str(path), folder)

    def log_checkpoint(
        self, run_id: str, folder: str | Path, limit: int = CHECKPOINT_MAX_BYTES
    ) -> bool:
        """A trial's last checkpoint (the files Ray keeps under its storage path) copied into
        the run's artifacts, ``checkpoint/``, when it holds at most ``limit`` bytes; the tag
        ``emg.checkpoint`` says what was done. A failed copy is a warning, never a failed
        trial (Ray keeps the checkpoint either way). Returns whether it was logged."""
        size = _folder_bytes(Path(folder))
        if size > limit:
            note = f"not logged: {size / 2**20:.0f} MiB > {limit / 2**20:.0f} MiB; in Ray's storage"
            self.set_tags(run_id, {"emg.checkpoint": note})
            return False
        try:
            retry(self.client.log_artifacts, run_id, str(folder), "checkpoint", attempts=4)
        except _TRANSIENT as e:
            print(f"tracking: checkpoint not logged ({_line(e)})", file=sys.stderr)
            return False
        self.set_tags(run_id, {"emg.checkpoint": f"checkpoint/ ({size / 1024:.0f} KiB)"})
        return True

    def mark_winner(
        self, experiment_id: str, stage_run: str, trial_key: str, trial: str, score: str
    ) -> str | None:
        """Mark a stage's winner where the UI shows it: the winning trial's run gets
        ``emg.winner=true``; the stage run gets ``emg.winner`` = the winner's name (its searched
        values: one column of the sweep's view shows both), ``winner.run_id`` and a description
        linking to it. ``trial_key``: the winner's ``emg.key``; ``score``: its score, in words.
        Returns the winning run's id (None when it has no run)."""
        run_id = self.find(experiment_id, trial_key)
        if run_id is None:
            return None
        name = retry(self.client.get_run, run_id).info.run_name or trial
        self.set_tags(run_id, {"emg.winner": "true"})
        link = f"#/experiments/{experiment_id}/runs/{run_id}"
        self.set_tags(
            stage_run,
            {
                "emg.winner": name,
                "winner.run_id": run_id,
                NOTE: f"**Winner**: [{name}]({link}) (trial `{trial}`), {score}.",
            },
        )
        return run_id

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
        self.names: dict[str, str] = {}  # renamed keys whose emg.name. tag is not sent yet
        self.named: set[str] = set()  # ... and those whose tag is

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer ``metrics`` under valid keys (:func:`mlflow_key`): a key built from any data
        name is taken, so a unit's metrics are never refused after minutes of training."""
        ts = int(time.time() * 1000)
        keys = {k: mlflow_key(k) for k in metrics}
        self.names |= {m: k for k, m in keys.items() if m != k and m not in self.named}
        self.buffer += [Metric(keys[k], float(v), ts, step) for k, v in metrics.items()]
        if len(self.buffer) >= self.every:
            self.flush(raise_errors=False)

    def flush(self, raise_errors: bool = True) -> None:
        if self.names:
            try:
                self.tracker._send_tags(self.run_id, name_tags(self.names))
            except _TRANSIENT:
                if raise_errors:
                    raise
                print("tracking: flush failed, keeping metrics for the next one", file=sys.stderr)
                return
            self.named |= set(self.names)
            self.names = {}
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
    tr: Mapping[str, Any], params: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> tuple[Tracker, str, MetricLogger]:
    """A trial's run (rank 0): found again by its key or created under its parent, with params.

    ``tr`` is a trial spec's ``tracking``: ``uri``, ``experiment_id``, ``key``, ``name``,
    ``tags``, ``parent``, and ``searched``: the keys its stage searches, whose values in
    ``overrides`` name the run (``lr=0.001 loss=vicreg``, :func:`run_label`; the trial id stays
    in the ``emg.trial`` tag) and are logged twice: among all the config's params, and again
    as ``searched.<key>`` with the tag ``emg.searched`` listing the keys. Why a prefix rather
    than tags only: MLflow's runs table and compare view list params alphabetically, ~55 of them
    per trial, with no way to mark some; ``searched.*`` params sit together there, are what the
    sweep's saved view shows as columns, and filter like any param
    (``params.`searched.kinembed.lr` = '0.001'``), while a tag would hold the value as text
    apart from the other params it is compared with.
    """
    searched = {k: (overrides or {})[k] for k in tr.get("searched") or () if k in (overrides or {})}
    name, tags = tr["name"], dict(tr["tags"])
    if searched:
        name = run_label(searched)
        tags["emg.searched"] = ",".join(searched)[:PARAM_MAX]
    tracker = Tracker(tr["uri"])
    run_id = tracker.open_run(tr["experiment_id"], tr["key"], name, tags, tr["parent"])
    # the searched values as the config resolved them (the same text as their plain params)
    mine = {f"{SEARCHED}{k}": params.get(k, v) for k, v in searched.items()}
    tracker.log_params(run_id, {**params, **mine})
    return tracker, run_id, tracker.logger(run_id)


def end_with_error(tracker: Tracker, run_id: str, log: MetricLogger, e: BaseException) -> None:
    """End a trial's run on an exception: KILLED for interrupts, else FAILED, with the error."""
    status = "KILLED" if isinstance(e, KeyboardInterrupt | SystemExit) else "FAILED"
    log.flush(raise_errors=False)
    tracker.set_tags(run_id, {"emg.error": f"{type(e).__name__}: {e}"[:5000]})
    tracker.end(run_id, status)


EXAMPLE_BATCH = 4  # least batch of a logged model's input example


def example_batch(x: Any, n: int = EXAMPLE_BATCH, cap: int = 64) -> Any:
    """A representative input example of a model to log: the first ``cap`` windows (rows) of
    ``x``, repeated to at least ``n`` when fewer. MLflow's export fixes every dimension whose
    example size is 1, so a one-window example would give a champion that only ever takes one
    window (and can never be scored again on a batch)."""
    import numpy as np

    x = x[:cap]
    if 0 < len(x) < n:
        if isinstance(x, np.ndarray):
            x = np.concatenate([x] * -(-n // len(x)))
        else:  # a torch tensor
            import torch

            x = torch.cat([x] * -(-n // len(x)))
    return x


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
            input_example=example_batch(input_example),
            extra_files=[str(f) for f in extra_files] or None,
        )
    version = retry(mlflow.register_model, info.model_uri, name, tags=dict(tags))
    return info.model_uri, str(version.version)


def register(
    run_id: str,
    model: Any,
    input_example: Any,
    name: str,
    selection: Score,
    champion_selection: float | None,
    test: Score,
    tags: Mapping[str, str],
    extra_files: Sequence[str | Path] = (),
) -> tuple[str, bool]:
    """Log and register ``model``; move ``name@champion`` to it only if it earns it.

    The champion rule (README, "The registry"): the new version must beat the current champion
    on the **selection** split (validation data fixed per data set, never the reported test
    split), ``champion_selection`` being the champion's score on that same split (None: no
    champion yet; NaN: not comparable, the alias stays; a tie keeps the champion). And it must
    beat the trivial baseline of its task on the selection split and on the test split: a model
    worse than predicting the mean is registered and flagged (``below_trivial``) but never
    champion. The test split can only veto, never choose between models, so repeated sweeps
    cannot select on test data. The comparison and the move are atomic per model name
    (:func:`move_champion`): when another sweep moved the champion since the caller scored it,
    the new champion's recorded score decides, and the version's ``became_champion``,
    ``champion_<metric>`` and ``reason`` tags say so. Returns ``(version, became champion)``.
    """
    floor_ok = selection.beats_trivial() and test.beats_trivial()
    promote = floor_ok and beats_champion(selection.value, champion_selection, selection.mode)
    old = math.nan if champion_selection is None else champion_selection
    all_tags = {
        **selection.tags("selection"),
        **test.tags("test"),
        "selection_metric": selection.metric,
        "test_metric": test.metric,
        f"champion_{selection.metric}": exact(old),
        "below_trivial": str(not floor_ok).lower(),
        "became_champion": str(promote).lower(),
        **tags,
    }
    uri, version = log_model_version(run_id, model, input_example, name, all_tags, extra_files)
    client = MlflowClient(
        tracking_uri=mlflow.get_tracking_uri(), registry_uri=mlflow.get_registry_uri()
    )
    moved, now_old, note = move_champion(
        client, name, version, selection, champion_selection, floor_ok
    )
    reason = tags.get("reason", "")
    if note:  # the champion changed while this version was trained and logged: say what won
        reason = f"{reason}; {note}".strip("; ")[:5000]
        fixed = {
            f"champion_{selection.metric}": exact(math.nan if now_old is None else now_old),
            "became_champion": str(moved).lower(),
            "reason": reason,
        }
        for k, v in fixed.items():
            retry(client.set_model_version_tag, name, version, k, v)
    try:  # what the registry page shows; a model is registered whether or not this is said
        describe(client, name, run_id, uri, input_example, selection, extra_files)
        text = version_description(
            tags.get("sweep", ""), run_id, selection, test, moved, reason or "-"
        )
        retry(client.update_model_version, name, version, description=text)
    except _TRANSIENT as e:
        print(f"tracking: {name} v{version} left undescribed ({_line(e)})", file=sys.stderr)
    return version, moved


DESCRIBED = "emg.description_sha256"  # registered-model tag: the digest of what was written


def describe(
    client: MlflowClient,
    name: str,
    run_id: str,
    model_uri: str,
    example: Any,
    selection: Score,
    extra_files: Sequence[str | Path] = (),
) -> bool:
    """Give registered model ``name`` its description (:func:`model_description`, from the
    method of ``run_id``, the run that registered it, and the logged model's signature), unless
    someone wrote another since: a description is written when there is none or when it is
    still the one this function wrote (its digest is the model's ``emg.description_sha256``
    tag). Returns whether it was written."""
    model = retry(client.get_registered_model, name)
    current = model.description or ""
    digest = hashlib.sha256(current.encode()).hexdigest()
    if current and model.tags.get(DESCRIBED) != digest:
        return False  # a person's description: kept
    method = method_of(name, retry(client.get_run, run_id).data.tags.get("emg.method", name))
    takes, returns = _signature_text(model_uri, example_batch(example))
    files = [Path(f).name for f in extra_files]
    text = model_description(name, method, takes, returns, files, selection)
    retry(client.update_registered_model, name, description=text)
    new = hashlib.sha256(text.encode()).hexdigest()
    retry(client.set_registered_model_tag, name, DESCRIBED, new)
    return True


_compared: dict[str, str | None] = {}  # model name -> the champion version last scored here


def move_champion(
    client: MlflowClient,
    name: str,
    version: str,
    selection: Score,
    champion_selection: float | None,
    floor_ok: bool,
) -> tuple[bool, float | None, str]:
    """Move ``name@champion`` to registered ``version`` if it beats the champion (and the
    trivial floor, ``floor_ok``): :func:`register`'s last step, atomic per model name.

    Two sweeps finishing together both scored the same old champion; without this both would
    promote and the alias would end on whichever moved last, the worse one maybe. So the
    decision is made again here, under a lock per (store, model name) for local stores, against
    the champion as it is now: when it is no longer the version the caller scored
    (:func:`rescore_champion` / :func:`recorded_champion` remember it), the new champion's
    recorded selection score is compared instead. Right before the alias moves it is read once
    more (for a server, where no lock spans machines) and the decision retried if it moved.
    Returns ``(moved, the champion score compared, a note when the champion had moved)``.
    """
    compared = _compared.pop(name, "?")  # "?": the caller scored whatever is champion now
    old, note = champion_selection, ""
    with _registry_lock(mlflow.get_tracking_uri(), name):
        for _ in range(5):
            current = champion(client, name)
            now = None if current is None else str(current.version)
            if compared == "?":
                compared = now
            if now != compared:  # re-read the new champion's recorded score
                old, why = _recorded(current, selection)
                was = "no champion" if compared is None else f"v{compared}"
                note = f"the champion moved from {was} while v{version} was registered: {why}"
                compared = now
            if not (floor_ok and beats_champion(selection.value, old, selection.mode)):
                return False, old, note
            again = champion(client, name)
            if (None if again is None else str(again.version)) != now:
                continue  # moved in between (no lock across machines): decide again
            retry(client.set_registered_model_alias, name, "champion", version)
            return True, old, note
    return False, old, f"{note}; the champion kept moving, left as it is".strip("; ")


def _registry_lock(uri: str, name: str) -> Any:
    """A file lock per (local store, model name); a server's store gets none (see
    :func:`move_champion`'s re-check)."""
    from filelock import FileLock

    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    if uri.startswith("sqlite:///"):
        return FileLock(f"{uri.removeprefix('sqlite:///')}.registry-{digest}.lock", timeout=_LOCK_S)
    if uri.startswith("file:"):
        folder = Path(urllib.parse.urlparse(uri).path)
        return FileLock(str(folder / f".registry-{digest}.lock"), timeout=_LOCK_S)
    return contextlib.nullcontext()


def champion_reason(
    selection: Score, test: Score, champion_selection: float | None, why: str
) -> str:
    """The registry decision in words (the summary screen and the ``reason`` tag)."""
    for s, role in ((selection, "selection"), (test, "test")):
        if not s.beats_trivial():
            return (
                f"{s.metric} {s.value:.4f} on the {role} split does not beat the trivial "
                f"baseline's {s.trivial:.4f}: flagged below_trivial, never champion; {why}"
            )
    return why


def beats_champion(score: float, champion_score: float | None, mode: str = "max") -> bool:
    """The champion rule: no champion yet, or strictly better on the same evaluation (higher for
    ``mode="max"``, lower for ``"min"``); a champion that could not be scored (NaN) stays."""
    return better(score, champion_score, mode)


def champion(client: MlflowClient, name: str) -> Any | None:
    """``name@champion``, or None when the model or its alias does not exist. Other errors are
    retried, then raised: a store that does not answer must not read as "no champion", or the
    next version registered would take the alias whatever it scores."""

    def get() -> Any | None:
        try:
            return client.get_model_version_by_alias(name, "champion")
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    return retry(get)


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
    _compared[name] = None if current is None else str(current.version)  # see move_champion
    if current is None:
        return None, "no champion yet"
    try:
        import torch

        # the version read above, not the alias: it may move meanwhile (see move_champion)
        model = (load or load_model)(f"models:/{name}/{current.version}")
        with torch.no_grad():
            old = float(score(model))
    except Exception as e:  # not comparable: the alias stays (see beats_champion)
        return math.nan, f"champion v{current.version} cannot be evaluated on {where}: {e}"[:500]
    return old, f"champion v{current.version} scores {old:.4f} on {where}"


def recorded_champion(
    client: MlflowClient, name: str, selection: Score
) -> tuple[float | None, str]:
    """``name@champion``'s selection score as recorded on its version, for models that cannot
    be scored again (KinEMbed's score is a configuration's session CV; encoders alone have no
    score): ``(None, why)`` without a champion, ``(NaN, why)`` when it was selected on another
    split or metric (not comparable: the alias stays), else ``(score, why)``."""
    current = champion(client, name)
    _compared[name] = None if current is None else str(current.version)  # see move_champion
    return _recorded(current, selection)


def _recorded(current: Any | None, selection: Score) -> tuple[float | None, str]:
    if current is None:
        return None, "no champion yet"
    tags = current.tags
    # versions registered before the score tags were prefixed carry the bare metric name
    key = next((k for k in (f"registered_{selection.metric}", selection.metric) if k in tags), "")
    if tags.get("selection_split") != selection.split or not key:
        where = tags.get("selection_split", "an unrecorded split")
        return math.nan, f"champion v{current.version} was selected on {where}: not comparable"
    old = float(tags[key])
    return old, f"champion v{current.version} scored {old:.4f} on the same selection split"


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
