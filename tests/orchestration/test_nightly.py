"""Nightly regression runs (orchestration/nightly.py) against a champion a real smoke sweep
registered: a green night, a degraded copy of the code caught, a killed night re-run without
duplicates, one nightly at a time, no champion (a baseline), a champion that no longer loads.
Real Ray, real MLflow (SQLite), the simulator; the tests of the module run in order and share
the sweep's store."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.orchestration.test_sweep import ROOT, SWEEP, _client, _env

NIGHTLY = ROOT / "orchestration" / "nightly.py"
ONE_POINT = """
method: kinembed
metric: cv_r2
mode: max
stages:
  - name: only
    grid:
      kinembed.dropout: [0.1]
"""


def _nightly(store: dict, *args: str, root: Path = ROOT, **popen) -> subprocess.CompletedProcess:
    """The nightly on the module's store; the suite without the wall-time gate unless
    ``--suite`` is given (a loaded CI machine's timings would make it flaky here; the cost
    gate's rule has its own test)."""
    cmd = [sys.executable, str(root / "orchestration" / "nightly.py"), "--smoke"]
    if "--suite" not in args:
        cmd += ["--suite", str(store["suite"])]
    cmd += ["--tracking-uri", store["uri"], "--storage-path", str(store["dir"] / "results")]
    return subprocess.run(
        [*cmd, *args], cwd=store["elsewhere"], env=store["env"], capture_output=True, text=True,
        timeout=900, **popen,
    )  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A kinembed champion from a one-point smoke sweep (final: 3 seeds, 1 subject)."""
    d = tmp_path_factory.mktemp("nightly")
    (d / "space.yaml").write_text(ONE_POINT)
    uri = f"sqlite:///{d / 'mlflow.db'}"
    env = _env(EMGCORE_CACHE=str(d / "cache"))
    args = [sys.executable, str(SWEEP), "kinembed", "--smoke", "--space", str(d / "space.yaml")]
    args += ["--tracking-uri", uri, "--storage-path", str(d / "results")]
    r = subprocess.run(args, cwd=d, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    suite = d / "suite.yaml"
    suite.write_text("entries:\n  kinembed: {metrics: {heldout_r2: 0.02}}\n")
    # the nightly runs from another folder: every store it uses is named, none found by chance
    (d / "elsewhere").mkdir()
    return {"dir": d, "uri": uri, "env": env, "suite": suite, "elsewhere": d / "elsewhere"}


def _night_runs(uri: str, night: str) -> list:
    c = _client(uri)
    exp = c.get_experiment_by_name("nightly")
    return c.search_runs([exp.experiment_id], f"tags.`emg.night` = '{night}'", max_results=100)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.mlflow
def test_a_green_night_retrains_the_champions_recipe_and_passes(store):
    from emgcore.methods.base import seed_scores

    r = _nightly(store, "--only", "kinembed", "--night", "2026-12-01")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "kinembed (v1): PASS" in r.stdout
    assert "heldout_r2" in r.stdout and "wall time" in r.stdout  # the console table
    runs = _night_runs(store["uri"], "2026-12-01")
    (parent,) = [x for x in runs if x.data.tags["emg.nightly"] == "night"]
    (child,) = [x for x in runs if x.data.tags["emg.nightly"] == "entry"]
    assert parent.info.status == child.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["emg.verdict"] == "green" and tags["emg.git_commit"]
    assert tags["emg.version.torch"] and tags["emg.version.mlflow"]
    assert child.data.tags["emg.verdict"] == "PASS" and child.data.tags["emg.champion"] == "v1"
    cost = ("wall_s", "peak_rss_mb", "epoch_s_median", "samples_s_median")
    for m in ("heldout_r2", "champion_heldout_r2", *cost):
        assert m in child.data.metrics, m
    assert 100 < child.data.metrics["peak_rss_mb"] < 8000
    assert child.data.metrics["samples_s_median"] > 0 and "samples/s" in r.stdout
    # the exact recipe with tonight's (same) code: seeds 0, 1, 2 score what they scored
    champ = _client(store["uri"]).get_model_version_by_alias("kinembed", "champion")
    recorded, tonight = (
        seed_scores(champ.tags, "heldout_r2"),
        seed_scores(child.data.tags, "heldout_r2"),
    )
    assert tonight == pytest.approx(recorded, abs=1e-6) and len(tonight) == 3
    # the champion artifact itself, scored again from its files on the same held-out session
    assert child.data.metrics["champion_recorded"] == float(champ.tags["registered_heldout_r2"])
    assert child.data.metrics["champion_rescored"] == pytest.approx(
        child.data.metrics["champion_recorded"], abs=1e-6
    )
    assert "heldout_r2 (artifact)" in r.stdout
    arts = {a.path for a in _client(store["uri"]).list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.html"} <= arts
    assert f"runs/{parent.info.run_id}" in r.stdout  # where the report is, said
    said = [ln.split("report: ")[1] for ln in r.stdout.splitlines() if "report: /" in ln]
    assert [Path(p).is_file() for p in said] == [True] and "MLflow UI: mlflow ui" in r.stdout
    assert not [ln for ln in r.stdout.splitlines() if ln.endswith(" ")]

    # the same night again: gated from its records, not retrained; its cost stands as measured
    again = _nightly(store, "--only", "kinembed", "--night", "2026-12-01")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "kinembed: finished earlier tonight" in again.stdout and "retraining" not in again.stdout
    assert "kinembed (v1): PASS" in again.stdout
    c = _client(store["uri"])
    assert len(_night_runs(store["uri"], "2026-12-01")) == 2
    for m in ("wall_s", "peak_rss_mb", "epoch_s_median"):
        (point,) = c.get_metric_history(child.info.run_id, m)  # logged once
        assert point.value == child.data.metrics[m]


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.mlflow
def test_a_green_night_on_fresh_seeds_raises_no_alarm(store):
    """A night on other seeds than the champion's (3-5): the same code does not regress at the
    suite's tolerance; and over all six seed scores, resampled, the gate's false-alarm rate
    stays under its alpha."""
    from emgcore.methods.base import seed_scores
    from orchestration import gate

    pool = list(
        seed_scores(_client(store["uri"]).get_model_version("kinembed", "1").tags, "heldout_r2")
    )
    for night, first in (("2026-11-29", "3"),):
        r = _nightly(store, "--only", "kinembed", "--night", night, "--first-seed", first)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "kinembed (v1): PASS" in r.stdout
        (child,) = [
            x for x in _night_runs(store["uri"], night) if x.data.tags["emg.nightly"] == "entry"
        ]
        pool += seed_scores(child.data.tags, "heldout_r2")
    assert len(set(pool)) == 6  # six different seeds, six different scores
    assert gate.alarm_rate(pool, 3, mode="max", tolerance=0.02) < 0.05


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.mlflow
def test_a_degraded_training_is_caught_and_named(store, tmp_path):
    """Tonight's code is a copy of the repository whose decoder learns at a thousandth of the
    rate (the kind of change a refactor slips in): exit 1, the report names the method, the
    metric and the difference, the HTML report opens in Chromium with its table and plot."""
    copy = tmp_path / "repo"
    for part in ("emgcore", "orchestration", "search_spaces", "suites"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    decoder = copy / "emgcore" / "models" / "decoder.py"  # the TCN every method is scored by
    text = decoder.read_text()
    assert "Adam(net.parameters(), lr=cfg.lr)" in text
    decoder.write_text(text.replace("lr=cfg.lr)", "lr=cfg.lr * 1e-3)"))
    report = tmp_path / "report"
    r = _nightly(
        store, "--only", "kinembed", "--night", "2026-12-02", "--report-dir", str(report),
        root=copy,
    )  # fmt: skip
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("kinembed (v1): REGRESSION"))
    assert "heldout_r2 worse by" in line and "> tolerance 0.02" in line
    md = (report / "report.md").read_text()
    assert "| heldout_r2 |" in md and "REGRESSION" in md
    assert (report / "trend-kinembed.png").exists()  # two nights of history
    (child,) = [
        x for x in _night_runs(store["uri"], "2026-12-02") if x.data.tags["emg.nightly"] == "entry"
    ]
    assert child.data.tags["emg.verdict.heldout_r2"] == "REGRESSION"
    assert child.data.metrics["change_heldout_r2"] < -0.02
    _html_shows_the_table(report / "report.html", tmp_path)


def _html_shows_the_table(page_path: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page()
        page.goto(page_path.as_uri())
        cells = [c.inner_text() for c in page.locator("td").all()]
        assert "heldout_r2" in cells and "REGRESSION" in cells
        img = page.locator("img").first
        assert img.evaluate("i => i.complete && i.naturalWidth > 100")  # the trend plot drew
        page.screenshot(path=str(tmp_path / "nightly-report.png"), full_page=True)
        browser.close()


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.mlflow
@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_a_killed_night_reruns_without_duplicates_and_a_second_nightly_refuses(store, how):
    """Twenty seeds (about 2 s each here): the signal arrives mid-training, SIGTERM to the
    driver, or SIGINT to its process group as a terminal's Ctrl-C sends it (Train's own SIGINT
    handler must not take it; a SIGTERM inside Ray's wait was once dropped: exit 0). A second
    nightly meets the first one's driver frozen (SIGSTOP): alive, whatever the timing."""
    night = "2026-12-03" if how == "SIGTERM" else "2026-12-08"
    suite = store["dir"] / "twenty.yaml"
    suite.write_text("smoke: {seeds: 20}\nentries:\n  kinembed: {metrics: {heldout_r2: 0.02}}\n")
    cmd = [sys.executable, str(NIGHTLY), "--smoke", "--suite", str(suite), "--night", night]
    cmd += ["--tracking-uri", store["uri"], "--storage-path", str(store["dir"] / "results")]
    log = store["dir"] / "first.log"
    with log.open("w") as f:
        first = subprocess.Popen(
            cmd, cwd=store["elsewhere"], env=store["env"], stdout=f, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_for(text: str) -> None:
        deadline = time.time() + 300
        while text not in log.read_text():
            assert first.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)

    try:
        wait_for("kinembed-v1 unit 1 done")  # mid-training: the kill that matters
        # the first driver frozen, alive: a second nightly, however slow to start, meets it
        first.send_signal(signal.SIGSTOP)
        second = _nightly(store, "--suite", str(suite), "--night", night)
        first.send_signal(signal.SIGCONT)
        if how == "SIGTERM":
            first.send_signal(signal.SIGTERM)
        else:
            os.killpg(first.pid, signal.SIGINT)
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        assert "one nightly at a time" in second.stderr and "Traceback" not in second.stderr
        assert first.wait(120) == (143 if how == "SIGTERM" else 130), log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    assert f"start the same command again tonight (--night {night})" in log.read_text()
    statuses = {x.data.tags["emg.nightly"]: x.info.status for x in _night_runs(store["uri"], night)}
    assert statuses == {"night": "KILLED", "entry": "KILLED"}
    again = _nightly(store, "--suite", str(suite), "--night", night)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "wall time not measured: resumed from an interrupted start" in again.stdout
    runs = _night_runs(store["uri"], night)
    assert sorted(x.data.tags["emg.nightly"] for x in runs) == ["entry", "night"]  # no duplicate
    assert {x.info.status for x in runs} == {"FINISHED"}
    entry = next(x for x in runs if x.data.tags["emg.nightly"] == "entry")
    assert len(json.loads(entry.data.tags["seeds_heldout_r2"])) == 20


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.mlflow
def test_bisect_names_the_commit_that_made_it_worse(store, tmp_path):
    """A repository of five commits, the third slowing the decoder's learning rate: a green
    night at the first, then `--bisect` at the fifth finds the third (two probes)."""
    repo = tmp_path / "repo"
    for part in ("emgcore", "orchestration", "search_spaces", "suites"):
        shutil.copytree(ROOT / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    _git(repo, "init", "-q")
    commits = []

    def commit(msg: str) -> None:
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", msg)
        commits.append(_git(repo, "rev-parse", "HEAD"))

    commit("the project")
    (repo / "NOTES.md").write_text("a note\n")
    commit("a note")
    decoder = repo / "emgcore" / "models" / "decoder.py"
    decoder.write_text(decoder.read_text().replace("lr=cfg.lr)", "lr=cfg.lr * 1e-3)"))
    commit("decoder: a refactor that slows its learning rate")
    (repo / "NOTES.md").write_text("another note\n")
    commit("another note")
    (repo / "MORE.md").write_text("more\n")
    commit("more notes")
    _git(repo, "checkout", "-q", commits[0])
    green = _nightly(store, "--only", "kinembed", "--night", "2026-12-05", root=repo)
    assert green.returncode == 0, green.stdout[-3000:] + green.stderr[-3000:]
    _git(repo, "checkout", "-q", commits[-1])
    r = _nightly(store, "--only", "kinembed", "--night", "2026-12-06", "--bisect", root=repo)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"bisect: first bad commit {commits[2]} (decoder: a refactor" in r.stdout
    assert r.stdout.count("bisect: probing") == 2
    c = _client(store["uri"])
    exp = c.get_experiment_by_name("nightly")
    (night,) = c.search_runs(
        [exp.experiment_id], "tags.`emg.night` = '2026-12-06' and tags.`emg.nightly` = 'night'"
    )
    assert night.data.tags["emg.bisect.first_bad"] == commits[2]
    assert night.data.tags["emg.git_commit"] == commits[-1]
    probes = c.search_runs([c.get_experiment_by_name("nightly-bisect").experiment_id])
    # the middle commit first (bad), then the one before it (good); each probe labelled
    labels = {x.data.tags.get("emg.label") for x in probes if x.data.tags["emg.nightly"] == "entry"}
    assert labels == {commits[2][:12], commits[1][:12]}


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.mlflow
def test_no_champion_is_a_baseline_and_a_champion_that_no_longer_loads_is_reported(store):
    """Last: it breaks the shared champion's artifact (its logged model's weights file)."""
    suite = store["dir"] / "two.yaml"
    suite.write_text(
        "entries:\n"
        "  kinembed: {metrics: {heldout_r2: 0.02}}\n"
        "  fresh: {method: kinembed, registry: kinembed-fresh, metrics: {heldout_r2: 0.02}}\n"
    )
    c = _client(store["uri"])
    champ = c.get_model_version_by_alias("kinembed", "champion")
    model_dir = Path(
        c.get_model_version_download_uri("kinembed", champ.version).removeprefix("file://")
    )
    weights = [p for p in model_dir.rglob("*") if p.is_file() and p.name != "MLmodel"]
    assert weights, model_dir
    for p in weights:
        p.write_bytes(b"not a model")
    r = _nightly(store, "--suite", str(suite), "--night", "2026-12-04")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "fresh (no champion): BASELINE - no champion yet" in r.stdout
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("kinembed (v1): REGRESSION"))
    assert "the champion artifact does not load" in line
    fresh = next(
        x for x in _night_runs(store["uri"], "2026-12-04")
        if x.data.tags.get("emg.nightly.entry") == "fresh"
    )  # fmt: skip
    assert fresh.data.tags["emg.verdict"] == "BASELINE" and "heldout_r2" in fresh.data.metrics
    assert json.loads(fresh.data.tags["seeds_heldout_r2"])  # the baseline's seeds, kept


def test_bad_input_is_one_line_exit_2(tmp_path):
    """Before Ray or MLflow start."""
    bad = tmp_path / "suite.yaml"
    bad.write_text("entries:\n  kinembed: {metrics: {heldout_r3: 0.02}}\n")
    uri = ["--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    for args, want in (
        (["--only", "nosuch"], "no entry 'nosuch'"),
        (["--only", ""], "expected entry names, e.g. kinembed,jepa; got ''"),  # not all of them
        (["--only", "kinembed,"], "expected entry names"),
        (["--suite", str(bad)], "entries.kinembed.metrics.heldout_r3"),
        (["--night", "26-12-01"], "expected YYYY-MM-DD"),
        (["--night", "2026-02-30"], "'2026-02-30' is not a date"),
        (["bisect", "--good", "HEAD", "--only", "nosuch"], "no entry 'nosuch'"),
        (["bisect", "--good", "HEAD", "--only", " "], "expected entry names"),
        (["bisect", "--good", "HEAD"], "nothing to bisect: --good and --bad are the same commit"),
        (["bisect", "--good", "no-such-ref"], "'no-such-ref' is not a commit of"),
    ):
        r = subprocess.run(
            [sys.executable, str(NIGHTLY), *args, *uri], cwd=tmp_path, env=_env(),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        # one line naming what is wrong (a bad flag too: no usage block above it); before it
        # only MLflow's notes on creating a new store, for errors found after the URI's check
        lines = [ln for ln in r.stderr.strip().splitlines() if " INFO " not in ln]
        assert r.returncode == 2 and len(lines) == 1 and want in lines[0], (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_the_nights_verdict_counts_a_slowdown_and_an_unloadable_champion():
    """The cost gate and the artifact check as rules (the slow tests run without the cost gate,
    whose timings a loaded machine would make flaky)."""
    from orchestration import gate, nightly, suite

    entry = suite.Entry("kinembed", "kinembed", "kinembed", (), 3, slowdown=1.5)
    champ = type("V", (), {"version": "1", "tags": {}})()
    same = gate.compare([0.5, 0.5], [0.5, 0.5], metric="m", mode="max", tolerance=0.01)
    checked = nightly.Checked(entry, comparisons=[same], champion="v1", slowdown=1.6)
    assert nightly._verdict(entry, champ, checked, "") == (
        "REGRESSION",
        "slower: 1.60x the trailing nights' median wall time",
    )
    checked.slowdown = 1.4
    assert nightly._verdict(entry, champ, checked, "") == ("PASS", "")
    verdict, note = nightly._verdict(entry, champ, checked, "OSError: no such file")
    assert (
        verdict == "REGRESSION"
        and note == "the champion artifact does not load: OSError: no such file"
    )
    # the champion artifact scored again tonight: a change beyond the suite's tolerance, or
    # no score at all, is a regression of its own
    rescore = {"metric": "heldout_r2", "recorded": 0.458356, "why": "S1/A3", "tolerance": 1e-4}
    checked.rescore = rescore | {"value": 0.45836}
    assert nightly._verdict(entry, champ, checked, "") == ("PASS", "")
    checked.rescore = rescore | {"value": 0.4571}
    assert nightly._verdict(entry, champ, checked, "") == (
        "REGRESSION",
        "the champion artifact scores heldout_r2 0.4571 tonight on S1/A3, registered with 0.458356",
    )
    checked.rescore = rescore | {"value": math.nan, "why": "KeyError: 'w'"}
    assert nightly._verdict(entry, champ, checked, "")[1] == (
        "the champion artifact cannot be scored tonight: KeyError: 'w'"
    )
    from orchestration import nightly_report

    (_, table), *_ = nightly_report.rows([checked])
    assert table[-1][0] == "heldout_r2 (artifact)" and table[-1][-1] == "REGRESSION"
    checked.rescore = {}
    assert nightly._verdict(entry, None, checked, "")[0] == "BASELINE"
    ok, bad = nightly.Checked(entry, verdict="PASS"), nightly.Checked(entry, verdict="REGRESSION")
    err = nightly.Checked(entry, verdict="ERROR")
    assert [nightly._exit_code(c) for c in ([ok], [ok, bad], [bad, err])] == [0, 1, 2]


def test_the_webhook_gets_the_regressions_as_slack_json_and_a_dead_one_is_only_reported():
    import http.server
    import threading

    from orchestration import gate, nightly, nightly_report, suite

    got: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            n = int(self.headers["Content-Length"])
            got.append(json.loads(self.rfile.read(n)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:  # quiet
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    entry = suite.Entry("kinembed", "kinembed", "kinembed", (), 3)
    worse = gate.compare([0.45, 0.46, 0.44], [0.4, 0.41, 0.39], metric="heldout_r2", mode="max",
                         tolerance=0.02)  # fmt: skip
    bad = nightly.Checked(entry, "REGRESSION", [worse], "v1", note=f"heldout_r2 {worse.why}")
    ok = nightly.Checked(suite.Entry("jepa", "jepa", "jepa", (), 3), "PASS", [], "v2")
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        assert nightly_report.post(url, [bad, ok], "2026-12-01") == ""
    finally:
        server.shutdown()
    (msg,) = got
    assert msg["text"].startswith(
        "Nightly 2026-12-01: 1 regression(s)\n- kinembed (v1): heldout_r2 worse by 0.05"
    )
    assert "jepa" not in msg["text"]
    assert nightly_report.post(url, [bad], "2026-12-01", timeout=2)  # nobody listens now: said


@pytest.mark.mlflow
def test_the_cost_baseline_is_the_nights_that_retrained_the_same_recipe(tmp_path):
    """A new champion's recipe may cost more than the default the nights before it ran (seen:
    EMG-JEPA's first night with a champion was '4.05x slower' than its baseline nights)."""
    from types import SimpleNamespace

    from orchestration import nightly, suite, tracking

    t = tracking.Tracker(f"sqlite:///{tmp_path}/m.db")
    exp = t.experiment("nightly")
    nights = (("2026-11-01", "none", 10.0), ("2026-11-02", "none", 12.0),
              ("2026-11-03", "v1", 40.0), ("2026-11-04", "v1", 44.0))  # fmt: skip
    for night, champion, wall in nights:
        tags = {"emg.nightly.entry": "kinembed", "emg.night": night, "emg.champion": champion}
        run = t.open_run(exp, f"nightly/{night}/kinembed", "kinembed", tags)
        log = t.logger(run)
        log.log({"wall_s": wall}, 0)
        log.flush()
        t.end(run)
    night = nightly.Night.__new__(nightly.Night)  # what _slowdown reads, on a real store
    night.tracker, night.exp, night.night = t, exp, "2026-11-05"
    night.suite = SimpleNamespace(history=30)
    entry = suite.Entry("kinembed", "kinembed", "kinembed", (), 3, slowdown=1.5)
    assert night._slowdown(entry, 42.0, "v1") == pytest.approx(1.0)  # median of 40 and 44
    assert night._slowdown(entry, 22.0, "") == pytest.approx(2.0)  # the default's nights
    assert night._slowdown(entry, 99.0, "v2") is None  # a new champion: no history yet


def test_an_entry_counts_as_gated_earlier_only_when_the_driver_finished_gating_it():
    """The worker ends the entry run FINISHED before the driver gates: FINISHED alone is not
    done. Nor is a night gated against another champion, or at another seed count."""
    from types import SimpleNamespace

    from orchestration import nightly, suite

    entry = suite.Entry("kinembed", "kinembed", "kinembed", (suite.Metric("r2", "max", 0.02),), 3)
    night = nightly.Night.__new__(nightly.Night)

    def run(status: str = "FINISHED", **tags: str) -> SimpleNamespace:
        tags = {"emg.verdict": "PASS", "emg.champion": "v1", "seeds_r2": "[0.1, 0.2, 0.3]"} | tags
        return SimpleNamespace(info=SimpleNamespace(status=status), data=SimpleNamespace(
            tags={k: v for k, v in tags.items() if v}))  # fmt: skip

    assert night._gated_earlier(entry, run(), "v1")
    assert not night._gated_earlier(entry, None, "v1")
    assert not night._gated_earlier(entry, run("KILLED"), "v1")
    assert not night._gated_earlier(entry, run(**{"emg.verdict": ""}), "v1")  # worker only
    assert not night._gated_earlier(entry, run(seeds_r2=""), "v1")
    assert not night._gated_earlier(entry, run(), "v2")  # the champion moved since
    assert not night._gated_earlier(entry, run(seeds_r2="[0.1, 0.2]"), "v1")  # other seeds
    assert night._gated_earlier(entry, run(**{"emg.champion": "none"}), "")  # a baseline


def test_a_second_signal_while_the_night_ends_does_not_interrupt_its_ending():
    """The first signal raises (the night ends its runs KILLED); a second one, arriving while
    it does, is ignored instead of raising past that bookkeeping."""
    from orchestration import nightly
    from orchestration.driver import Interrupted

    night = nightly.Night.__new__(nightly.Night)
    night.stop = ""
    old = night._install_signals()
    try:
        with pytest.raises(Interrupted, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        assert night.stop == "SIGTERM"  # the first signal's name is kept: exit 143
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
