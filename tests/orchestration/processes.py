"""Servers the slow tests start as a user would, and stop again without touching anyone else's:
Ray nodes (``ray start``, each under its own temp dir), PostgreSQL (Debian's, in a temporary data
directory), ``ray job submit``.

Ray's own CLI stop command ends every Ray cluster on the machine, so it is never used: a node's
processes are the ones whose command line names its temp dir, and their descendants (the
dashboard and runtime-env agents and the workers rename themselves and name no folder).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


_GIVEN: set[int] = set()


def free_port() -> int:
    """A TCP port free on every interface, outside the kernel's ephemeral range and Ray's worker
    ports (10002-19999), not given out before by this process.

    Not the kernel's pick (bind to port 0): that is an ephemeral port, which any process that
    connects somewhere may be handed next. Ray's own processes open dozens of connections while a
    node starts, and one took the dashboard agent's port in CI, so every job submission answered
    "No available agent".
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        port = rng.randrange(20000, max(low, 20001))
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError(f"no free TCP port between 20000 and {low}")


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            out.setdefault(ppid, []).append(int(stat.parent.name))
    return out


def node_pids(*needles: str) -> list[int]:
    """The processes whose command line names any of ``needles`` (a node's temp dir; the head's
    GCS address for its Ray client server), with all their descendants; never this process."""
    roots = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            line = cmd.read_bytes()
            if any(n.encode() in line for n in needles):
                roots.append(int(cmd.parent.name))
    tree, seen, todo = _children(), set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += tree.get(pid, [])
    return sorted(seen - {os.getpid()})


def alive(pid: int) -> bool:
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_node(*needles: str, sig: int = signal.SIGKILL, wait_s: float = 15) -> list[int]:
    """Send ``sig`` to every process of the node ``needles`` name (:func:`node_pids`, the whole
    tree taken before any is signalled); SIGKILL is a node lost at once. Returns the PIDs."""
    pids = node_pids(*needles)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.time() + wait_s
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    return pids


def stop_own_ray(temp_dir: Path, *needles: str) -> None:
    """Stop the Ray node(s) started with ``--temp-dir=temp_dir`` and no other: SIGTERM (Ray
    ends its workers), then SIGKILL what is left; the folder goes too."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        kill_node(str(temp_dir), *needles, sig=sig)
    shutil.rmtree(temp_dir, ignore_errors=True)


def submit(dashboard: str, argv: list[str], env: dict, cwd: Path, timeout: float, **kw):
    """``ray job submit --address DASHBOARD --working-dir . -- ARGV`` from ``cwd``, retried
    while the node's agent is not up yet: ``ray start`` can return before it serves HTTP, and
    every submission then answers "No available agent" (Ray 2.60 dashboard/agent.py)."""
    deadline = time.time() + 120
    cmd = [str(BIN / "ray"), "job", "submit", "--address", dashboard, "--working-dir", "."]
    while True:
        out = subprocess.run(
            [*cmd, "--", *argv], env=env, cwd=cwd, capture_output=True, text=True,
            timeout=timeout, **kw,
        )  # fmt: skip
        if "No available agent to submit job" not in out.stdout + out.stderr:
            return out
        if time.time() > deadline:
            return out
        time.sleep(3)


PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A real PostgreSQL server (Debian's ``postgresql``) on 127.0.0.1 in a temporary data
    directory, with an empty database ``mlflow``; yields its SQLAlchemy URI (psycopg 3).
    Run as the ``postgres`` user when this process is root (the server refuses root). Skips
    with a reason when PostgreSQL is not installed (``.ci/run`` installs it)."""
    if PG_BIN is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    import psycopg

    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="emg-pg-", dir="/tmp"))  # short: socket path limit
    folder.chmod(0o755)  # the postgres user reaches its data and socket through it
    data = folder / "data"
    data.mkdir(mode=0o700)
    if as_user:
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(folder, "postgres", "postgres")
    port = free_port()
    run = dict(check=True, capture_output=True, timeout=120)
    pg_ctl = [*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run(
            [*as_user, str(PG_BIN / "initdb"), "-D", str(data), "-U", "emg", "--auth=trust",
             "-E", "UTF8", "--no-sync"], **run,
        )  # fmt: skip
        subprocess.run(
            [*pg_ctl, "-l", str(folder / "server.log"), "-w", "-t", "60",
             "-o", f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off", "start"], **run,
        )  # fmt: skip
        with psycopg.connect(f"postgresql://emg@127.0.0.1:{port}/postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE mlflow")
        yield f"postgresql+psycopg://emg@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
