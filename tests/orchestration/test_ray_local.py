"""The laptop sweep starts its own private Ray, whatever Ray already runs on the machine (issue 15).

A ``ray start --head`` cluster (e.g. left over from trying ``ray job submit``) is found by a bare
``ray.init()`` through ``ray_current_cluster``, which then refused the sweep's ``_system_config``.
The test runs its own such cluster under a private ``RAY_TMPDIR`` (so nothing else on the machine
sees it or is touched) and stops only that cluster's processes, found by that directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.orchestration.processes import alive, free_port, node_pids, stop_own_ray

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")

START_RAY = """
import ray
from orchestration.driver import Options, Sweep

sweep = Sweep.__new__(Sweep)  # only start_ray: no data, no MLflow
sweep.opts = Options(method="kinembed")
sweep.start_ray()
print("GCS", ray.get_runtime_context().gcs_address, flush=True)
ray.shutdown()
"""


@pytest.mark.slow
def test_sweep_starts_private_local_ray_beside_an_existing_cluster() -> None:
    tmp = tempfile.mkdtemp(prefix="rl", dir="/tmp")  # short: Ray's socket paths have a limit
    env = {
        **os.environ,
        "RAY_TMPDIR": tmp,
        "RAY_AUTH_MODE": "disabled",
        "PYTHONPATH": str(ROOT),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    other: list[int] = []
    try:
        subprocess.run(
            [RAY, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"],
            env=env,
            check=True,
            capture_output=True,
            timeout=180,
        )
        address_file = Path(tmp) / "ray" / "ray_current_cluster"
        assert address_file.exists()  # what a bare ray.init() would have attached to
        existing = address_file.read_text().strip()
        other = node_pids(tmp)
        assert other
        run = subprocess.run(
            [sys.executable, "-c", START_RAY],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert "started a private local Ray cluster" in run.stdout
        gcs = next(ln.split()[1] for ln in run.stdout.splitlines() if ln.startswith("GCS "))
        assert gcs != existing  # its own cluster, not the `ray start` one
        assert all(alive(p) for p in other)  # the pre-existing cluster still runs
        assert address_file.read_text().strip() == existing
    finally:
        stop_own_ray(Path(tmp))


@pytest.mark.slow
def test_a_gpu_flag_on_a_machine_without_one_is_one_line_not_a_hang(tmp_path: Path) -> None:
    """A private local Ray never gains a GPU: trials asking for one would wait forever (Train
    retries its worker group every minute). One line, exit 2, no MLflow run."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(var, None)
    out = subprocess.run(
        [sys.executable, str(ROOT / "orchestration" / "sweep.py"), "kinembed", "--smoke",
         "--gpus-per-worker", "0.5"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-3000:]
    # (above it only MLflow's own lines creating the new store)
    assert "Traceback" not in out.stderr and out.stderr.strip().splitlines()[-1:] == [
        "error: field '--gpus-per-worker': this machine has no GPU, so no trial asking for one "
        "could start: leave --gpus-per-worker out to train on CPU, or give the --address of a "
        "cluster with GPUs"
    ]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_experiment_by_name("kinembed") is None
