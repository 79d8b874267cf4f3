"""Where a sweep keeps its state, and whether the driver that wrote it is still alive.

A sweep's state (``sweep.json``: the flags that define it, each stage's winner, how it ended)
and its leaderboards, tables and plots live in ``<storage path>/<sweep id>/``, next to Ray's
trial folders, so that ``--resume`` works from any working directory and any machine that sees
the same storage path. The storage path is a local folder or a URI (``s3://``, ``gs://``,
``file://`` ...); URIs are read and written through ``pyarrow.fs``, the layer Ray Train and Tune
use for the same path. For a URI the driver writes each file into a local staging folder first
and then uploads it (MLflow logs the same local file as an artifact).

A driver that dies without running its handlers (SIGKILL, an OOM kill, a lost node) leaves its
MLflow runs RUNNING. The parent run carries ``emg.driver`` (host, pid, process start time) and
an ``emg.heartbeat`` the driver refreshes; the next start finds such sweeps with
:func:`driver_gone` and ends them KILLED (``orchestration.driver``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from emgcore.errors import EmgDataError, InvalidValueError

STATE = "sweep.json"
HEARTBEAT_S = 30.0  # how often a driver refreshes its parent run's emg.heartbeat
# a driver on another host is presumed gone once its heartbeat is this old: ten missed beats,
# so that a tracking server down for a few minutes (retried, issue 15) does not end live sweeps
STALE_S = 10 * HEARTBEAT_S


def is_uri(storage: str) -> bool:
    return "://" in storage


def new_sweep_id(method: str, now: datetime | None = None) -> str:
    """``<method>-<UTC start, to the second>-<4 random hex digits>``, e.g.
    ``kinembed-20261201-120000-1a2b``: ids sort by start time (:meth:`SweepStore.latest`), and
    two sweeps started in the same second still get different ids."""
    return f"{method}-{(now or datetime.now(UTC)):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def sweep_id_example(method: str) -> str:
    """What a sweep id looks like, for messages."""
    return f"{method}-20261201-120000-1a2b"


def _id_pattern(method: str) -> re.Pattern[str]:
    """A sweep id of ``method``: with the random suffix, or without (ids made before it)."""
    return re.compile(rf"{re.escape(method)}-(\d{{8}}-\d{{6}})(?:-[0-9a-f]{{4}})?")


class SweepStore:
    """The sweeps under one storage path: ``read``/``write`` a sweep's state, ``latest`` id of a
    method, ``publish`` a file into a sweep's folder. ``storage`` is an absolute local path or a
    URI (``pyarrow.fs.FileSystem.from_uri``); a URI's filesystem is opened on first use, so a
    store that is never touched needs no credentials."""

    def __init__(self, storage: str):
        self.storage = storage.rstrip("/")
        self._fs: Any = None
        self._root = ""

    def __repr__(self) -> str:
        return f"SweepStore({self.storage!r})"

    def _remote(self) -> tuple[Any, str]:
        if self._fs is None:
            from pyarrow import fs

            try:
                self._fs, self._root = fs.FileSystem.from_uri(self.storage)
            except (ValueError, OSError, ImportError) as e:  # ArrowInvalid is a ValueError
                raise EmgDataError(
                    f"cannot open the storage path: {e}",
                    source=self.storage,
                    field="--storage-path",
                ) from e
        return self._fs, self._root.rstrip("/")

    def dir(self, sid: str) -> str:
        """The sweep's folder as Ray's ``storage_path`` takes it (local path or URI)."""
        return f"{self.storage}/{sid}"

    def local(self, sid: str) -> Path:
        """Where the driver writes the sweep's files: the sweep's folder itself when the storage
        is local, else a staging folder (one per sweep) that :meth:`publish` uploads from."""
        if is_uri(self.storage):
            path = Path(tempfile.gettempdir()) / "emg-orchestra-sweeps" / sid
        else:
            path = Path(self.storage) / sid
        path.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, sid: str, path: Path) -> None:
        """Copy a file written under :meth:`local` into the sweep's folder (URI storage only;
        a local storage path already holds it)."""
        if not is_uri(self.storage):
            return
        fs, root = self._remote()
        fs.create_dir(f"{root}/{sid}", recursive=True)
        with fs.open_output_stream(f"{root}/{sid}/{path.name}") as out:
            out.write(path.read_bytes())

    def read(self, sid: str) -> dict | None:
        """The sweep's state, or None when the storage path holds no such sweep. Raises
        :class:`~emgcore.errors.InvalidValueError` naming the file when it is not a sweep's
        state (not JSON, or not an object with a ``sweep_id``)."""
        where = f"{self.dir(sid)}/{STATE}"
        if not is_uri(self.storage):
            path = Path(self.storage) / sid / STATE
            if not path.is_file():
                return None
            text = path.read_text()
        else:
            from pyarrow import fs as pafs

            fs, root = self._remote()
            if fs.get_file_info(f"{root}/{sid}/{STATE}").type != pafs.FileType.File:
                return None
            with fs.open_input_stream(f"{root}/{sid}/{STATE}") as f:
                text = f.read().decode()
        try:
            state = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidValueError(f"not valid JSON ({e})", source=where, field="--resume") from e
        if not isinstance(state, dict) or "sweep_id" not in state:
            msg = "not a sweep's state (no sweep_id)"
            raise InvalidValueError(msg, source=where, field="--resume")
        return state

    def write(self, sid: str, state: dict) -> None:
        """Save the state atomically (a reader never sees half a file): a local file is written
        beside and renamed; an object store replaces an object whole."""
        text = json.dumps(state, indent=1, default=str)
        try:
            local = self.local(sid) / STATE
            tmp = local.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(local)
            self.publish(sid, local)
        except (OSError, ValueError) as e:  # pyarrow's errors are OSError / ValueError
            raise EmgDataError(
                f"cannot write the sweep's state: {e}", source=self.dir(sid), field="--storage-path"
            ) from e

    def latest(self, method: str) -> str | None:
        """The newest sweep id of ``method`` here: ids sort by their UTC start second
        (:func:`new_sweep_id`); sweeps started in the same second by the ``started`` time their
        states hold."""
        prefix = f"{method}-"
        if not is_uri(self.storage):
            root = Path(self.storage)
            found = root.glob(f"{prefix}*/{STATE}") if root.is_dir() else ()
            names = [p.parent.name for p in found]
        else:
            from pyarrow import fs as pafs

            fs, root_ = self._remote()
            sel = pafs.FileSelector(root_, allow_not_found=True)
            names = [
                i.base_name
                for i in fs.get_file_info(sel)
                if i.type == pafs.FileType.Directory
                and i.base_name.startswith(prefix)
                and fs.get_file_info(f"{i.path}/{STATE}").type == pafs.FileType.File
            ]
        pattern = _id_pattern(method)
        started = {n: m.group(1) for n in names if (m := pattern.fullmatch(n))}
        if not started:
            return None
        newest = max(started.values())
        tied = sorted(n for n, t in started.items() if t == newest)
        return max(tied, key=self._started) if len(tied) > 1 else tied[0]

    def _started(self, sid: str) -> float:
        try:
            return float((self.read(sid) or {}).get("started", 0.0))
        except (InvalidValueError, TypeError, ValueError):  # not a sweep's state: oldest
            return 0.0


def driver_id() -> str:
    """``host:pid:start``: this process, told apart from a later one reusing its pid by its
    start time (``/proc``; 0 where there is none, and then the heartbeat decides)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def _start_ticks(pid: int) -> int:
    try:  # field 22 of /proc/<pid>/stat, after the parenthesised command name
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def driver_gone(driver: str, heartbeat: float | None, now: float | None = None) -> str:
    """Why the driver ``driver`` (:func:`driver_id`) is gone, or ``""`` while it may be alive.

    On this host the process table decides: gone when no process has the pid, or the one that
    has it started at another time (the pid was reused). On another host only the heartbeat
    can: gone when it is older than :data:`STALE_S` (or was never written)."""
    now = time.time() if now is None else now
    host, pid_, start_ = [*driver.split(":"), "", ""][:3]
    if host == socket.gethostname() and pid_.isdigit():
        pid, start = int(pid_), int(start_ or 0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"driver pid {pid} on {host} is gone"
        except PermissionError:
            pass  # someone else's live process holds the pid
        ticks = _start_ticks(pid)
        if start and ticks and ticks != start:
            return f"driver pid {pid} on {host} is gone (the pid now belongs to another process)"
        if start and ticks:
            return ""
    if heartbeat is None or now - heartbeat > STALE_S:
        seen = "never" if heartbeat is None else f"{now - heartbeat:.0f} s ago"
        return f"driver {host} pid {pid_} sent no heartbeat for {STALE_S:.0f} s (last: {seen})"
    return ""
