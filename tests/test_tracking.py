"""orchestration.tracking on real MLflow backends: SQLite files and a real ``mlflow server``."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import replace

import numpy as np
import pytest
import torch

from emgcore.experiment import DecodingPipeline, ExperimentConfig
from emgcore.kinembed import KinEmbedConfig
from orchestration import tracking

pytestmark = pytest.mark.mlflow


def test_flatten_gives_dotted_keys_and_caps_length():
    cfg = replace(ExperimentConfig(), kinembed=KinEmbedConfig(emg_hidden=(512, 256)))
    flat = tracking.flatten(cfg)
    assert flat["kinembed.lr"] == "0.003"
    assert flat["kinembed.emg_hidden"] == "[512, 256]"
    assert flat["decoder.dilations"] == "[1, 2, 4]"
    assert not any(isinstance(v, dict) for v in flat.values())
    assert len(tracking.flatten({"x": "a" * 10_000})["x"]) == tracking.PARAM_MAX


def test_unreachable_server_is_one_clear_line():
    port = _free_port()
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


def test_champion_rule_names_a_bad_mode():
    with pytest.raises(ValueError, match="'max' or 'min'"):
        tracking.beats_champion(1.0, 0.0, "lower")


@pytest.mark.slow
def test_champion_moves_only_on_improvement_and_loads(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    tracking.use(uri)
    t = tracking.Tracker(uri)
    exp = t.experiment("reg")
    x = np.random.default_rng(0).standard_normal((40, 12)).astype(np.float32)

    def version(seed: int, score: float, champ: float | None) -> tuple[str, bool]:
        run = t.open_run(exp, f"final{seed}", "final", {})
        out = tracking.register(run, _pipeline(seed), x, "kin", score, champ, {"eval": "s0/A3"})
        t.end(run)
        return out

    assert version(1, 0.50, None) == ("1", True)  # no champion yet
    assert version(2, 0.40, 0.50) == ("2", False)  # worse: the alias stays
    assert version(3, 0.50, 0.50) == ("3", False)  # a tie does not move it either
    assert version(4, 0.45, math.nan) == ("4", False)  # champion not comparable: stays
    assert str(t.client.get_model_version_by_alias("kin", "champion").version) == "1"
    assert version(5, 0.60, 0.50) == ("5", True)
    champ = t.client.get_model_version_by_alias("kin", "champion")
    assert str(champ.version) == "5"
    assert champ.tags["heldout_r2"] == "0.600000"
    assert champ.tags["champion_heldout_r2"] == "0.500000"
    assert t.client.get_model_version("kin", "2").tags["became_champion"] == "false"

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: str, artifacts: str, port: int) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:port, returned once /health answers."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{db}",
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
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("mlflow server did not start")


@pytest.mark.slow
def test_short_outage_is_retried_and_loses_no_metrics(tmp_path, monkeypatch):
    # MLflow's own HTTP retries off: the backoff under test is ours
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    port = _free_port()
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
    server.terminate()
    server.wait(30)
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
            p.terminate()
