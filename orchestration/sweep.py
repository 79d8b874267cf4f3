"""Staged hyper-parameter sweep: ``python orchestration/sweep.py <method>``, any method of
:data:`emgcore.methods.METHODS` (``kinembed``, ``mae``, ``cpep``, ``embridge``, ``jepa``,
``aemg``).

One Ray Tune experiment per stage of ``search_spaces/<method>.yaml``; each trial is a Ray Train
``TorchTrainer`` run of the method's trial (:mod:`orchestration.worker`, the one worker loop),
launched by a small Tune driver function. Each stage fixes the winners of the
stages it inherits from. After the last stage the winner is retrained with every seed, scored on
the held-out data (KinEMbed: the held-out session of every evaluation subject; the pose family:
the evaluation users; EMG-JEPA: the test users), logged to MLflow and registered; the
``champion`` alias moves only on improvement on the selection split, never on the test data, and
never to a model no better than its task's trivial baseline
(:func:`orchestration.tracking.register`; the space's ``mode`` says which way: JA-MAE is an
error, lower wins). ``cpep`` and ``embridge`` start from the registered ``mae-emg@champion`` and
``mae-pose@champion`` (pre-training them first when missing; refusing ones pre-trained on other
data or another split unless ``--mae-any-data``).

``--study NAME`` runs one of the space's studies instead (e.g. ``data_efficiency``): every point
of its grid retrained per seed and scored like the final run, tabulated and plotted against the
grid, nothing selected or registered.

Laptop: local Ray in-process, MLflow in ``./mlflow.db``, Ray results in ``./ray_results``.
Cluster: the same command through ``ray job submit``, with ``RAY_ADDRESS``/``--address``,
``MLFLOW_TRACKING_URI``/``--tracking-uri`` and a shared ``--storage-path``.

Exit status: 0 done, 1 the sweep failed, 2 bad input or tracking unreachable, 130 / 143
interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# only light imports here: ``--help`` and a bad flag answer before torch, Ray or MLflow load
# (the driver, the method registry and tracking are imported once the arguments parse)
from emgcore.config import ArgumentParser, HelpFormatter, at_least, help_text

if TYPE_CHECKING:
    from orchestration.driver import Options

# the bundled search spaces, one per method (orchestration.search_space.SEARCH_SPACES_DIR)
SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


def names(what: str) -> Callable[[str], tuple[str, ...]]:
    """An argparse ``type`` for a comma-separated list of names (``S1,S3``), as a tuple; an
    empty name or one given twice is refused in one line naming the flag."""

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(n.strip() for n in text.split(","))
        if not all(items):
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        if twice := sorted({n for n in items if items.count(n) > 1}):
            raise argparse.ArgumentTypeError(f"{', '.join(twice)} given twice in {text!r}")
        return items

    return parse


def add_cluster_flags(p: argparse.ArgumentParser) -> None:
    """Where and on what a run trains and tracks: ``--workers``, ``--gpus-per-worker``,
    ``--cpus-per-worker``, ``--address``, ``--storage-path``, ``--tracking-uri`` (the sweep's
    and the nightly's, the same flags with the same defaults)."""
    p.add_argument(
        "--workers",
        type=at_least(1, int),
        default=1,
        help="Ray Train workers per trial, data parallel (default: 1)",
    )
    p.add_argument(
        "--gpus-per-worker",
        type=at_least(0),
        default=0.0,
        help="GPUs per worker, fractions allowed (default: 0, CPU only)",
    )
    p.add_argument(
        "--cpus-per-worker",
        type=at_least(0.01),
        default=1.0,
        help="CPUs per worker; its torch threads are the whole part (default: 1)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray started in-process)",
    )
    p.add_argument(
        "--storage-path",
        default=None,
        help="Ray results and checkpoints (default: ./ray_results; shared storage, e.g. "
        "s3://... or an NFS path, on a multi-node cluster)",
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )


def parser() -> argparse.ArgumentParser:
    """The command line (no heavy import: building it, and ``--help``, take well under 1 s)."""
    p = ArgumentParser(
        prog="python orchestration/sweep.py",
        description=help_text(__doc__),
        formatter_class=HelpFormatter,
    )
    bundled = ", ".join(sorted(f.stem for f in SPACES.glob("*.yaml")))
    p.add_argument(
        "method",
        metavar="METHOD",
        help="which method to sweep: a name of emgcore.methods.METHODS, searched over "
        f"search_spaces/METHOD.yaml unless --space (bundled: {bundled})",
    )
    p.add_argument(
        "--data",
        default="",
        help="simulator preset or dataset path (default: the simulator: db8-like for kinembed, "
        "emg2pose-like for mae, cpep, embridge and jepa, myo-cohorts for aemg)",
    )
    p.add_argument(
        "--config",
        default=None,
        help="base config: YAML file or bundled preset (default: kinembed-sim, posealign-sim, "
        "jepa-sim or aemg-sim; their -smoke presets with --smoke)",
    )
    p.add_argument(
        "--space", default=None, help="search-space YAML (default: search_spaces/METHOD.yaml)"
    )
    p.add_argument(
        "--stages",
        type=names("stage names"),
        default=None,
        help="comma-separated stages to run, e.g. loss,architecture (default: all)",
    )
    p.add_argument(
        "--subjects",
        type=names("subject names"),
        default=None,
        help="comma-separated subjects every trial is evaluated on (and the final run's "
        "selection score), e.g. S1,S3 (DB8's names; the simulator's are s00, s01, ...): "
        "replaces the search space's 'subjects' list; a subject "
        "the data lacks stops the sweep before it starts (default: the space's list, else "
        "every subject)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        default=None,
        help="tiny budget: a small simulated dataset, 2 points per stage, the method's smoke "
        "preset; every stage still runs (a few minutes on 2 cores)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="SWEEP_ID",
        help="continue an interrupted sweep (default: the latest one of this method) with the "
        "flags it started with (found in the storage path, or through the tracking server from "
        "any directory): finished trials are not rerun and no MLflow run is duplicated; only "
        "resource flags may differ",
    )
    p.add_argument(
        "--max-concurrent",
        type=at_least(1, int),
        default=None,
        help="trials at once (default: what the cluster's CPUs/GPUs hold when the sweep "
        "starts; on an autoscaling cluster give the number wanted: trials waiting for "
        "resources make the autoscaler add nodes)",
    )
    add_cluster_flags(p)
    p.add_argument(
        "--experiment", default=None, help="MLflow experiment name (default: the method)"
    )
    p.add_argument(
        "--duration",
        type=at_least(0.1),
        default=None,
        help="seconds per simulated session (default: the preset's; shorter with --smoke)",
    )
    p.add_argument(
        "--sim-subjects",
        type=at_least(1, int),
        default=None,
        help="simulated users (simulator presets only; default: the preset's)",
    )
    p.add_argument(
        "--cache",
        default=None,
        help="preprocessing cache folder, shared by the trials (default: $EMGCORE_CACHE, else "
        "./.emgcore_cache)",
    )
    p.add_argument(
        "--registry-name", default=None, help="registered model name (default: the method)"
    )
    p.add_argument(
        "--skip-final",
        action="store_true",
        default=None,
        help="stop after the stages: no retraining, held-out evaluation or registration",
    )
    p.add_argument(
        "--study",
        default=None,
        metavar="NAME",
        help="run one of the search space's studies instead of its stages (e.g. cpep's "
        "data_efficiency or batch_size): every point scored like the final run and plotted; "
        "nothing registered (default: none, the stages run)",
    )
    p.add_argument(
        "--mae-any-data",
        action="store_true",
        default=None,
        help="cpep/embridge: start from the registered MAE champions even when they were "
        "pre-trained on other data or another split (refused otherwise)",
    )
    return p


def parse(argv: Sequence[str] | None) -> Options:
    p = parser()
    a = p.parse_args(argv)
    if a.method not in {f.stem for f in SPACES.glob("*.yaml")}:  # else the space names it
        from emgcore.methods import METHODS

        if a.method not in METHODS:
            known = ", ".join(repr(m) for m in sorted(METHODS))
            p.error(f"argument METHOD: invalid choice: {a.method!r} (choose from {known})")
    from orchestration.driver import Options

    return Options(
        method=a.method,
        data=a.data,
        config=a.config,
        space=a.space,
        stages=a.stages or (),
        subjects=a.subjects or (),
        smoke=a.smoke,
        resume=a.resume,
        max_concurrent=a.max_concurrent,
        workers=a.workers,
        gpus_per_worker=a.gpus_per_worker,
        cpus_per_worker=a.cpus_per_worker,
        address=a.address,
        storage_path=a.storage_path,
        tracking_uri=a.tracking_uri,
        experiment=a.experiment,
        duration=a.duration,
        sim_subjects=a.sim_subjects,
        cache=a.cache,
        registry_name=a.registry_name,
        skip_final=a.skip_final,
        study=a.study,
        mae_any_data=a.mae_any_data,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the sweep's own handlers: imports, reading the config
        print("interrupted (SIGINT) while starting, before any run opened", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    from orchestration.launch import environment_problem  # stdlib only: a job's bare python

    if problem := environment_problem():  # one line, exit 2 (before anything imports them)
        print(f"error: {problem}", file=sys.stderr)
        return 2
    opts = parse(argv)
    from emgcore.errors import EmgDataError
    from orchestration import tracking
    from orchestration.driver import Sweep

    try:
        return Sweep(opts).run()
    except (EmgDataError, tracking.TrackingUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
