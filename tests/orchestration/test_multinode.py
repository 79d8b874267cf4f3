"""A real multi-node run on this machine, started as a user starts one on a cluster (issue 19).

- Ray: a head (``ray start --head --num-cpus=0``: nothing trains there) and a worker node
  (``ray start --address ...``, its own temp dir and TMPDIR, 8 logical CPUs and one *declared*
  GPU: ``--num-gpus=1`` on a machine without one), all on 127.0.0.1.
- MLflow: a real ``mlflow server`` on a real PostgreSQL (Debian's, in a temporary data
  directory), artifacts proxied by the server into a folder of its own.
- ``--storage-path``: one folder both nodes see, the stand-in for NFS.
- The sweep is submitted with ``ray job submit``. One stage of four points, ``--gpus-per-worker
  0.25``: four one-worker trials share the one GPU, and train on CPU (no CUDA).

The second sweep loses its worker node mid-trial (every process of it SIGKILLed, by PID), and a
fresh node joins, as an autoscaler would bring one: the interrupted trials resume from their last
checkpoint there and end with exactly the results of the uninterrupted sweep.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.orchestration.processes import (
    BIN,
    free_port,
    kill_node,
    node_pids,
    postgres,
    stop_own_ray,
    submit,
)
from tests.orchestration.test_sweep import ROOT, _env
from tests.orchestration.test_tracking import start_server, stop_server

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.mlflow]

# One stage, four points: the packing shows when all four trials run at once on one GPU.
SPACE = """\
method: kinembed
metric: cv_r2
mode: max
subjects: [s00]
stages:
  - name: loss
    grid:
      kinembed.temperature: [0.05, 0.1, 0.2, 0.5]
"""


class Cluster:
    """The head, worker nodes, PostgreSQL, the tracking server and the shared folder. Built by
    :meth:`up`, so that :meth:`close` stops whatever did start when a later step fails."""

    def __init__(self, tmp: Path, pg_uri: str):
        self.tmp, self.pg_uri = tmp, pg_uri
        self.shared = tmp / "shared"  # --storage-path: every node sees it (NFS's stand-in)
        self.artifacts = tmp / "mlartifacts"  # the tracking server's, proxied
        self.env = _env(EMGCORE_CACHE=str(tmp / "cache"))
        self.port, self.dash, self.client = free_port(), free_port(), free_port()
        self.temps: dict[str, Path] = {}
        self.ids: dict[str, str] = {}  # Ray node ids
        self.server: subprocess.Popen | None = None
        self.uri = ""

    def up(self) -> None:
        port = free_port()
        self.server = start_server(self.pg_uri, str(self.artifacts), port)
        self.uri = f"http://127.0.0.1:{port}"
        # the head's Ray client server on a port of its own (the default, 10001, is any head's)
        self.start("head", "--head", f"--port={self.port}", "--num-cpus=0",
                   "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                   f"--dashboard-port={self.dash}", f"--ray-client-server-port={self.client}",
                   f"--dashboard-agent-listen-port={free_port()}")  # fmt: skip
        self.start_worker("a")

    def start_worker(self, name: str) -> None:
        """A worker node: 8 logical CPUs, so that only its one declared GPU limits trials of
        --gpus-per-worker 0.25 to four at once."""
        self.start(name, f"--address=127.0.0.1:{self.port}", "--num-cpus=8", "--num-gpus=1")

    def start(self, name: str, *args: str) -> None:
        """``ray start ARGS`` as node ``name`` under its own temp dir, with its own TMPDIR (the
        node's local disk); its node id once it has joined."""
        known = set(self.nodes()) if self.temps else set()
        # a short folder: Ray's socket paths have a length limit
        temp = Path(tempfile.mkdtemp(prefix=f"mn{name}", dir="/tmp"))
        self.temps[name] = temp
        (temp / "local").mkdir()
        out = subprocess.run(
            [str(BIN / "ray"), "start", *args, "--node-ip-address=127.0.0.1",
             "--disable-usage-stats", f"--temp-dir={temp}"],
            env={**self.env, "TMPDIR": str(temp / "local")}, cwd=self.tmp, capture_output=True,
            text=True, timeout=180,
        )  # fmt: skip
        assert out.returncode == 0, f"ray start {name}: {out.stderr[-3000:]}"
        deadline = time.time() + 120
        while not (new := [i for i, n in self.nodes().items() if i not in known]):
            assert time.time() < deadline, f"node {name} did not join"
            time.sleep(1)
        self.ids[name] = new[0]

    def nodes(self) -> dict[str, dict]:
        """Every node the cluster knows, alive or dead, by node id."""
        out = subprocess.run(
            [str(BIN / "ray"), "list", "nodes", "--address", f"http://127.0.0.1:{self.dash}",
             "--format", "json", "--detail"],
            env=self.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if "[" not in out.stdout:  # the dashboard is not up yet
            return {}
        return {n["node_id"]: n for n in json.loads(out.stdout[out.stdout.index("[") :])}

    def sweep(self, experiment: str, *extra: str, **kw) -> subprocess.CompletedProcess:
        space = self.tmp / "space.yaml"
        space.write_text(SPACE)
        argv = ["python", "orchestration/sweep.py", "kinembed", "--config", "kinembed-smoke",
                "--space", str(space), "--duration", "30", "--sim-subjects", "1",
                "--cpus-per-worker", "0.5", "--gpus-per-worker", "0.25",
                "--storage-path", str(self.shared), "--tracking-uri", self.uri,
                "--experiment", experiment, *extra]  # fmt: skip
        return submit(f"http://127.0.0.1:{self.dash}", argv, self.env, ROOT, 1500, **kw)

    def close(self) -> None:
        for name, temp in reversed(self.temps.items()):
            # the head's Ray client server names no folder, only its port
            stop_own_ray(temp, *([f"--port={self.client}\0"] if name == "head" else []))
        if self.server is not None:
            stop_server(self.server)


@pytest.fixture(scope="module")
def cluster():
    tmp = Path(tempfile.mkdtemp(prefix="emg-multinode-"))
    try:
        with postgres() as pg_uri:
            c = Cluster(tmp, pg_uri)
            try:
                c.up()
                yield c
            finally:
                c.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def clean(cluster):
    """The uninterrupted sweep: its stage, the final run and the registered champion."""
    out = cluster.sweep("clean")
    return {"out": out.stdout + out.stderr, "rc": out.returncode, "node": cluster.ids["a"]}


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _trials(uri: str, experiment: str) -> dict[str, object]:
    """The stage's trial runs, by their searched temperature."""
    c = _client(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], "tags.`emg.stage` = 'loss'", max_results=100)
    trials = [r for r in runs if "emg.trial" in r.data.tags]
    return {r.data.params["searched.kinembed.temperature"]: r for r in trials}


def _most_at_once(runs) -> int:
    """The most runs RUNNING at one instant, from their start and end times."""
    edges = sorted([(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs])
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_the_sweep_runs_on_the_worker_node_and_lands_in_postgresql(cluster, clean):
    assert clean["rc"] == 0, clean["out"][-4000:]
    # declared GPUs: four trials to the one GPU (the node's 8 CPUs would hold 16), trained on
    # CPU, said in one line
    assert "the cluster's GPUs are declared, not detected" in clean["out"]
    assert re.search(r"\b4 concurrent trial\(s\)", clean["out"]), clean["out"][-3000:]
    trials = _trials(cluster.uri, "clean")
    assert sorted(trials) == ["0.05", "0.1", "0.2", "0.5"]
    assert _most_at_once(trials.values()) == 4
    for r in trials.values():
        assert r.info.status == "FINISHED"
        assert r.data.tags["emg.device"] == "cpu"
        assert r.data.tags["emg.node"] == clean["node"]  # never the head: it has no CPU
    # the run tree, metrics and the champion are PostgreSQL's rows, not a file's
    import psycopg

    with psycopg.connect(cluster.pg_uri.replace("+psycopg", "")) as db:
        runs = dict(db.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
        assert runs.get("FINISHED", 0) >= 6  # parent, stage, 4 trials, final
        assert db.execute("SELECT count(*) FROM metrics WHERE key = 'cv_r2'").fetchone()[0] >= 4
        alias = db.execute(
            "SELECT version FROM registered_model_aliases WHERE name = 'kinembed' "
            "AND alias = 'champion'"
        ).fetchone()
        assert alias is not None
    version = _client(cluster.uri).get_model_version_by_alias("kinembed", "champion")
    assert version.version == str(alias[0])
    # artifacts went through the server into its own store
    assert list(cluster.artifacts.rglob("inference.pt"))
    # checkpoints on the shared path; none left on a node's own disk (its TMPDIR, where a
    # worker writes one before Train copies it to the storage path, and Ray's temp dir)
    assert list(cluster.shared.rglob("checkpoint_*/progress.json"))
    for temp in cluster.temps.values():
        assert not list(temp.rglob("progress.json")), temp
        assert not list(temp.rglob("checkpoint_*")), temp


def test_a_lost_worker_node_resumes_its_trials_elsewhere_with_the_same_results(cluster, clean):
    assert clean["rc"] == 0, clean["out"][-4000:]
    before = set(cluster.shared.glob("*"))
    seen: dict[str, object] = {}

    def watch() -> None:
        try:
            kill_and_replace()
        except BaseException as e:  # said by the test, not lost with this thread
            seen["error"] = e

    def kill_and_replace() -> None:
        """Kill the worker node as soon as a trial checkpointed, then start another, as an
        autoscaler replaces a lost node (Train waits for the resources, retrying every minute)."""
        deadline = time.time() + 900
        while time.time() < deadline:
            new = [d for d in cluster.shared.glob("*") if d not in before and d.is_dir()]
            # a checkpoint Train registered (its snapshot names it), not only one on disk: a
            # worker that dies before the controller polls its report restarts from scratch
            snapshots = [s for d in new for s in d.rglob("checkpoint_manager_snapshot.json")]
            with contextlib.suppress(OSError):  # a snapshot being replaced
                if any("checkpoint_" in s.read_text() for s in snapshots):
                    break
            time.sleep(0.2)
        else:
            return
        seen["killed"] = kill_node(str(cluster.temps["a"]))
        cluster.start_worker("b")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out = cluster.sweep("killed", "--skip-final")
    watcher.join(60)
    text = out.stdout + out.stderr
    if "error" in seen:
        raise seen["error"]
    assert seen.get("killed"), "no checkpoint appeared before the sweep ended"
    assert not [p for p in seen["killed"] if p in node_pids(str(cluster.temps["a"]))]
    assert out.returncode == 0, text[-4000:]
    deadline = time.time() + 120  # the GCS marks a node dead after ~15 s of failed checks
    while cluster.nodes()[clean["node"]]["state"] != "DEAD":
        assert time.time() < deadline, "the killed node is still ALIVE to the GCS"
        time.sleep(2)
    survivor = cluster.ids["b"]
    killed, reference = _trials(cluster.uri, "killed"), _trials(cluster.uri, "clean")
    assert sorted(killed) == sorted(reference)
    resumed = 0
    for t, run in killed.items():
        assert run.info.status == "FINISHED", t
        # bit for bit: units are deterministic, and a resumed trial's finished units came back
        # from the checkpoint on the shared path
        assert run.data.metrics["cv_r2"] == reference[t].data.metrics["cv_r2"], t
        if run.data.tags["emg.node"] == survivor:
            resumed += run.data.metrics.get("units_resumed", 0) > 0
    where = {
        t: (r.data.tags["emg.node"][:8], r.data.metrics.get("units_resumed"))
        for t, r in killed.items()
    }
    assert resumed >= 1, f"no trial resumed from a checkpoint on {survivor[:8]}: {where}"
