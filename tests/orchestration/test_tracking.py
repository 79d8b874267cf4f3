"""orchestration.tracking on real MLflow backends: SQLite files and a real ``mlflow server``."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from emgcore.config import PARAM_MAX, flatten
from emgcore.methods.kinembed import DecodingPipeline, ExperimentConfig
from emgcore.models.kinembed import KinEmbedConfig
from orchestration import tracking
from tests.orchestration.processes import free_port

pytestmark = pytest.mark.mlflow


def test_flatten_gives_dotted_keys_and_caps_length():
    cfg = replace(ExperimentConfig(), kinembed=KinEmbedConfig(emg_hidden=(512, 256)))
    flat = flatten(cfg)
    assert flat["kinembed.lr"] == "0.003"
    assert flat["kinembed.emg_hidden"] == "[512, 256]"
    assert flat["decoder.dilations"] == "[1, 2, 4]"
    assert not any(isinstance(v, dict) for v in flat.values())
    assert len(flatten({"x": "a" * 10_000})["x"]) == PARAM_MAX


def test_unreachable_server_is_one_clear_line():
    port = free_port()
    t0 = time.perf_counter()
    with pytest.raises(tracking.TrackingUnavailable) as err:
        tracking.check_reachable(f"http://127.0.0.1:{port}")
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "\n" not in msg and f"127.0.0.1:{port}" in msg and "unreachable" in msg


def test_sqlite_uri_is_absolute_and_artifacts_sit_beside_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.resolve_uri(None)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.artifact_root(uri) == (tmp_path.resolve() / "mlartifacts").as_uri()


def test_runs_are_found_again_by_key_not_duplicated(tmp_path):
    t = tracking.Tracker(f"sqlite:///{tmp_path}/m.db")
    exp = t.experiment("e")
    a = t.open_run(exp, "sweep/stage/trial1", "trial 1", {"emg.sweep": "s"})
    t.end(a, "KILLED")
    b = t.open_run(exp, "sweep/stage/trial1", "trial 1", {"emg.sweep": "s"})
    assert a == b and t.status(b) == "RUNNING"
    c = t.open_run(exp, "sweep/stage/trial2", "trial 2", {"emg.sweep": "s"}, parent=a)
    assert c != a
    assert t.end_orphans(exp, "emg.sweep", "s", "KILLED") == 2
    assert t.status(a) == t.status(c) == "KILLED"


def _pipeline(seed: int) -> DecodingPipeline:
    torch.manual_seed(seed)
    return DecodingPipeline.empty(ExperimentConfig(), n_features=12, n_dof=3).eval()


@pytest.mark.parametrize(
    ("score", "champ", "mode", "want"),
    [
        (0.5, None, "max", True),  # no champion yet
        (0.6, 0.5, "max", True),
        (0.4, 0.5, "max", False),
        (0.5, 0.5, "max", False),  # a tie keeps the champion
        (9.0, 10.0, "min", True),  # an error (JA-MAE in degrees): lower wins
        (11.0, 10.0, "min", False),
        (10.0, 10.0, "min", False),
        (9.0, math.nan, "min", False),  # a champion that could not be scored stays
        (math.nan, 10.0, "min", False),  # and a NaN score never takes over
    ],
)
def test_champion_rule_in_both_directions(score, champ, mode, want):
    assert tracking.beats_champion(score, champ, mode) is want


@pytest.mark.parametrize("value", [0.4583561234567, 1 / 3, -2.01, 1e-17, math.nan, math.inf])
def test_score_tags_read_back_as_the_same_float(value):
    """The champion rule compares a new score with the champion's tag read back: a tie must
    stay a tie (a 6-decimal tag made an identical rerun beat its own rounding)."""
    tags = tracking.Score("cv_r2", value, "split", value).tags("selection")
    for key in ("registered_cv_r2", "trivial_cv_r2"):
        back = float(tags[key])
        assert back == value or (math.isnan(back) and math.isnan(value))
    assert not tracking.beats_champion(value, float(tags["registered_cv_r2"]))


def test_per_seed_scores_round_trip_through_version_tags_exactly():
    """What the nightly gate reads back: every seed's score, exact, in seed order."""
    from emgcore.methods.base import seed_scores, seed_tags

    seeds = {"heldout_r2": [0.4583561234567, 1 / 3, -2.01], "val": [math.nan]}
    tags = seed_tags(seeds)
    assert set(tags) == {"seeds_heldout_r2", "seeds_val"}
    assert all(len(v) < 5000 for v in tags.values())  # MLflow's tag value limit
    assert seed_scores(tags, "heldout_r2") == tuple(seeds["heldout_r2"])
    assert math.isnan(seed_scores(tags, "val")[0])
    assert seed_scores(tags, "cv_r2") is None  # a version registered before seeds were kept


def test_champion_rule_names_a_bad_mode():
    with pytest.raises(ValueError, match="'max' or 'min'"):
        tracking.beats_champion(1.0, 0.0, "lower")


@pytest.mark.parametrize(
    ("value", "trivial", "mode", "want"),
    [
        (0.10, 0.0, "max", True),  # R^2 above the mean predictor
        (-2.01, 0.0, "max", False),  # the reviewed sweep's champion: worse than the mean
        (0.0, 0.0, "max", False),  # as good as the mean is not better
        (0.20, 0.25, "max", False),  # balanced accuracy below chance (4 classes)
        (12.0, 15.0, "min", True),  # JA-MAE below the mean pose's
        (15.5, 15.0, "min", False),
        (math.nan, 0.0, "max", False),
    ],
)
def test_trivial_baseline_is_a_floor(value, trivial, mode, want):
    assert tracking.Score("m", value, "split", trivial, mode).beats_trivial() is want


def test_champion_reason_names_the_split_that_failed_the_floor():
    sel = tracking.Score("cv_r2", 0.3, "CV", 0.0)
    test = tracking.Score("heldout_r2", -2.01, "S1/A3", 0.0)
    why = tracking.champion_reason(sel, test, 0.2, "champion v1 scored 0.2000")
    assert why.startswith("heldout_r2 -2.0100 on the test split does not beat the trivial")
    assert "never champion; champion v1 scored 0.2000" in why
    ok = tracking.Score("heldout_r2", 0.4, "S1/A3", 0.0)
    assert tracking.champion_reason(sel, ok, 0.2, "champion v1") == "champion v1"


@pytest.mark.slow
def test_champion_moves_only_on_improvement_and_loads(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    tracking.use(uri)
    t = tracking.Tracker(uri)
    exp = t.experiment("reg")
    x = np.random.default_rng(0).standard_normal((40, 12)).astype(np.float32)

    def version(
        seed: int, score: float, champ: float | None, test: float = 0.3
    ) -> tuple[str, bool]:
        run = t.open_run(exp, f"final{seed}", "final", {})
        sel = tracking.Score("cv_r2", score, "session CV A1+A2 of s0", 0.0)
        held = tracking.Score("heldout_r2", test, "s0/A3", 0.0)
        out = tracking.register(run, _pipeline(seed), x, "kin", sel, champ, held, {})
        t.end(run)
        return out

    assert version(1, 0.50, None) == ("1", True)  # no champion yet
    assert version(2, 0.40, 0.50, test=0.9) == ("2", False)  # worse where it is selected: stays
    assert version(3, 0.50, 0.50) == ("3", False)  # a tie does not move it either
    assert version(4, 0.45, math.nan) == ("4", False)  # champion not comparable: stays
    assert str(t.client.get_model_version_by_alias("kin", "champion").version) == "1"
    assert version(5, 0.60, 0.50) == ("5", True)
    champ = t.client.get_model_version_by_alias("kin", "champion")
    assert str(champ.version) == "5"
    assert champ.tags["registered_cv_r2"] == "0.6"
    assert champ.tags["registered_heldout_r2"] == "0.3"
    assert champ.tags["champion_cv_r2"] == "0.5"
    assert champ.tags["selection_split"] == "session CV A1+A2 of s0"
    assert champ.tags["test_split"] == "s0/A3" and champ.tags["below_trivial"] == "false"
    assert t.client.get_model_version("kin", "2").tags["became_champion"] == "false"
    # the champion as recorded: comparable only on the same selection split
    sel = tracking.Score("cv_r2", 0.7, "session CV A1+A2 of s0", 0.0)
    assert tracking.recorded_champion(t.client, "kin", sel) == (
        0.6,
        "champion v5 scored 0.6000 on the same selection split",
    )
    other = tracking.Score("cv_r2", 0.7, "session CV A1+A2 of s1", 0.0)
    old, why = tracking.recorded_champion(t.client, "kin", other)
    assert math.isnan(old) and "selected on session CV A1+A2 of s0: not comparable" in why
    # below the trivial baseline (R^2 0) on either split: registered, flagged, never champion
    assert version(6, 0.90, 0.60, test=-2.01) == ("6", False)
    assert t.client.get_model_version("kin", "6").tags["below_trivial"] == "true"
    assert version(7, -0.10, None) == ("7", False)  # even with no champion at all
    assert str(t.client.get_model_version_by_alias("kin", "champion").version) == "5"

    model = tracking.load_model("models:/kin@champion")
    expected = _pipeline(5)(torch.as_tensor(x)).detach().numpy()
    with torch.no_grad():
        got = np.asarray(model(torch.as_tensor(x[:25])))  # another length than the example's
    assert got.shape == (25, 3)
    np.testing.assert_allclose(got, expected[:25], rtol=1e-5, atol=1e-5)

    # the champion scored again, as the sweeps' final runs do before registering
    def mean_output(m: torch.nn.Module) -> float:
        return float(np.asarray(m(torch.as_tensor(x))).mean())

    old, why = tracking.rescore_champion(t.client, "kin", mean_output, "the same session")
    assert old == pytest.approx(float(expected.mean()), abs=1e-5)
    assert why == f"champion v5 scores {old:.4f} on the same session"
    old, why = tracking.rescore_champion(t.client, "kin", lambda m: m(torch.zeros(3, 7)), "S9")
    assert math.isnan(old) and why.startswith("champion v5 cannot be evaluated on S9: ")
    assert tracking.rescore_champion(t.client, "other", mean_output, "S9") == (
        None,
        "no champion yet",
    )
    # an identical rerun ties with the champion's score as recorded, to the last bit: it stays
    # (the tag once held 6 decimals, and 0.6123456789 beat its own rounding, 0.612346)
    assert version(8, 0.6123456789, 0.6) == ("8", True)
    recorded, _ = tracking.recorded_champion(t.client, "kin", sel)
    assert recorded == 0.6123456789
    assert version(9, 0.6123456789, recorded) == ("9", False)


def start_server(db: str, artifacts: str, port: int) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:port over ``db`` (a SQLite file, or a database URI), with
    proxied artifacts in ``artifacts``; returned once /health answers."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            db if "://" in db else f"sqlite:///{db}",
            "--artifacts-destination",
            artifacts,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # its own process group, so stop_server ends its uvicorn worker too; no job runner (7
        # more processes for MLflow's GenAI jobs, which no test here uses)
        start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError("mlflow server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    """End the ``mlflow server`` :func:`start_server` started, with every process it started (a
    SIGKILL of the ``mlflow`` process alone leaves its uvicorn worker serving the port)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


@pytest.mark.slow
def test_short_outage_is_retried_and_loses_no_metrics(tmp_path, monkeypatch):
    # MLflow's own HTTP retries off: the backoff under test is ours
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    port = free_port()
    db, art = str(tmp_path / "m.db"), str(tmp_path / "art")
    server = start_server(db, art, port)
    uri = f"http://127.0.0.1:{port}"
    t = tracking.Tracker(uri)
    exp = t.experiment("outage")
    run = t.open_run(exp, "k", "run", {})
    log = t.logger(run)
    for step in range(50):
        log.log({"loss": step * 0.5}, step)
    log.flush()
    stop_server(server)
    for step in range(50, 100):  # logged while the server is down
        log.log({"loss": step * 0.5}, step)
    restarted: list[subprocess.Popen] = []
    threading.Timer(4.0, lambda: restarted.append(start_server(db, art, port))).start()
    try:
        t0 = time.perf_counter()
        log.flush()  # retried with backoff until the server is back
        assert time.perf_counter() - t0 > 3.5
        t.end(run)
        history = t.client.get_metric_history(run, "loss")
        assert sorted(m.step for m in history) == list(range(100))
        assert {m.step: m.value for m in history}[99] == 49.5
        assert t.status(run) == "FINISHED"
    finally:
        for p in restarted:
            stop_server(p)


# -- any name the data formats accept is trackable (issue 15) ------------------------------------


def _h(name: str) -> str:
    """The 8 hex digits :func:`tracking.key_part` appends to a name it had to change."""
    import hashlib

    return hashlib.sha256(name.encode()).hexdigest()[:8]


@pytest.mark.parametrize(
    ("name", "part"),
    [
        ("S01", "S01"),  # what MLflow takes is kept as it is
        ("A1-to-A2_v2.final run", "A1-to-A2_v2.final run"),
        ("P01 (pilot)", f"P01 _pilot_--{_h('P01 (pilot)')}"),
        ("P01 [pilot]", f"P01 _pilot_--{_h('P01 [pilot]')}"),  # alike once replaced: distinct
        ("P01_pilot_", "P01_pilot_"),  # and the name that naive replacement collides with
        ("Zoë", f"Zo_--{_h('Zoë')}"),
        ("被験者1", f"___1--{_h('被験者1')}"),
        ("S1:left", f"S1_left--{_h('S1:left')}"),  # ":" is refused on Windows
        ("50%", f"50_--{_h('50%')}"),
        ("a/b", f"a_b--{_h('a/b')}"),  # "/" separates a key's parts
        ("tab\there", f"tab_here--{_h('tab' + chr(9) + 'here')}"),
        ("", f"--{_h('')}"),  # would vanish from the key
        (".", f".--{_h('.')}"),  # would normalise away as a path segment
        ("..", f"..--{_h('..')}"),
        ("x" * 300, f"{'x' * 230}--{_h('x' * 300)}"),  # MLflow's keys end at 250 characters
        ("y" * 240, "y" * 240),
    ],
)
def test_key_part_maps_any_name_to_a_stable_valid_key_part(name, part):
    assert tracking.key_part(name) == part


AWKWARD = [
    "S01",
    "P01 (pilot)",
    "P01 [pilot]",
    "P01_pilot_",
    "Zoë Müller",
    "被験者1",
    "S1:left",
    "50% MVC",
    "a/b",
    "../../etc",
    "",
    " ",
    ".",
    "..",
    "tab\there",
    "line\nbreak",
    "emoji 🙂",
    "q'uote\"s",
    "x" * 300,
    "x" * 299,  # same first 230 characters as the one above
]


def test_awkward_names_log_to_a_real_store_and_read_back(tmp_path):
    """Every name becomes a distinct metric, param and tag in a real SQLite store, and its
    readable key is recorded beside it; the unit keys of trial.py, ``r2.<subject>/<fold>``."""
    t = tracking.Tracker(f"sqlite:///{tmp_path}/m.db")
    run = t.open_run(t.experiment("names"), "k", "names", {})
    readable = {f"r2.{n}/A1-to-A2": float(i) for i, n in enumerate(AWKWARD)}
    log = t.logger(run)
    log.log(readable, step=1)
    log.flush()  # refused before: "Invalid metric name: 'r2.P01 (pilot)/A1-to-A2'"
    log.log(readable, step=2)  # the same names again: the same keys
    log.flush()
    t.log_params(run, flatten({"gestures": {n: i for i, n in enumerate(AWKWARD)}}))
    t.set_tags(run, {f"label.{n}": i for i, n in enumerate(AWKWARD)})
    data = t.client.get_run(run).data
    names = {
        k.removeprefix(tracking.NAME_TAG): v
        for k, v in data.tags.items()
        if k.startswith(tracking.NAME_TAG)
    }
    for prefix, sent, got in (
        ("r2.", readable, data.metrics),
        ("gestures.", {f"gestures.{n}": float(i) for i, n in enumerate(AWKWARD)}, data.params),
        ("label.", {f"label.{n}": float(i) for i, n in enumerate(AWKWARD)}, data.tags),
    ):
        mine = {k: v for k, v in got.items() if k.startswith(prefix)}
        assert len(mine) == len(AWKWARD)  # no two names share a key
        back = {names.get(k, k): float(v) for k, v in mine.items()}
        assert back == sent  # each readable key, with its own value
    assert "r2.S01/A1-to-A2" in data.metrics  # plain names stay plain
    key = tracking.mlflow_key("r2.P01 (pilot)/A1-to-A2")
    assert key == f"r2.P01 _pilot_--{_h('r2.P01 (pilot)')}/A1-to-A2"
    assert [m.step for m in t.client.get_metric_history(run, key)] == [1, 2]


def test_mlflow_key_is_the_same_in_another_process():
    code = (
        "from orchestration import tracking; print(tracking.mlflow_key('r2.P01 (pilot)/A1-to-A2'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == tracking.mlflow_key("r2.P01 (pilot)/A1-to-A2")


# -- the champion moves only on improvement, even when sweeps finish together (issue 15) --------

_REGISTRANT = """
import sys, time
from pathlib import Path
from orchestration import tracking

uri, folder, how = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
i, rounds = int(sys.argv[4]), int(sys.argv[5])
tracking.use(uri)
t = tracking.Tracker(uri)
exp = t.experiment("reg")
split = "session CV A1+A2 of s0"
held = tracking.Score("heldout_r2", 0.3, "s0/A3", 0.0)


def wait(*names):
    while not all((folder / n).exists() for n in names):
        time.sleep(0.01)


for r in range(rounds):
    wait(f"go{r}")
    old, why = tracking.recorded_champion(t.client, "kin", tracking.Score("cv_r2", 0, split, 0))
    (folder / f"read{r}-{i}").touch()  # both have read the same champion
    wait(f"read{r}-0", f"read{r}-1")
    better = i == r % 2  # each process is the better one in turn
    sel = tracking.Score("cv_r2", old + (0.2 if better else 0.1), split, 0.0)
    # round 0: the better one registers first; round 1: the worse one; then together
    pause = {0: 0.0 if better else 2.0, 1: 2.0 if better else 0.0}.get(r % 3, 0.0)
    run = t.open_run(exp, f"r{r}-p{i}", "final", {})
    if how == "register":  # the whole thing: the model logged, registered, the alias moved
        import numpy as np, torch

        time.sleep(2 * pause)
        model, x = torch.nn.Linear(12, 3), np.zeros((4, 12), np.float32)
        version, moved = tracking.register(run, model, x, "kin", sel, old, held, {"reason": why})
    else:  # its last step alone, on a version registered without a model: many rounds fast
        tags = {**sel.tags("selection"), "selection_metric": "cv_r2", "reason": why}
        v = t.client.create_model_version("kin", f"runs:/{run}/model", run, tags=tags)
        time.sleep(pause)
        moved, _, _ = tracking.move_champion(t.client, "kin", v.version, sel, old, True)
    t.end(run)
    (folder / f"done{r}-{i}").touch()
"""


def _race(tmp_path: Path, how: str, rounds: int) -> tracking.Tracker:
    """Champion v1 scores 0.50; per round, two processes read the champion, then both register
    a better version at once (+0.2 and +0.1): the alias must end on the +0.2 one whatever the
    order (the better first, the worse first, both together), each process the better one in
    turn. Before the fix both promoted and the last one to move the alias won."""
    uri = f"sqlite:///{tmp_path}/m.db"
    tracking.use(uri)
    t = tracking.Tracker(uri)
    t.client.create_registered_model("kin")
    run = t.open_run(t.experiment("reg"), "v1", "final", {})
    tags = {"cv_r2": "0.500000", "selection_split": "session CV A1+A2 of s0"}
    v1 = t.client.create_model_version("kin", f"runs:/{run}/model", run, tags=tags)
    t.client.set_registered_model_alias("kin", "champion", v1.version)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _REGISTRANT, uri, str(tmp_path), how, str(i), str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    try:
        champ = 0.50
        for r in range(rounds):
            (tmp_path / f"go{r}").touch()
            deadline = time.time() + 600
            done = [tmp_path / f"done{r}-{i}" for i in range(2)]
            while not all(d.exists() for d in done):
                # A process that finished its last round exits; only one that died before
                # writing its done file is a failure (checked done-first: it writes, then exits).
                died = [
                    p.poll() is not None and not d.exists()
                    for p, d in zip(procs, done, strict=True)
                ]
                assert time.time() < deadline and not any(died), [
                    p.communicate()[0][-3000:] for p, dead in zip(procs, died, strict=True) if dead
                ]
                time.sleep(0.05)
            champ += 0.2
            best = t.client.get_model_version_by_alias("kin", "champion")
            assert float(best.tags["registered_cv_r2"]) == pytest.approx(champ), f"round {r}"
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return t


@pytest.mark.slow
def test_champion_moves_only_on_improvement_when_sweeps_finish_together(tmp_path):
    _race(tmp_path, "move", rounds=6)


@pytest.mark.slow
def test_register_under_a_race_records_what_the_version_lost_to(tmp_path):
    """The whole registration (model logged, ~1 min a version here) in the order that broke:
    the better version first, the worse 4 s later; the worse one's tags say what won."""
    t = _race(tmp_path, "register", rounds=1)
    versions = t.client.search_model_versions("name = 'kin'")
    (worse,) = [v for v in versions if v.tags.get("registered_cv_r2") == "0.6"]
    assert worse.tags["became_champion"] == "false"
    assert worse.tags["champion_cv_r2"] == "0.7"  # what it lost to, not the v1 it scored
    assert worse.tags["reason"].startswith("champion v1 scored 0.5000 on the same selection")
    assert "the champion moved from v1 while v" in worse.tags["reason"]


SPLIT = "session CV A1+A2 of s0"


@pytest.fixture(scope="module")
def registry_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One real SQLite store for the registry cases (each uses its own model name)."""
    return f"sqlite:///{tmp_path_factory.mktemp('registry')}/m.db"


@pytest.mark.parametrize(
    ("moved_to", "score", "want_moved", "want_old", "note"),
    [
        (None, 0.60, True, 0.50, ""),  # the champion the caller scored is still champion
        ({"cv_r2": "0.700000", "selection_split": SPLIT}, 0.60, False, 0.70, "scored 0.7000"),
        ({"cv_r2": "0.550000", "selection_split": SPLIT}, 0.60, True, 0.55, "scored 0.5500"),
        ({"cv_r2": "0.600000", "selection_split": SPLIT}, 0.60, False, 0.60, "scored 0.6000"),
        ({"cv_r2": "0.100000", "selection_split": "CV of s9"}, 0.60, False, math.nan, "s9"),
        ({"selection_split": SPLIT}, 0.60, False, math.nan, "not comparable"),  # no score
    ],
)
def test_champion_moved_since_it_was_scored_is_compared_again(
    registry_store, moved_to, score, want_moved, want_old, note
):
    """The caller scored v1 (0.50); meanwhile another sweep may have moved the alias to v2:
    the decision is made against v2's recorded selection score, never the stale 0.50."""
    name = f"kin-{uuid.uuid4().hex[:8]}"
    tracking.use(registry_store)
    c = tracking.Tracker(registry_store).client
    c.create_registered_model(name)
    tags = {"cv_r2": "0.5", "selection_split": SPLIT}
    v1 = c.create_model_version(name, "runs:/x/model", tags=tags)
    c.set_registered_model_alias(name, "champion", v1.version)
    sel = tracking.Score("cv_r2", score, SPLIT, 0.0)
    old, _ = tracking.recorded_champion(c, name, sel)  # what the caller compares with
    assert old == 0.5
    if moved_to is not None:
        v2 = c.create_model_version(name, "runs:/y/model", tags=moved_to)
        c.set_registered_model_alias(name, "champion", v2.version)
    mine = str(c.create_model_version(name, "runs:/z/model").version)
    moved, got_old, got_note = tracking.move_champion(c, name, mine, sel, old, True)
    assert moved is want_moved
    assert got_old == pytest.approx(want_old, nan_ok=True)
    assert note in got_note and (not note or got_note.startswith("the champion moved from v1"))
    champ = str(c.get_model_version_by_alias(name, "champion").version)
    assert champ == (mine if want_moved else ("1" if moved_to is None else "2"))
