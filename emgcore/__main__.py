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
from dataclasses import replace
from pathlib import Path

from emgcore.config import at_least
from emgcore.errors import EmgDataError, InvalidValueError


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    from emgcore.data import open_dataset
    from emgcore.preprocessing import DEFAULT_EMG, Pipeline
    from emgcore.splits import catalog, cross_session
    from emgcore.windows import RecordingCache, WindowDataset

    t0 = time.perf_counter()
    overrides = {"duration_s": args.duration} if args.duration else {}
    recs = open_dataset(args.data, **overrides)
    t_load = time.perf_counter() - t0
    cat = catalog(recs)
    print(
        f"data     {args.data}: {len(recs)} recordings, {cat['subject'].nunique()} subjects, "
        f"sessions {sorted(cat['session'].unique())}, {sum(r.duration_s for r in recs):.0f} s "
        f"({t_load:.1f} s to load)"
    )
    r0 = recs[0]
    print(
        f"shape    {r0.n_channels} channels ({r0.layout.kind}) @ {r0.fs:g} Hz; kinematics "
        f"{len(r0.joint_names)} ({r0.kinematics_unit or '-'}); labels {sorted(r0.labels)}"
    )

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


def _kinembed(args: argparse.Namespace) -> int:
    from emgcore.config import override, resolve_config
    from emgcore.data import open_dataset
    from emgcore.eval import report
    from emgcore.methods.kinembed import load_config, run
    from emgcore.windows import RecordingCache

    path = resolve_config(args.config)
    cfg = override(load_config(path), _settings(args.set), source=path)
    if args.subjects:
        cfg = replace(cfg, subjects=tuple(args.subjects.split(",")))
    if args.methods:
        cfg = replace(cfg, methods=tuple(args.methods.split(",")))
    overrides = {"duration_s": args.duration} if args.duration else {}
    recs = open_dataset(args.data, **overrides)
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


def _settings(pairs: Sequence[str]) -> dict[str, object]:
    """``--set KEY=VALUE`` pairs as config overrides; values are read as YAML."""
    import yaml

    from emgcore.config import yaml_problem

    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            msg = "expected KEY=VALUE, e.g. gestures.tune_users=1"
            raise InvalidValueError(msg, source=f"--set {pair}", field="--set")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            msg = f"not valid YAML: {yaml_problem(e)}"
            raise InvalidValueError(msg, source=f"--set {pair}", field=key.strip()) from e
    return out


def _sim_overrides(args: argparse.Namespace) -> dict[str, object]:
    """``--duration`` / ``--sim-subjects`` as simulator preset overrides (unset ones left out)."""
    pairs = (("duration_s", args.duration), ("n_subjects", args.sim_subjects))
    return {k: v for k, v in pairs if v}


def _add_run_options(p: argparse.ArgumentParser, sim_subjects: int | None) -> None:
    """The options posealign and jepa share: --set, --duration, --sim-subjects."""
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value (dotted key, YAML value), e.g. gestures.tune_users=1; "
        "repeatable",
    )
    p.add_argument(
        "--duration", type=at_least(0.1), default=None, help="seconds per simulated recording"
    )
    p.add_argument(
        "--sim-subjects",
        type=at_least(1, int),
        default=sim_subjects,
        help="simulated users (simulator only)",
    )


def _posealign(args: argparse.Namespace) -> int:
    from emgcore.config import load_yaml, override, resolve_config
    from emgcore.data import open_dataset
    from emgcore.eval.posereport import evaluate, write
    from emgcore.gestures import gesture_splits
    from emgcore.methods.posealign import PoseAlignConfig, train_all

    path = resolve_config(args.config)
    cfg = override(load_yaml(PoseAlignConfig, path), _settings(args.set), source=path)
    if args.methods:
        cfg = override(cfg, {"methods": tuple(args.methods.split(","))}, source="--methods")
    t0 = time.perf_counter()
    recs = open_dataset(args.data, **_sim_overrides(args))
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

    from emgcore.config import load_yaml, override, resolve_config
    from emgcore.data import open_dataset
    from emgcore.eval.lowchannel import low_channel_study
    from emgcore.methods.jepa import ABLATIONS, PoseEstConfig, ablate, as_table, channel_study

    path = resolve_config(args.config)
    cfg = override(load_yaml(PoseEstConfig, path), _settings(args.set), source=path)
    sim = _sim_overrides(args)
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


def main(argv: Sequence[str] | None = None) -> int:
    from emgcore.methods import METHODS

    parser = argparse.ArgumentParser(
        prog="python -m emgcore",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="simulate or load, preprocess, window, summarise")
    demo.add_argument(
        "--data",
        default="db8-like",
        help="simulator preset (db8-like, emg2pose-like, grid110, myo-like, "
        "flexemg-like) or a dataset path (default: db8-like)",
    )
    demo.add_argument(
        "--duration",
        type=at_least(0.1),
        default=None,
        help="seconds per simulated recording (default: the preset's)",
    )
    demo.add_argument("--window-ms", type=at_least(0.1), default=128.0)
    demo.add_argument("--stride-ms", type=at_least(0.1), default=52.0)
    demo.add_argument(
        "--cache", default=None, help="cache folder (default: $EMGCORE_CACHE or .emgcore_cache)"
    )
    # each protocol's defaults are its sweep method's (emgcore.methods.METHODS)
    kinembed, pose, jepa = (METHODS[m] for m in ("kinembed", "cpep", "jepa"))
    kin = sub.add_parser("kinembed", help="KinEMbed and its baselines, held-out-session R^2")
    kin.add_argument("--data", default=kinembed.data, help="simulator preset or dataset path")
    kin.add_argument(
        "--config",
        default=kinembed.preset,
        help="YAML file or a bundled preset: kinembed-paper, kinembed-sim, kinembed-smoke "
        f"(default: {kinembed.preset})",
    )
    kin.add_argument("--out", default="kinembed_results", help="output folder")
    kin.add_argument("--subjects", default=None, help="comma-separated subset of subjects")
    kin.add_argument("--methods", default=None, help="comma-separated subset of methods")
    kin.add_argument(
        "--duration", type=at_least(0.1), default=None, help="seconds per simulated session"
    )
    kin.add_argument("--cache", default=None, help="cache folder")
    kin.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value (dotted key, YAML value), e.g. test_session=sitting "
        "or 'train_sessions=[gait,standing]'; repeatable",
    )
    merge = sub.add_parser(
        "kinembed-report", help="one report from kinembed runs over disjoint subjects"
    )
    merge.add_argument("runs", nargs="+", help="output folders of kinembed runs")
    merge.add_argument("--out", required=True, help="output folder")
    pa = sub.add_parser("posealign", help="MAE, PoseT, CPEP, EMBridge: gesture LP / zero-shot")
    pa.add_argument(
        "--data",
        default=pose.data,
        help="simulator preset, emg2pose folder, or NinaPro DB2 + DB7 folder (with --config "
        "posealign-ninapro)",
    )
    pa.add_argument(
        "--config",
        default=pose.preset,
        help="YAML file or a bundled preset: posealign-sim, posealign-smoke (default: "
        f"{pose.preset}; the papers' sizes are PoseAlignConfig's defaults)",
    )
    pa.add_argument("--out", default="posealign_results", help="output folder")
    pa.add_argument("--methods", default=None, help="comma-separated: emg_mae,poset,cpep,...")
    _add_run_options(pa, sim_subjects=8)
    jp = sub.add_parser("jepa", help="EMG-JEPA: pre-training, pose fine-tuning, ablation table")
    jp.add_argument(
        "--data",
        default=jepa.data,
        help="simulator preset or dataset path; comma-separated for --study channels / "
        "low_channel (default: the simulator at 8, 16 and 110 channels)",
    )
    jp.add_argument(
        "--study",
        choices=("ablations", "channels", "low_channel"),
        default="ablations",
        help="ablations: Tables 2-5; channels: Table 1; low_channel: Table 6",
    )
    jp.add_argument(
        "--config",
        default=jepa.preset,
        help="YAML file or a bundled preset: jepa-sim, jepa-smoke (default: "
        f"{jepa.preset}; the paper's sizes are PoseEstConfig's defaults)",
    )
    jp.add_argument(
        "--ablations",
        default=None,
        help="comma-separated rows to run (default: all of emgcore.methods.jepa.ABLATIONS)",
    )
    jp.add_argument("--out", default="jepa_results", help="output folder")
    _add_run_options(jp, sim_subjects=None)
    args = parser.parse_args(argv)
    commands = {
        "demo": _demo,
        "kinembed": _kinembed,
        "kinembed-report": _kinembed_report,
        "posealign": _posealign,
        "jepa": _jepa,
    }
    try:
        return commands[args.command](args)
    except EmgDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
