"""``python -m emgcore``: the science on one process.

``demo`` simulates (or loads) a dataset, preprocesses it through the on-disk cache, windows it and
prints a summary. ``kinembed`` runs one KinEMbed configuration end to end (every method, the
paper's cross-session protocol) and prints Tables 1 and 2. ``posealign`` trains the MAEs, PoseT,
CPEP, the Q-Former and EMBridge and writes Table 2-style scores and the evaluation figures.
``jepa`` pre-trains EMG-JEPA, fine-tunes it for hand pose and writes the ablation table.
Bad input prints one line naming the file and field and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# only light imports here: ``--help`` and a bad flag answer before torch loads (each command
# imports what it runs; the method registry, emgcore.methods.METHODS, once the arguments parse)
from emgcore.config import (
    ArgumentParser,
    HelpFormatter,
    at_least,
    help_text,
    override,
    override_from_flag,
    resolve_config,
)
from emgcore.errors import EmgDataError, InvalidValueError

# each protocol's defaults are its sweep method's (emgcore.methods.METHODS[...].data / .preset),
# filled in after parsing; named here for --help (tests/test_cli.py checks they agree)
DEFAULTS = {
    "kinembed": ("kinembed", "db8-like", "kinembed-sim"),
    "posealign": ("cpep", "emg2pose-like", "posealign-sim"),
    "jepa": ("jepa", "emg2pose-like", "jepa-sim"),
}
# ``--set`` examples each command's --help shows (tests/test_cli.py applies every one)
SET_EXAMPLES = {
    "kinembed": ("kinembed.epochs=50", "test_session=A2", "'methods=[pca,kinembed]'"),
    "posealign": ("gestures.tune_users=1", "cpep.epochs=5"),
    "jepa": ("head.epochs=5", "pretrain=false"),
}


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    from emgcore.data import open_dataset
    from emgcore.preprocessing import DEFAULT_EMG, Pipeline
    from emgcore.splits import catalog, cross_session
    from emgcore.windows import RecordingCache, WindowDataset

    t0 = time.perf_counter()
    recs = open_dataset(args.data, **_sim_overrides(args))
    t_load = time.perf_counter() - t0
    cat = catalog(recs)
    print(
        f"data     {args.data}: {len(recs)} recordings, {cat['subject'].nunique()} subjects, "
        f"sessions {sorted(cat['session'].unique())}, {sum(r.duration_s for r in recs):.0f} s "
        f"({t_load:.1f} s to load)"
    )
    r0 = recs[0]
    print(
        f"shape    {r0.n_channels} channels ({r0.layout.kind}) @ {r0.fs:g} Hz in "
        f"{r0.emg_unit}; kinematics {len(r0.joint_names)} ({r0.kinematics_unit or '-'}); "
        f"labels {sorted(r0.labels)}"
    )
    names = r0.channel_labels
    print(f"channels {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}")

    steps = [dict(s) for s in DEFAULT_EMG]
    steps[0]["high"] = min(450.0, 0.45 * r0.fs)
    pipe = Pipeline.from_config(steps)
    cache = RecordingCache(args.cache)
    t0 = time.perf_counter()
    cached = cache.get_all(recs, pipe)
    t_pre = time.perf_counter() - t0
    print(f"prep     {[s['name'] for s in pipe.to_config()]} -> {cache.root} ({t_pre:.2f} s)")

    length = int(args.window_ms * r0.fs / 1000)
    stride = int(args.stride_ms * r0.fs / 1000)
    has_kin = all(c.kinematics is not None for c in cached)
    sessions = sorted(cat["session"].unique())
    split = cross_session(cat, test_sessions=sessions[-1:]) if len(sessions) > 1 else None
    for part in ("train", "test") if split else ("all",):
        sub = cached if split is None else split.select(cached, part)
        ds = WindowDataset(
            sub,
            length,
            stride,
            target="last" if has_kin else "none",
            label="gesture" if "gesture" in cached[0].labels else None,
        )
        item = ds[0]
        x = np.stack([ds[i]["emg"].numpy() for i in range(0, len(ds), max(1, len(ds) // 256))])
        print(
            f"windows  {part:<5} {len(ds):>7} x {tuple(item['emg'].shape)} "
            f"(window {args.window_ms:g} ms, stride {args.stride_ms:g} ms); "
            f"emg std {x.std():.3g}"
        )
    return 0


def _config(args: argparse.Namespace, cls: type) -> object:
    """The command's config: ``--config`` (file or preset; an error names that file), then
    ``--set`` (an error names ``--set`` and the pair), then ``--subjects`` / ``--methods``
    where the command has them (an error names the flag)."""
    from emgcore.config import load_yaml

    cfg = override_from_flag(load_yaml(cls, resolve_config(args.config)), args.set)
    for flag in ("subjects", "methods"):
        if getattr(args, flag, None):
            values = tuple(v.strip() for v in getattr(args, flag).split(","))
            cfg = override(cfg, {flag: values}, source=f"--{flag} {getattr(args, flag)}")
    return cfg


def _kinembed_config(args: argparse.Namespace) -> object:
    from emgcore.methods.kinembed import ExperimentConfig

    return _config(args, ExperimentConfig)


def _kinembed(args: argparse.Namespace) -> int:
    from emgcore.data import open_dataset
    from emgcore.eval import report
    from emgcore.methods.kinembed import run
    from emgcore.windows import RecordingCache

    cfg = _kinembed_config(args)
    recs = open_dataset(args.data, **_sim_overrides(args, "kinembed"))
    print(
        f"kinembed on {args.data}: {len(recs)} recordings; config {args.config or 'paper defaults'}"
    )
    res = run(recs, cfg, log=print, cache=RecordingCache(args.cache))  # logs the session split
    paths = report.write(res, args.out)
    print()
    print(paths["tables"].read_text())
    print(
        f"trained on {', '.join(res.train_sessions)}; held out {res.test_session}; "
        f"{res.seconds:.0f} s; tables, scores and figures in {args.out}"
    )
    return 0


def _kinembed_report(args: argparse.Namespace) -> int:
    from emgcore.eval import report

    for run in args.runs:
        if not (Path(run) / "scores.json").is_file():
            msg = "not a kinembed run's output folder (no scores.json)"
            raise InvalidValueError(msg, source=run, field="runs")
    res = report.load(args.runs)
    paths = report.write(res, args.out)
    print(paths["tables"].read_text())
    print(f"merged {len(args.runs)} run(s); tables, scores and figures in {args.out}")
    return 0


def _sim_overrides(args: argparse.Namespace, command: str | None = None) -> dict[str, object]:
    """``--duration`` / ``--sim-subjects`` as simulator preset overrides. Flags given win; for
    ``command``, the rest is the method's smoke size (what ``sweep.py --smoke`` simulates) when
    ``--config`` is its smoke preset on its default simulator (a smoke run is small everywhere,
    seconds to a few minutes), else the command's own default size (``SIM_DEFAULTS``)."""
    sim_subjects = getattr(args, "sim_subjects", None)
    given = {k: v for k, v in (("duration_s", args.duration), ("n_subjects", sim_subjects)) if v}
    if command is None:
        return given
    from emgcore.methods import METHODS

    m = METHODS[DEFAULTS[command][0]]
    smoke = _same_config(args.config, m.smoke_preset) and args.data == m.data
    return dict(m.smoke_sim if smoke else SIM_DEFAULTS.get(command, {})) | given


def _same_config(given: str, preset: str) -> bool:
    """Whether ``--config`` names the bundled ``preset``, by name or by its file's path."""
    try:
        return resolve_config(given).resolve() == resolve_config(preset).resolve()
    except EmgDataError:  # no such config: the command says so when it loads it
        return False


# simulator sizes a command needs beyond its preset's (posealign's splits take 8 users)
SIM_DEFAULTS = {"posealign": {"n_subjects": 8}}


def _add_config(
    p: argparse.ArgumentParser, command: str, data: str, presets: str, note: str = ""
) -> None:
    """``--data`` (its help: ``data``), ``--config`` and ``--set``: the same for every command
    that runs a config."""
    method, default_data, preset = DEFAULTS[command]
    p.add_argument("--data", default=None, help=f"{data} (default: {default_data})")
    p.add_argument(
        "--config",
        default=None,
        help=f"YAML file or a bundled preset: {presets} (default: {preset}, the {method} "
        f"sweep's{note})",
    )
    examples = " or ".join(f"--set {e}" for e in SET_EXAMPLES[command])
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value after --config: a dotted key of the config, a YAML "
        f"value, e.g. {examples}; repeatable (default: none)",
    )


def _default_data(args: argparse.Namespace, command: str) -> None:
    """``--data`` / ``--config`` left out: the sweep method's (they are only named for --help)."""
    from emgcore.methods import METHODS

    m = METHODS[DEFAULTS[command][0]]
    args.data = args.data or m.data
    args.config = args.config or m.preset


def _add_sim(p: argparse.ArgumentParser, sim_subjects: int | None, unit: str) -> None:
    """``--duration`` and ``--sim-subjects``, for the simulator presets."""
    preset = "the preset's"
    p.add_argument(
        "--duration",
        type=at_least(0.1),
        default=None,
        help=f"seconds per simulated {unit} (simulator only; default: the preset's, with the "
        "smoke preset the smoke size)",
    )
    p.add_argument(
        "--sim-subjects",
        type=at_least(1, int),
        default=None,
        help=f"simulated users (simulator only; default: {sim_subjects or preset}, with the "
        "smoke preset the smoke size)",
    )


def _posealign_config(args: argparse.Namespace) -> object:
    from emgcore.methods.posealign import PoseAlignConfig

    return _config(args, PoseAlignConfig)


def _jepa_config(args: argparse.Namespace) -> object:
    from emgcore.methods.jepa import PoseEstConfig

    return _config(args, PoseEstConfig)


def _posealign(args: argparse.Namespace) -> int:
    from emgcore.data import open_dataset
    from emgcore.eval.posereport import evaluate, write
    from emgcore.gestures import gesture_splits
    from emgcore.methods.posealign import train_all

    cfg = _posealign_config(args)
    t0 = time.perf_counter()
    recs = open_dataset(args.data, **_sim_overrides(args, "posealign"))
    splits = gesture_splits(recs, cfg.gestures)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    print(f"posealign on {args.data}: {len(recs)} recordings; windows: {sizes}")
    enc = train_all(splits["pretrain"], cfg)
    paths = write(evaluate(enc, splits, cfg), args.out)
    print(paths["table"].read_text())
    print(f"{time.perf_counter() - t0:.0f} s; tables and figures in {args.out}")
    return 0


def _jepa(args: argparse.Namespace) -> int:
    import pandas as pd

    from emgcore.data import open_dataset
    from emgcore.eval.lowchannel import low_channel_study
    from emgcore.methods.jepa import ABLATIONS, ablate, as_table, channel_study

    cfg = _jepa_config(args)
    sim = _sim_overrides(args, "jepa")
    specs = args.data.split(",")
    layouts = {"channels": ("ring8", "ring16", "grid110"), "low_channel": ("ring8", "grid110")}
    if args.study in layouts and specs == ["emg2pose-like"]:  # the simulator, per channel count
        data = {
            lay: open_dataset("emg2pose-like", layout=lay, seed=i, **sim)
            for i, lay in enumerate(layouts[args.study])
        }
    else:
        data = {spec: open_dataset(spec, **sim) for spec in specs}
    t0 = time.perf_counter()
    print(f"jepa {args.study} on {', '.join(data)}")
    if args.study == "ablations":
        names = args.ablations.split(",") if args.ablations else list(ABLATIONS)
        rows = ablate(next(iter(data.values())), cfg, names)
    elif args.study == "channels":
        rows = channel_study(data, cfg)
    else:
        if len(data) != 2:
            raise InvalidValueError(
                "--study low_channel needs two data sets, LOW,DENSE (a band and a grid)",
                source=args.data,
                field="--data",
            )
        low, dense = data.values()
        rows = [{"ablation": r.pop("method"), **r} for r in low_channel_study(low, dense, cfg)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.study}.txt").write_text(as_table(rows) + "\n")
    pd.DataFrame(rows).to_csv(out / f"{args.study}.csv", index=False)
    print(as_table(rows))
    print(f"{time.perf_counter() - t0:.0f} s; table in {out}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The command line; building it (and ``--help``) imports nothing heavy."""
    parser = ArgumentParser(
        prog="python -m emgcore",
        description=help_text(__doc__),
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    presets = "db8-like, emg2pose-like, grid110, myo-like, flexemg-like, myo-cohorts"

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=summary,
            description=summary,
            formatter_class=HelpFormatter,
        )

    demo = command("demo", "simulate or load, preprocess, window, summarise")
    demo.add_argument(
        "--data",
        default="db8-like",
        help=f"simulator preset ({presets}) or a dataset path (default: db8-like)",
    )
    demo.add_argument(
        "--duration",
        type=at_least(0.1),
        default=None,
        help="seconds per simulated recording (simulator only; default: the preset's)",
    )
    demo.add_argument(
        "--window-ms",
        type=at_least(0.1),
        default=128.0,
        help="window length in milliseconds (default: 128)",
    )
    demo.add_argument(
        "--stride-ms",
        type=at_least(0.1),
        default=52.0,
        help="step between window starts in milliseconds (default: 52)",
    )
    demo.add_argument(
        "--cache",
        default=None,
        help="preprocessing cache folder (default: $EMGCORE_CACHE, else ./.emgcore_cache)",
    )

    kin = command("kinembed", "KinEMbed and its baselines, held-out-session R^2")
    _add_config(
        kin,
        "kinembed",
        f"simulator preset ({presets}) or dataset path",
        "kinembed-paper, kinembed-sim, kinembed-smoke",
    )
    kin.add_argument(
        "--out",
        default="kinembed_results",
        help="output folder for tables, scores and figures (default: kinembed_results)",
    )
    kin.add_argument(
        "--subjects",
        default=None,
        help="comma-separated subjects to run, e.g. s00,s01 on the simulator (default: the "
        "config's subjects, else every subject with kinematics)",
    )
    kin.add_argument(
        "--methods",
        default=None,
        help="comma-separated methods to compare, e.g. pca,kinembed (default: the config's)",
    )
    _add_sim(kin, None, "session")
    kin.add_argument(
        "--cache",
        default=None,
        help="preprocessing cache folder (default: $EMGCORE_CACHE, else ./.emgcore_cache)",
    )

    merge = command("kinembed-report", "one report from kinembed runs over disjoint subjects")
    merge.add_argument(
        "runs", nargs="+", help="output folders of kinembed runs (each holds scores.json)"
    )
    merge.add_argument(
        "--out", required=True, help="output folder for the merged tables and figures"
    )

    pa = command("posealign", "MAE, PoseT, CPEP, EMBridge: gesture LP / zero-shot")
    _add_config(
        pa,
        "posealign",
        "simulator preset, emg2pose folder, or NinaPro DB2 + DB7 folder (with --config "
        "posealign-ninapro)",
        "posealign-sim, posealign-smoke, posealign-ninapro",
        "; the papers' sizes are PoseAlignConfig's defaults",
    )
    pa.add_argument(
        "--out",
        default="posealign_results",
        help="output folder for tables and figures (default: posealign_results)",
    )
    pa.add_argument(
        "--methods",
        default=None,
        help="comma-separated methods to train, e.g. emg_mae,poset,cpep (default: the "
        "config's: emg_mae, poset, cpep, qformer, embridge)",
    )
    _add_sim(pa, SIM_DEFAULTS["posealign"]["n_subjects"], "recording")

    jp = command("jepa", "EMG-JEPA: pre-training, pose fine-tuning, ablation table")
    jp.add_argument(
        "--study",
        choices=("ablations", "channels", "low_channel"),
        default="ablations",
        help="ablations: Tables 2-5; channels: Table 1; low_channel: Table 6 (default: ablations)",
    )
    _add_config(
        jp,
        "jepa",
        "simulator preset or dataset path; comma-separated for --study channels / low_channel, "
        "where the simulator runs at 8, 16 and 110 channels",
        "jepa-sim, jepa-smoke",
        "; the paper's sizes are PoseEstConfig's defaults",
    )
    jp.add_argument(
        "--ablations",
        default=None,
        help="comma-separated rows to run, e.g. emg_jepa,supervised (default: all of "
        "emgcore.methods.jepa.ABLATIONS)",
    )
    jp.add_argument(
        "--out", default="jepa_results", help="output folder for the table (default: jepa_results)"
    )
    _add_sim(jp, None, "recording")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    commands = {
        "demo": _demo,
        "kinembed": _kinembed,
        "kinembed-report": _kinembed_report,
        "posealign": _posealign,
        "jepa": _jepa,
    }
    try:
        if args.command in DEFAULTS:
            _default_data(args, args.command)
        return commands[args.command](args)
    except EmgDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
