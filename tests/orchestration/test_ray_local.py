"""The laptop sweep starts its own private Ray, whatever Ray already runs on the machine (issue 15).

A ``ray start --head`` cluster (e.g. left over from trying ``ray job submit``) is found by a bare
``ray.init()`` through ``ray_current_cluster``, which then refused the sweep's ``_system_config``.
The test runs its own such cluster under a private ``RAY_TMPDIR`` (so nothing else on the machine
sees it or is touched) and stops only that cluster's processes, found by that directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_under(folder: str) -> list[int]:
    """Processes whose command line names ``folder`` (the private cluster's temp dir)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if folder in cmd:
            pids.append(int(proc.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


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
    port = _free_port()
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
        other = _pids_under(tmp)
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
        assert all(_alive(p) for p in other)  # the pre-existing cluster still runs
        assert address_file.read_text().strip() == existing
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [p for p in _pids_under(tmp) if _alive(p)]
            for p in pids:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 10
            while pids and time.time() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.2)
        shutil.rmtree(tmp, ignore_errors=True)
