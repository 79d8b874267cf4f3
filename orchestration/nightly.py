"""Nightly regression runs: ``python orchestration/nightly.py`` retrains every registered
champion's recipe with tonight's code and says, per method and metric, whether it got worse.

For each entry of the suite (``suites/nightly.yaml``, :mod:`orchestration.suite`):

1. the champion (``<registry>@champion``) and its recipe: the version's ``recipe`` tag, what its
   final run trained (configuration, the sweep's winner, data, seeds);
2. retrained with tonight's code through the sweep's own Ray Train path
   (:meth:`orchestration.driver.Sweep.retrain`), ``seeds`` seeds, on the same data: a data set
   whose fingerprint changed is an error, not a regression;
3. the champion artifact itself loaded in tonight's environment (its logged model and, where
   it has one, its whole inference path): a torch / MLflow / numpy upgrade that breaks loading
   is reported;
4. its cost recorded (wall time, median epoch time, peak resident memory of a worker) and
   compared with the trailing nights' median: beyond the entry's ``slowdown`` factor it is a
   regression of its own kind;
5. each metric gated, noise-aware (:mod:`orchestration.gate`): tonight's per-seed scores against
   the champion's recorded ones (``seeds_<metric>`` on the version); improvements are reported
   and never move the alias. No champion yet, or one registered before per-seed scores were
   kept: tonight's scores are recorded as the baseline, and the night says so;
6. reported: MLflow experiment ``nightly``, one parent run per night (tags: date, git commit,
   package versions), one child per entry; the table on the console and, with trend plots of
   the last ``history`` nights, as ``report.md`` and ``report.html`` artifacts (and in
   ``--report-dir``); ``--webhook URL`` (or ``$EMG_NIGHTLY_WEBHOOK``) gets a Slack-style JSON
   POST when something regressed.

Safe to re-run: the night's runs are found again by key (``nightly/<night>/<entry>``) and its
Train runs are named with the night's date, so a night killed half-way and started again the
same night resumes, without duplicate runs; a second nightly started while one runs (its
driver alive) refuses in one line.

Exit status: 0 all green (or baselines recorded), 1 a regression, 2 bad input or an
infrastructure error (one line; an entry that could not be checked makes the night 2),
130 / 143 interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emgcore.config import ArgumentParser, HelpFormatter, at_least, help_text
from orchestration.sweep import add_cluster_flags

EXPERIMENT = "nightly"
BISECT_EXPERIMENT = "nightly-bisect"
WEBHOOK_ENV = "EMG_NIGHTLY_WEBHOOK"
PASS, REGRESSION, BASELINE, ERROR = "PASS", "REGRESSION", "BASELINE", "ERROR"


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python orchestration/nightly.py",
        description=help_text(__doc__),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--suite", default=None, help="the suite file (default: suites/nightly.yaml)")
    p.add_argument("--smoke", action="store_true", help="the suite's smoke budget (fewer seeds)")
    p.add_argument(
        "--only",
        type=_entry_names,
        default=(),
        metavar="ENTRIES",
        help="comma-separated entries to check, e.g. kinembed,jepa (default: every entry)",
    )
    p.add_argument(
        "--night",
        type=_night,
        default=None,
        help="the night's date, YYYY-MM-DD (default: today, UTC): names its runs, so a "
        "second start the same night resumes it",
    )
    p.add_argument(
        "--first-seed",
        type=at_least(0, int),
        default=0,
        help="tonight's seeds are FIRST_SEED, FIRST_SEED+1, ... (default: 0, the seeds a "
        "champion's final run starts from: a deterministic path then reproduces its scores "
        "exactly, so any change shows; another start draws fresh seeds)",
    )
    add_cluster_flags(p)
    p.add_argument(
        "--cache", default=None, help="preprocessing cache (default: $EMGCORE_CACHE, else local)"
    )
    p.add_argument(
        "--report-dir",
        default=None,
        help="also write report.md, report.html and the plots here (default: only in MLflow)",
    )
    p.add_argument(
        "--webhook",
        default=None,
        help=f"POST a Slack-style JSON message here on a regression (default: ${WEBHOOK_ENV})",
    )
    p.add_argument(
        "--bisect",
        action="store_true",
        help="on a regression, walk the commits since the last green night's at the smoke "
        "budget and name the first bad one (see: nightly.py bisect --help)",
    )
    p.add_argument(
        "--experiment",
        default=EXPERIMENT,
        help=f"MLflow experiment of the night's runs (default: {EXPERIMENT}; bisect probes: "
        f"{BISECT_EXPERIMENT})",
    )
    p.add_argument(
        "--label",
        default="",
        help="tells apart runs of the same night and entry (bisect: the commit probed; "
        "default: none)",
    )
    return p


def bisect_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python orchestration/nightly.py bisect",
        description="Find the first bad commit between a good and a bad one: each probe checks "
        "out a commit in a git worktree and runs the nightly from there at the smoke budget "
        "(exit 0: good, 1: bad, anything else: skipped, as git bisect skip), halving the range "
        "each time. The probes' runs go to the MLflow experiment "
        f"{BISECT_EXPERIMENT!r}, labelled with their commit.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--good", required=True, help="a commit whose night was green")
    p.add_argument("--bad", default="HEAD", help="a commit that regressed (default: HEAD)")
    p.add_argument(
        "--only",
        type=_entry_names,
        default=(),
        metavar="ENTRIES",
        help="comma-separated entries to probe, e.g. kinembed (default: every entry)",
    )
    p.add_argument("--night", type=_night, default=None, help="the night (default: today, UTC)")
    p.add_argument("--suite", default=None, help="the suite file (default: the probed commit's)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (as the nightly)")
    p.add_argument("--storage-path", default=None, help="Ray results (as the nightly)")
    p.add_argument("--address", default=None, help="Ray cluster address (as the nightly)")
    p.add_argument(
        "--repo", default=None, help="the git repository (default: the one holding this file)"
    )
    return p


def _night(text: str) -> str:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}")
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date ({e})") from e


def _entry_names(text: str) -> tuple[str, ...]:
    """``--only``'s value: entry names, comma-separated; an empty one is a mistake (a blank
    value once ran the whole suite at its full budget)."""
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected entry names, e.g. kinembed,jepa; got {text!r}")
    return names


# an entry's cost figures: the retrain's wall time (s), its workers' median epoch time (s) and
# training samples per second (median epoch), peak RSS (MiB) and training-loop time (s)
COST = ("wall_s", "epoch_s_median", "samples_s_median", "peak_rss_mb", "loop_s")


@dataclass
class Checked:
    """One entry's night: its verdict, the gate's comparisons, cost and what went wrong."""

    entry: Any
    verdict: str = PASS
    comparisons: list[Any] = field(default_factory=list)
    champion: str = ""  # "v3", or "" when there is none
    note: str = ""
    cost: dict[str, float] = field(default_factory=dict)
    slowdown: float | None = None  # wall time / trailing nights' median
    rerun: bool = False  # gated again from an earlier start's records, not retrained
    # the champion's artifact scored again tonight (see _rescored); empty when it cannot say
    rescore: dict[str, Any] = field(default_factory=dict)


class Night:
    def __init__(self, a: argparse.Namespace):
        from orchestration import suite, tracking
        from orchestration.driver import _storage, job_defaults

        self.a = a
        self.suite = suite.load(a.suite or suite.SUITE, smoke=a.smoke)
        self.entries = self.suite.select(a.only)
        self.night = a.night or datetime.now(UTC).date().isoformat()
        self.moved, note = job_defaults(a)
        if note:
            _print(note)
        self.uri = tracking.resolve_uri(a.tracking_uri or self.moved.get("tracking_uri"))
        tracking.check_reachable(self.uri)
        self.tracker = tracking.Tracker(self.uri)
        self.storage = _storage(a.storage_path or self.moved.get("storage_path"))
        self.stop = ""

    # -- the night -------------------------------------------------------------------------------

    def run(self) -> int:
        from orchestration import tracking
        from orchestration.driver import Interrupted, end_ray, heartbeat

        exp = self.tracker.experiment(self.a.experiment)
        self.exp = exp
        self._refuse_a_second(exp)
        label = f"@{self.a.label}" if self.a.label else ""
        parent = self.tracker.open_run(
            exp, f"nightly/{self.night}{label}", f"nightly {self.night}{label}", {
            "emg.nightly": "night", "emg.night": self.night, "emg.git_commit":
            tracking.git_commit(), **_versions()})  # fmt: skip
        self.parent = parent
        stop_beat = heartbeat(self.tracker, parent)  # one nightly at a time: _refuse_a_second
        old = self._install_signals()
        open_runs = [parent]
        checked: list[Checked] = []
        try:
            names = ", ".join(e.name for e in self.entries)
            _print(f"nightly {self.night}: {names}; MLflow {self.uri}")
            for entry in self.entries:
                checked.append(self._check(entry, open_runs))
            code = _exit_code(checked)
            self._report(checked, parent)
            self.tracker.set_tags(parent, {"emg.verdict": _night_verdict(checked)})
            if self.a.bisect and code == 1:
                self._bisect(checked, parent)
            self.tracker.end(parent, "FINISHED")
            return code
        except BaseException as e:
            # a signal raised inside Ray's own wait reaches here wrapped (SystemError): the
            # stop request, not the exception's type, says it was an interruption
            if not (self.stop or isinstance(e, Interrupted | KeyboardInterrupt)):
                for run in open_runs:
                    self.tracker.end(run, "FAILED")
                raise
            for run in open_runs:
                self.tracker.end(run, "KILLED")
            # Interrupted carries the signal's name (one raised while Ray started, too)
            said = str(e) if isinstance(e, Interrupted) else ""
            name = self.stop or (said if said in ("SIGTERM", "SIGINT") else "SIGINT")
            _print(
                f"interrupted ({name}): runs ended KILLED; start the same command again tonight "
                f"(--night {self.night}) to finish the night"
            )
            return 128 + signal.Signals[name].value
        finally:
            stop_beat()
            for sig, h in old.items():
                signal.signal(sig, h)
            end_ray("the night's")

    def _check(self, entry: Any, open_runs: list[str]) -> Checked:
        """Retrain, gate and record one entry (see the module doc)."""
        import time

        import ray
        from ray.train import TrainingFailedError

        from emgcore.errors import EmgDataError
        from emgcore.methods.base import seed_scores
        from orchestration import gate, tracking

        out = Checked(entry)
        label = f"@{self.a.label}" if self.a.label else ""
        key = f"nightly/{self.night}/{entry.name}{label}"
        tags = {"emg.nightly": "entry", "emg.night": self.night, "emg.nightly.entry": entry.name}
        tags |= {"emg.label": self.a.label} if self.a.label else {}
        earlier = self._earlier_attempt(key)
        run = self.tracker.open_run(self.exp, key, entry.name, tags, parent=self.parent)
        open_runs.append(run)
        try:
            champ = tracking.champion(self.tracker.client, entry.registry)
            recipe = self._recipe(entry, champ)
            out.champion = f"v{champ.version}" if champ is not None else ""
            seeds = list(range(self.a.first_seed, self.a.first_seed + entry.seeds))
            unmeasured = ""
            if self._gated_earlier(entry, earlier, out.champion):
                # a re-run of a finished night: its scores and cost stand as measured (a
                # retrain would only reload its checkpoints, and time that instead)
                _print(f"{entry.name}: finished earlier tonight; its recorded seeds are gated")
                m = dict(earlier.data.tags) | dict(earlier.data.metrics)
                out.cost = {k: v for k, v in earlier.data.metrics.items() if k in COST}
                out.rerun = True
            else:
                _print(
                    f"{entry.name}: {'champion ' + out.champion if champ else 'no champion yet'}"
                    f", retraining seeds {seeds} on {recipe['data']}"
                )
                sweep = self._sweep(entry, recipe)
                if not ray.is_initialized():
                    sweep.start_ray()
                    self._own_signals()  # Ray's start replaced SIGTERM's handler (it exits 15)
                t0 = time.perf_counter()
                # the recipe's version in the name: a champion that moved since an interrupted
                # start of the night is retrained afresh, not resumed from the old recipe's
                train = f"nightly-{self.night}-{entry.name}-{out.champion or 'default'}"
                train += f"-{self.a.label}" * bool(label)
                which = {"name": entry.registry, "version": str(champ.version)} if champ else None
                m = sweep.retrain(recipe, seeds, run, key, train, rescore=which)
                out.cost = {k: float(m[k]) for k in COST if k in m and k != "wall_s"}
                if m.get("units_resumed"):  # resumed from checkpoints: the time is a part's
                    unmeasured = "wall time not measured: resumed from an interrupted start"
                else:
                    out.cost["wall_s"] = time.perf_counter() - t0
            if skipped := m.get("champion_rescore_skipped"):
                unmeasured = "; ".join(
                    x for x in (unmeasured, f"artifact not scored: {skipped}") if x
                )
            tonight = {mt.name: seed_scores(m, mt.name) for mt in entry.metrics}
            if missing := [k for k, v in tonight.items() if not v]:
                raise EmgDataError(f"tonight's run reported no per-seed {missing}", field=key)
            loads = self._champion_loads(entry, champ)
            out.rescore = _rescored(m, self.suite.artifact_tolerance)
            for mt in entry.metrics:
                recorded = seed_scores(champ.tags, mt.name) if champ is not None else None
                if recorded is None:
                    continue
                out.comparisons.append(
                    gate.compare(
                        recorded, tonight[mt.name], metric=mt.name, mode=mt.mode,
                        tolerance=mt.tolerance, alpha=self.suite.alpha, flaky=entry.flaky,
                    )
                )  # fmt: skip
            wall = out.cost.get("wall_s")
            out.slowdown = self._slowdown(entry, wall, out.champion) if wall else None
            out.verdict, out.note = _verdict(entry, champ, out, loads)
            out.note = "; ".join(n for n in (out.note, unmeasured) if n)
            self._log(run, entry, out, tonight)
            self.tracker.end(run, "FINISHED")
        except (EmgDataError, tracking.TrackingUnavailable) as e:
            out.verdict, out.note = ERROR, str(e)
            self.tracker.set_tags(run, {"emg.verdict": ERROR, "emg.error": str(e)[:5000]})
            self.tracker.end(run, "FAILED")
        except TrainingFailedError as e:  # the reason; the traceback is in Ray's logs
            if self.stop:  # the workers went down with the interrupted driver
                raise
            out.verdict, out.note = ERROR, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            self.tracker.set_tags(run, {"emg.verdict": ERROR, "emg.error": str(e)[:5000]})
            self.tracker.end(run, "FAILED")
        open_runs.remove(run)
        _print(f"{entry.name}: {out.verdict}{': ' + out.note if out.note else ''}")
        return out

    def _gated_earlier(self, entry: Any, earlier: Any | None, champion: str) -> bool:
        """Whether an earlier start tonight (``earlier``: its entry run) finished gating this
        entry against the same champion at the same seed count: FINISHED (the worker ends
        the run FINISHED before the driver gates, so the verdict and every metric's seeds
        must be there too)."""
        if earlier is None or earlier.info.status != "FINISHED":
            return False
        tags = earlier.data.tags
        seeds = [tags.get(f"seeds_{mt.name}") for mt in entry.metrics]
        return (
            "emg.verdict" in tags
            and tags.get("emg.champion") == (champion or "none")
            and all(x is not None and len(json.loads(x)) == entry.seeds for x in seeds)
        )

    def _earlier_attempt(self, key: str) -> Any | None:
        """This night's run of an entry from an earlier start (``key``: its ``emg.key``), or
        None on its first start."""
        from orchestration.tracking import retry

        found = self.tracker.find(self.exp, key)
        return None if found is None else retry(self.tracker.client.get_run, found)

    def _recipe(self, entry: Any, champ: Any | None) -> dict[str, Any]:
        """The champion's recipe; without a champion, the method's default (its bundled preset
        on its simulator, smoke-sized with ``--smoke``), whose scores become the baseline."""
        from emgcore.errors import EmgDataError
        from emgcore.methods import METHODS

        if champ is None:
            m = METHODS[entry.method]
            return {
                "method": m.name,
                "config": m.smoke_preset if self.suite.smoke else m.preset,
                "overrides": {},
                "data": m.data,
                "sim": dict(m.smoke_sim) if self.suite.smoke else {},
                "subjects": [],
                "fingerprint": "",
                "pretrained": {},
            }
        if "recipe" not in champ.tags:
            raise EmgDataError(
                f"{entry.registry} v{champ.version} has no recipe tag (registered before "
                "versions recorded them): sweep again to register a champion the nightly can "
                "retrain",
                source=self.uri,
                field=f"{entry.registry}@champion",
            )
        recipe = json.loads(champ.tags["recipe"])
        if recipe.get("method") != entry.method:
            raise EmgDataError(
                f"{entry.registry}@champion was trained by {recipe.get('method')!r}, the entry "
                f"says {entry.method!r}",
                source=self.suite.source,
                field=f"entries.{entry.name}.method",
            )
        return recipe

    def _sweep(self, entry: Any, recipe: dict[str, Any]) -> Any:
        from orchestration.driver import Options, Sweep

        a = self.a
        sweep = Sweep(
            Options(
                method=entry.method,
                data=recipe["data"],
                config=recipe["config"],
                workers=a.workers,
                gpus_per_worker=a.gpus_per_worker,
                cpus_per_worker=a.cpus_per_worker,
                address=a.address,
                storage_path=self.storage,
                tracking_uri=self.uri,
                experiment=self.a.experiment,
                cache=a.cache or self.moved.get("cache"),
                registry_name=entry.registry,
            )
        )
        sweep.exp = self.exp
        return sweep

    def _champion_loads(self, entry: Any, champ: Any | None) -> str:
        """``""`` when the champion artifact loads in tonight's environment (its logged model,
        and its whole inference path where it has one), else what failed."""
        if champ is None:
            return ""
        from emgcore.methods import load_inference
        from emgcore.methods.base import INFERENCE_FILE
        from orchestration import tracking

        uri = f"models:/{entry.registry}/{champ.version}"
        tracking.use(self.uri)  # models:/ resolves through the fluent API's registry
        try:
            tracking.load_model(uri)
            files = tracking.model_files(uri)
            if (files / INFERENCE_FILE).exists():
                load_inference(files)
        except Exception as e:  # whatever broke: reported, the night goes on
            return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        return ""

    def _slowdown(self, entry: Any, wall_s: float, champion: str) -> float | None:
        """Tonight's wall time over the median of the trailing nights' (finished, other
        nights) that retrained the same recipe (the same ``champion`` version, "" for the
        method's default: a new champion's recipe may cost more, and is no slowdown), or None
        without such history."""
        import statistics

        past = [
            r.data.metrics["wall_s"]
            for r in self._history(entry)
            if r.data.tags.get("emg.night") != self.night
            and r.data.tags.get("emg.champion") == (champion or "none")
            and "wall_s" in r.data.metrics
        ]
        return wall_s / statistics.median(past) if past else None

    def _history(self, entry: Any) -> list[Any]:
        """This entry's finished nights, oldest first, the last ``history`` of them."""
        from orchestration.tracking import retry

        runs = retry(
            self.tracker.client.search_runs,
            [self.exp],
            filter_string=f"tags.`emg.nightly.entry` = '{entry.name}' and "
            "attributes.status = 'FINISHED'",
            order_by=["tags.`emg.night` DESC"],
            max_results=self.suite.history,
        )
        return sorted(runs, key=lambda r: r.data.tags.get("emg.night", ""))

    def _log(self, run: str, entry: Any, out: Checked, tonight: dict[str, Any]) -> None:
        from emgcore.methods.base import seed_tags

        # the wall time is the driver's to log; the rest of the cost came with the worker's
        # summary, logged by the worker; a re-run's cost stands as first logged
        metrics = {"wall_s": out.cost["wall_s"]} if "wall_s" in out.cost and not out.rerun else {}
        for c in out.comparisons:
            metrics |= {
                c.metric: c.tonight_mean, f"{c.metric}_sd": c.tonight_sd,
                f"champion_{c.metric}": c.champion_mean, f"change_{c.metric}": c.change,
                f"p_{c.metric}": c.p_value,
            }  # fmt: skip
        for name, seeds in tonight.items():
            if seeds and name not in metrics:  # a baseline: tonight's own scores
                metrics |= {name: sum(seeds) / len(seeds)}
        if out.slowdown is not None:
            metrics["slowdown"] = out.slowdown
        r = out.rescore  # its numbers are logged by the worker (the trial's summary)
        tags_r = {f"champion_rescored_{k}": r[k] for k in ("metric", "why")} if r else {}
        logger = self.tracker.logger(run)
        logger.log(metrics, 0)
        logger.flush()
        tags = {"emg.verdict": out.verdict, "emg.champion": out.champion or "none"}
        tags |= {f"emg.verdict.{c.metric}": c.verdict for c in out.comparisons}
        if out.note:
            tags["emg.note"] = out.note[:5000]
        seeds = seed_tags({k: v for k, v in tonight.items() if v})
        self.tracker.set_tags(run, tags | tags_r | seeds)

    # -- the report ------------------------------------------------------------------------------

    def _report(self, checked: list[Checked], parent: str) -> None:
        import tempfile

        from orchestration import nightly_report, tracking

        table = nightly_report.console(checked, self.night)
        print(table, flush=True)
        history = {c.entry.name: self._history(c.entry) for c in checked}
        with tempfile.TemporaryDirectory() as d:
            folder = Path(self.a.report_dir or d)
            files = nightly_report.write(checked, history, self.night, folder, self.suite)
            for f in files:
                self.tracker.log_artifact(parent, f, "report")
            if self.a.report_dir:
                _print(f"report: {folder / 'report.html'}")
        link = tracking.ui_links(self.uri, self.exp, run=parent)
        _print(f"report: report/report.html in the night's run's artifacts, {link['run']}")
        if "command" in link:  # no server serves this store: the file itself, and the UI's command
            art = tracking.retry(self.tracker.client.get_run, parent).info.artifact_uri
            if urllib.parse.urlparse(art).scheme in ("", "file"):
                folder = Path(urllib.parse.urlparse(art).path).resolve()
                _print(f"report: {folder / 'report' / 'report.html'}")
            _print(f"MLflow UI: {link['command']}")
        hook = self.a.webhook or os.environ.get(WEBHOOK_ENV)
        if hook and any(c.verdict == REGRESSION for c in checked):
            nightly_report.post(hook, checked, self.night)

    def _bisect(self, checked: list[Checked], parent: str) -> None:
        """Name the first bad commit between the last green night's and tonight's."""
        import ray

        from orchestration import tracking
        from orchestration.tracking import retry

        bad = [c.entry.name for c in checked if c.verdict == REGRESSION]
        green = retry(
            self.tracker.client.search_runs,
            [self.exp],
            filter_string="tags.`emg.nightly` = 'night' and tags.`emg.verdict` = 'green'",
            order_by=["tags.`emg.night` DESC"],
            max_results=50,
        )
        good = next(
            (g.data.tags["emg.git_commit"] for g in green if g.data.tags["emg.night"] < self.night),
            "",
        )
        now = tracking.git_commit()
        if not good or good == "unknown" or now == "unknown" or good == now:
            why = "no earlier green night" if not good else f"last green commit {good[:12]}"
            _print(f"bisect: nothing to walk ({why}, tonight {now[:12]})")
            return
        ray.shutdown()  # the probes start their own
        storage = f"{self.storage}/bisect"
        args = ["--tracking-uri", self.uri, "--storage-path", storage]
        args += ["--address", self.a.address] if self.a.address else []
        args += ["--suite", str(Path(self.a.suite).resolve())] if self.a.suite else []
        first, _ = bisect(Path(__file__).resolve().parent.parent, good, now, bad, self.night, args)
        if first:
            self.tracker.set_tags(parent, {"emg.bisect.first_bad": first})

    # -- one nightly at a time -------------------------------------------------------------------

    def _refuse_a_second(self, exp: str) -> None:
        """Refuse while another nightly's driver is alive; a dead one's runs end KILLED."""
        from emgcore.errors import EmgDataError
        from orchestration.state import driver_gone
        from orchestration.tracking import retry

        running = retry(
            self.tracker.client.search_runs,
            [exp],
            filter_string="tags.`emg.nightly` = 'night' and attributes.status = 'RUNNING'",
            max_results=100,
        )
        for r in running:
            tags = r.data.tags
            beat = tags.get("emg.heartbeat")
            why = driver_gone(tags.get("emg.driver", ""), float(beat) if beat else None)
            if not why:
                raise EmgDataError(
                    f"nightly {tags.get('emg.night')} is running (driver "
                    f"{tags.get('emg.driver')}): one nightly at a time",
                    source=self.uri,
                    field="nightly",
                )
            n = self.tracker.end_orphans(exp, "emg.night", tags.get("emg.night", ""), "KILLED")
            _print(f"nightly {tags.get('emg.night')} was left RUNNING ({why}): {n} run(s) KILLED")

    def _install_signals(self) -> dict[int, Any]:
        from orchestration.driver import Interrupted

        def handler(signum: int, frame: Any) -> None:
            if self.stop:  # already ending: the open runs end KILLED first (SIGKILL forces)
                return
            self.stop = signal.Signals(signum).name
            raise Interrupted(self.stop)

        self._handler = handler
        return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _own_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)


def _rescored(m: Mapping[str, Any], tolerance: float) -> dict[str, Any]:
    """The champion artifact's score tonight from a retrain's results ``m`` (its summary, or
    an earlier start's entry-run tags): ``metric``, ``value`` (NaN: it could not be scored),
    ``recorded`` (the version's own ``registered_<metric>``), ``why`` (the split, or what
    failed) and ``tolerance`` (the suite's ``artifact_tolerance``); empty when the method
    says no way to score its artifact (an encoder alone)."""
    if "champion_rescored_metric" not in m:
        return {}
    return {
        "metric": str(m["champion_rescored_metric"]),
        "value": float(m["champion_rescored"]),
        "recorded": float(m["champion_recorded"]),
        "why": str(m.get("champion_rescored_why", "")),
        "tolerance": tolerance,
    }


def _verdict(entry: Any, champ: Any | None, out: Checked, loads: str) -> tuple[str, str]:
    """The entry's verdict and note from its comparisons, cost and the champion's loading."""
    from orchestration import gate

    notes = []
    if champ is None:
        return BASELINE, "no champion yet: tonight's scores recorded as the baseline"
    if not out.comparisons:
        return BASELINE, (
            f"{entry.registry} {out.champion} recorded no per-seed scores (registered before "
            "they were kept): tonight's scores recorded as the baseline"
        )
    bad = [c for c in out.comparisons if c.verdict == gate.REGRESSION]
    notes += [f"{c.metric} {c.why}" for c in bad]
    if loads:
        notes.append(f"the champion artifact does not load: {loads}")
    elif r := out.rescore:
        problem = gate.artifact_problem(r["value"], r["recorded"], r["tolerance"])
        if problem == "not scored":
            notes.append(f"the champion artifact cannot be scored tonight: {r['why']}")
        elif problem:
            notes.append(
                f"the champion artifact scores {r['metric']} {r['value']:.6g} tonight on "
                f"{r['why']}, registered with {r['recorded']:.6g}"
            )
    if entry.slowdown and out.slowdown is not None and out.slowdown > entry.slowdown:
        notes.append(f"slower: {out.slowdown:.2f}x the trailing nights' median wall time")
    better = [c for c in out.comparisons if c.verdict == gate.IMPROVEMENT]
    if notes:
        return REGRESSION, "; ".join(notes)
    if better:
        return PASS, "improved: " + "; ".join(f"{c.metric} {c.why}" for c in better)
    return PASS, ""


def bisect(
    repo: Path, good: str, bad: str, entries: Sequence[str], night: str, args: Sequence[str]
) -> tuple[str | None, list[tuple[str, str]]]:
    """The first bad commit on the ancestry path from ``good`` (excluded, taken as good) to
    ``bad`` (taken as bad), and every probe's ``(commit, good | bad | skip)``. A probe runs
    ``orchestration/nightly.py --smoke --only <entries>`` from a git worktree of the commit
    (``args``: where it tracks and stores); a probe that exits neither 0 nor 1 is skipped.
    None when skipped commits leave the answer open (the candidates are printed)."""
    import subprocess
    import tempfile

    from emgcore.errors import EmgDataError

    def git(*cmd: str, fails: str = "") -> str:
        """git's output; a failure raises ``fails`` (default: git's own first line, the rest
        being advice)."""
        r = subprocess.run(["git", "-C", str(repo), *cmd], capture_output=True, text=True)
        if r.returncode:
            said = (r.stderr.strip().splitlines() or ["(no message)"])[0]
            raise EmgDataError(fails or f"git {' '.join(cmd)}: {said}", source=str(repo))
        return r.stdout.strip()

    def commit(ref: str, flag: str) -> str:
        why = f"{flag} {ref!r} is not a commit of {repo}"
        return git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", fails=why)

    good, bad = commit(good, "--good"), commit(bad, "--bad")
    if good == bad:
        raise EmgDataError(
            f"nothing to bisect: --good and --bad are the same commit {good[:12]}", field="--good"
        )
    path = git("rev-list", "--reverse", "--ancestry-path", f"{good}..{bad}").split()
    if not path:
        raise EmgDataError(f"{bad[:12]} does not descend from {good[:12]}", field="--good")
    probes: list[tuple[str, str]] = []
    candidates = list(path)  # the first bad one is among them; the last is bad
    lo, hi = -1, len(candidates) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        sha = candidates[mid]
        _print(f"bisect: probing {sha[:12]} ({hi - lo - 1} commit(s) left to decide)")
        with tempfile.TemporaryDirectory(prefix="emg-bisect-") as d:
            tree = Path(d) / sha[:12]
            git("worktree", "add", "--detach", str(tree), sha)
            try:
                r = subprocess.run(
                    [sys.executable, str(tree / "orchestration" / "nightly.py"), "--smoke",
                     "--only", ",".join(entries), "--night", night, "--experiment",
                     BISECT_EXPERIMENT, "--label", sha[:12], *args],
                    cwd=d, capture_output=True, text=True,
                )  # fmt: skip
            finally:
                git("worktree", "remove", "--force", str(tree))
        verdict = {0: "good", 1: "bad"}.get(r.returncode, "skip")
        probes.append((sha, verdict))
        # why: the probe's verdict lines (or its last words when it could not check)
        said = [ln for ln in r.stdout.splitlines() if "): " in ln and not ln.startswith("[")]
        for line in said or (r.stderr.strip().splitlines() or ["(no output)"])[-1:]:
            _print(f"bisect:   {line.strip()}")
        _print(
            f"bisect: {sha[:12]} is {verdict}" + (f" (exit {r.returncode})" * (verdict == "skip"))
        )
        if verdict == "good":
            lo = mid
        elif verdict == "bad":
            hi = mid
        else:  # as git bisect skip: drop it, the range keeps its ends
            del candidates[mid]
            hi -= 1
    first = candidates[hi]
    subject = git("log", "-1", "--format=%s", first)
    skipped = [c for c, v in probes if v == "skip"]
    if skipped and any(path.index(c) < path.index(first) for c in skipped):
        _print(f"bisect: first bad commit is {first[:12]} or a skipped one before it ({subject})")
        return None, probes
    _print(f"bisect: first bad commit {first} ({subject})")
    return first, probes


def _exit_code(checked: list[Checked]) -> int:
    if any(c.verdict == ERROR for c in checked):
        return 2
    return 1 if any(c.verdict == REGRESSION for c in checked) else 0


def _night_verdict(checked: list[Checked]) -> str:
    return {0: "green", 1: "regression", 2: "error"}[_exit_code(checked)]


def _versions() -> dict[str, str]:
    """Package versions the night ran with, as tags."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"emg.version.python": platform.python_version()}
    for pkg in ("torch", "ray", "mlflow", "numpy", "scipy"):
        try:
            out[f"emg.version.{pkg}"] = version(pkg)
        except PackageNotFoundError:
            out[f"emg.version.{pkg}"] = "absent"
    return out


def _print(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    from orchestration.launch import environment_problem

    if problem := environment_problem():
        print(f"error: {problem}", file=sys.stderr)
        return 2
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bisect"]:
        return _bisect_main(argv[1:])
    a = parser().parse_args(argv)
    from emgcore.errors import EmgDataError
    from orchestration import tracking

    try:
        return Night(a).run()
    except (EmgDataError, tracking.TrackingUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (SIGINT) while starting, before any run opened", file=sys.stderr)
        return 130


def _bisect_main(argv: Sequence[str]) -> int:
    a = bisect_parser().parse_args(argv)
    from emgcore.errors import EmgDataError
    from orchestration import suite, tracking
    from orchestration.driver import _storage

    repo = Path(a.repo or Path(__file__).resolve().parent.parent)
    try:
        entries = [e.name for e in suite.load(a.suite or suite.SUITE).select(a.only)]
        uri = tracking.resolve_uri(a.tracking_uri)
        tracking.check_reachable(uri)
        args = ["--tracking-uri", uri, "--storage-path", f"{_storage(a.storage_path)}/bisect"]
        args += ["--suite", str(Path(a.suite).resolve())] if a.suite else []
        args += ["--address", a.address] if a.address else []
        night = a.night or datetime.now(UTC).date().isoformat()
        first, _ = bisect(repo, a.good, a.bad, entries, night, args)
    except (EmgDataError, tracking.TrackingUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if first else 1


if __name__ == "__main__":
    sys.exit(main())
