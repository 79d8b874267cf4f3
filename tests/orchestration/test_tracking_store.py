"""The tracking store under races and in every state a user can reach: real SQLite files, real
MLflow stores and real concurrent processes (issue 15, "Reliability")."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestration import tracking

pytestmark = pytest.mark.mlflow

ROOT = Path(__file__).resolve().parents[2]


def _together(tmp_path: Path, code: str, n: int, timeout: float = 240.0) -> list[str]:
    """Run ``code`` in ``n`` fresh Python processes released at the same moment (after each has
    imported MLflow, which takes seconds); ``i`` is the process's index. Returns each one's
    output; a process that fails fails the test with its output."""
    go = tmp_path / "go"
    prelude = (
        "import sys, time\n"
        "from pathlib import Path\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from orchestration import tracking\n"
        "i = int(sys.argv[1])\n"
        f"Path({str(tmp_path)!r}, f'ready{{i}}').touch()\n"
        f"while not Path({str(go)!r}).exists():\n"
        "    time.sleep(0.01)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", prelude + code, str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(n)
    ]
    try:
        deadline = time.time() + timeout
        while not all((tmp_path / f"ready{i}").exists() for i in range(n)):
            assert time.time() < deadline, "the processes did not start"
            assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
            time.sleep(0.05)
        go.touch()
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outs


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as c:
        return {r[0] for r in c.execute("select name from sqlite_master where type = 'table'")}


@pytest.mark.slow
def test_new_sqlite_store_opened_by_four_processes_at_once(tmp_path):
    db = tmp_path / "new.db"
    uri = f"sqlite:///{db}"
    code = (
        f"t = tracking.Tracker({uri!r})\n"
        "exp = t.experiment('race')\n"
        "run = t.open_run(exp, f'k{i}', f'run {i}', {})\n"
        "t.end(run)\n"
        "print('ok', exp)\n"
    )
    outs = _together(tmp_path, code, 4)
    assert len({o.split()[-1] for o in outs}) == 1  # one experiment, found by all four
    assert not [t for t in _tables(db) if t.startswith("_alembic_tmp")]
    t = tracking.Tracker(uri)
    runs = t.client.search_runs([t.experiment("race")])
    assert sorted(r.data.tags[tracking.KEY] for r in runs) == ["k0", "k1", "k2", "k3"]
    assert not list(tmp_path.glob("new.db.init*"))  # no initialisation copy left behind


@pytest.mark.slow
def test_store_creation_killed_midway_leaves_no_half_migrated_file(tmp_path):
    db = tmp_path / "new.db"
    uri = f"sqlite:///{db}"
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r})\nfrom orchestration import tracking\n"
    proc = subprocess.Popen([sys.executable, "-c", code + f"tracking.check_reachable({uri!r})"])
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob("new.db.init*")):  # the migration has begun
            assert proc.poll() is None and time.time() < deadline, "it never started creating"
            time.sleep(0.005)
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not db.exists()  # absent, never half-made
    tracking.check_reachable(uri)  # the next use creates it whole, and tidies the copy away
    assert "experiments" in _tables(db)
    assert not [t for t in _tables(db) if t.startswith("_alembic_tmp")]
    assert not list(tmp_path.glob("new.db.init*"))


# -- every state of the backend a user can reach: one line naming the URI and what to do ---------


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, empty MLflow SQLite store, made once: each case that needs one copies it."""
    db = tmp_path_factory.mktemp("template") / "template.db"
    tracking.check_reachable(f"sqlite:///{db}")
    return db


def _copy(template: Path, to: Path) -> Path:
    to.write_bytes(template.read_bytes())
    return to


def _sql(db: Path, *statements: str) -> None:
    with sqlite3.connect(db) as c:
        for s in statements:
            c.execute(s)
    c.close()


def _unknown_scheme(tmp: Path, template: Path) -> tuple[str, str]:
    uri = f"sqlit:///{tmp}/x.db"
    return uri, (
        f"tracking URI {uri} has an unknown scheme 'sqlit:': use sqlite:///<path>.db, "
        "http(s)://<server> or a database URL (postgresql://, mysql://, mssql://)"
    )


def _ftp(tmp: Path, template: Path) -> tuple[str, str]:
    uri = "ftp://example.org/mlflow"
    return uri, (
        f"tracking URI {uri} has an unknown scheme 'ftp:': use sqlite:///<path>.db, "
        "http(s)://<server> or a database URL (postgresql://, mysql://, mssql://)"
    )


def _in_memory(tmp: Path, template: Path) -> tuple[str, str]:
    uri = "sqlite:///:memory:"
    return uri, (
        f"tracking URI {uri} is not a SQLite file: Ray workers need a file, pass "
        "sqlite:///<path>.db"
    )


def _no_path(tmp: Path, template: Path) -> tuple[str, str]:
    uri = "sqlite://"
    return uri, (
        f"tracking URI {uri} is not a SQLite file: Ray workers need a file, pass "
        "sqlite:///<path>.db"
    )


def _missing_folder(tmp: Path, template: Path) -> tuple[str, str]:
    uri = f"sqlite:///{tmp}/nope/m.db"
    return uri, (
        f"tracking database folder {tmp}/nope does not exist ({uri}): create it or pass "
        "another --tracking-uri"
    )


def _read_only_folder(tmp: Path, template: Path) -> tuple[str, str]:
    folder = tmp / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):  # root ignores permissions; a read-only mount does not
        folder = Path("/proc/sys")
        if os.access(folder, os.W_OK):
            pytest.skip("no read-only folder here (running as root)")
    uri = f"sqlite:///{folder}/m.db"
    return uri, (
        f"tracking database folder {folder} is not writable ({uri}): fix its permissions or "
        "pass another --tracking-uri"
    )


def _folder_as_db(tmp: Path, template: Path) -> tuple[str, str]:
    (tmp / "m.db").mkdir()
    uri = f"sqlite:///{tmp}/m.db"
    return (
        uri,
        f"tracking database {tmp}/m.db is a folder, not a SQLite file: pass sqlite:///<path>.db",
    )


def _not_sqlite(tmp: Path, template: Path) -> tuple[str, str]:
    (tmp / "m.db").write_text("id,score\n1,0.5\n")
    uri = f"sqlite:///{tmp}/m.db"
    return uri, (
        f"tracking database {tmp}/m.db is not a SQLite database: move it away or pass "
        "another --tracking-uri"
    )


def _truncated(tmp: Path, template: Path) -> tuple[str, str]:
    (tmp / "m.db").write_bytes(template.read_bytes()[:4096])  # a copy cut short
    uri = f"sqlite:///{tmp}/m.db"
    return uri, (
        f"tracking database {tmp}/m.db cannot be read (database disk image is malformed): "
        "is it damaged?"
    )


def _other_sqlite(tmp: Path, template: Path) -> tuple[str, str]:
    _sql(tmp / "m.db", "create table scores (id integer, r2 real)")
    uri = f"sqlite:///{tmp}/m.db"
    return uri, (
        f"tracking database {tmp}/m.db is a SQLite database but not an MLflow store: pass "
        "another --tracking-uri"
    )


def _half_migrated(tmp: Path, template: Path) -> tuple[str, str]:
    db = _copy(template, tmp / "m.db")
    _sql(db, "create table _alembic_tmp_params (key varchar(250), value varchar(8000))")
    uri = f"sqlite:///{db}"
    return uri, (
        f"tracking database {db} was left half-migrated by an interrupted MLflow schema "
        "migration (table _alembic_tmp_params): restore a backup, or move it away to start a "
        "new store"
    )


def _old_schema(tmp: Path, template: Path) -> tuple[str, str]:
    import mlflow
    from mlflow.store.db.utils import _get_latest_schema_revision

    db = _copy(template, tmp / "m.db")
    _sql(db, "update alembic_version set version_num = '451aebb31d03'")  # MLflow 1.x's
    uri = f"sqlite:///{db}"
    return uri, (
        f"tracking database {db} has MLflow schema 451aebb31d03, this MLflow "
        f"{mlflow.__version__} needs {_get_latest_schema_revision()}: back it up, then run "
        f"'mlflow db upgrade {uri}' (or use the MLflow that wrote it)"
    )


def _read_only_file(tmp: Path, template: Path) -> tuple[str, str]:
    db = _copy(template, tmp / "m.db")
    db.chmod(0o400)
    if os.access(db, os.W_OK):
        pytest.skip("root can write any file")
    uri = f"sqlite:///{db}"
    return uri, (
        f"tracking database {db} is not writable: fix its permissions or pass another "
        "--tracking-uri"
    )


def _file_store(tmp: Path, template: Path) -> tuple[str, str]:
    uri = (tmp / "mlruns").as_uri()
    return uri, (
        f"tracking URI {uri} is a file store, which MLflow 3 refuses (maintenance mode): "
        "convert it with 'mlflow migrate-filestore' and pass sqlite:///<path>.db, or set "
        "MLFLOW_ALLOW_FILE_STORE=true"
    )


def _missing_driver(tmp: Path, template: Path) -> tuple[str, str]:
    try:  # MySQL's driver is no dependency of the project (PostgreSQL's is: the cluster extra)
        import MySQLdb  # noqa: F401

        pytest.skip("MySQLdb is installed here")
    except ImportError:
        pass
    uri = "mysql://mlflow@127.0.0.1:1/mlflow"
    return uri, f"tracking store {uri} cannot be used: No module named 'MySQLdb'"


def _not_mlflow_server(tmp: Path, template: Path) -> tuple[str, str]:
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    return uri, (
        f"tracking server {uri} answered 404 on /health: is it an MLflow server? Pass "
        "--tracking-uri / MLFLOW_TRACKING_URI"
    )


BAD_STORES = [
    _unknown_scheme,
    _ftp,
    _in_memory,
    _no_path,
    _missing_folder,
    _read_only_folder,
    _folder_as_db,
    _not_sqlite,
    _truncated,
    _other_sqlite,
    _half_migrated,
    _old_schema,
    _read_only_file,
    _file_store,
    _missing_driver,
    _not_mlflow_server,
]


@pytest.mark.parametrize("case", BAD_STORES, ids=[f.__name__.strip("_") for f in BAD_STORES])
def test_bad_tracking_store_is_one_line_naming_it(case, tmp_path, mlflow_db, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)  # the server case serves this folder (no /health in it)
    uri, want = case(tmp_path, mlflow_db)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(tracking.TrackingUnavailable) as err:
        tracking.check_reachable(uri)
    assert str(err.value) == want
    assert "\n" not in want
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written on refusal


def test_deleted_experiment_is_one_line_saying_how_to_restore(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    t = tracking.Tracker(uri)
    exp = t.experiment("kinembed")
    t.client.delete_experiment(exp)
    want = (
        f"experiment 'kinembed' (id {exp}) in {uri} is deleted: restore it "
        f"(MLFLOW_TRACKING_URI={uri} mlflow experiments restore --experiment-id {exp}) or pass "
        "--experiment with another name"
    )
    for call in (t.check_experiment, t.experiment):  # both refuse before any run is opened
        with pytest.raises(tracking.TrackingUnavailable) as err:
            call("kinembed")
        assert str(err.value) == want
    assert t.check_experiment("other") is None  # a new name is fine
    t.client.restore_experiment(exp)  # restored: used again
    assert t.experiment("kinembed") == exp


def _deleted_experiment(tmp: Path, template: Path) -> tuple[str, str]:
    db = _copy(template, tmp / "m.db")
    uri = f"sqlite:///{db}"
    t = tracking.Tracker(uri)
    exp = t.experiment("kinembed")
    t.client.delete_experiment(exp)
    return uri, (
        f"experiment 'kinembed' (id {exp}) in {uri} is deleted: restore it "
        f"(MLFLOW_TRACKING_URI={uri} mlflow experiments restore --experiment-id {exp}) or pass "
        "--experiment with another name"
    )


SWEEP_CASES = [_unknown_scheme, _not_sqlite, _half_migrated, _file_store, _deleted_experiment]


@pytest.mark.parametrize("case", SWEEP_CASES, ids=[f.__name__.strip("_") for f in SWEEP_CASES])
def test_sweep_stops_on_a_bad_store_before_ray(case, tmp_path, mlflow_db, monkeypatch, capsys):
    import ray

    from orchestration import sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri, want = case(tmp_path, mlflow_db)
    assert sweep.main(["kinembed", "--smoke", "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err == f"error: {want}\n"
    assert not ray.is_initialized() and not (tmp_path / "ray_results").exists()


@pytest.mark.parametrize(
    ("given", "want"),
    [
        ("sqlite:///m.db", "sqlite:///{cwd}/m.db"),  # Ray workers run in other folders
        ("sqlite:////abs/m.db", "sqlite:////abs/m.db"),
        ("./mlruns", "file://{cwd}/mlruns"),  # a plain path is a file store, made absolute
        ("file:mlruns", "file://{cwd}/mlruns"),
        ("file:///abs/mlruns", "file:///abs/mlruns"),
        ("http://mlflow.internal:5000", "http://mlflow.internal:5000"),
        ("databricks", "databricks"),  # a bare scheme MLflow knows is no path
        ("postgresql://u@db/mlflow", "postgresql://u@db/mlflow"),
    ],
)
def test_tracking_uri_is_resolved_for_every_process(given, want, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_uri(given) == want.format(cwd=tmp_path.resolve())
