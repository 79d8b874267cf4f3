"""KinEMbed's tables and figures from an :class:`~emgcore.methods.kinembed.ExperimentResult`.

Table 1: overall mean R^2 per method, mean +- std across subjects (All, and AB / limb difference
when ``ld_subjects`` is set). Table 2: per-DoA R^2 of able-bodied subjects. Every table names the
training sessions and the held-out one, and ``tables.txt`` ends with the configuration each method
was refitted with (the mode of the per-subject CV winners) and those winners. Figure 2: a
120-second held-out prediction trace; Figure 3: per-DoA bars; Figure 4: the per-subject
distribution.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emgcore.methods.kinembed import COMPARED, ExperimentResult

SHORT = {
    "thumb_rotation": "Th.R",
    "thumb_flexion": "Th.F",
    "index_flexion": "Idx",
    "middle_flexion": "Mid",
    "ring_little_flexion": "Rng",
}


def _label(method: str) -> str:
    return COMPARED[method].label


def table1(res: ExperimentResult) -> pd.DataFrame:
    """Rows: methods; columns ``<group> mean`` and ``<group> std`` across subjects (each subject
    averaged over seeds), and ``seeds std``: the std across seeds of the all-subject mean."""
    per = res.per_subject()
    ld = set(res.config.ld_subjects)
    groups = {"All": per}
    if ld:
        groups["AB"] = per[~per["subject"].isin(ld)]
        groups["LD"] = per[per["subject"].isin(ld)]
    out = {}
    for g, df in groups.items():
        stats = df.groupby("method", sort=False)["mean"].agg(["mean", "std"])
        out[f"{g} (n={df['subject'].nunique()}) mean"] = stats["mean"]
        out[f"{g} std"] = stats["std"].fillna(0.0)
    # the paper's other spread: the subject-mean R^2 of each seed, std across seeds
    by_seed = res.frame().groupby(["method", "seed"], sort=False)["mean"].mean()
    out["seeds std"] = by_seed.groupby(level="method", sort=False).std().fillna(0.0)
    table = pd.DataFrame(out)
    table.index = [_label(m) for m in table.index]
    return table


def table2(res: ExperimentResult) -> pd.DataFrame:
    """Per-DoA R^2 averaged over able-bodied subjects (all subjects when none is marked LD)."""
    per = res.per_subject()
    per = per[~per["subject"].isin(set(res.config.ld_subjects))]
    cols = [*res.doa_names, "mean"]
    table = per.groupby("method", sort=False)[cols].mean()
    table.columns = [SHORT.get(c, c) if c != "mean" else "Mean" for c in cols]
    table.index = [_label(m) for m in table.index]
    return table


def format_table(table: pd.DataFrame, title: str) -> str:
    """Plain-text table with the best value per column marked ``*`` (std columns unmarked)."""
    lines = [title]
    width = max(10, *(len(c) for c in table.columns))
    lines.append(f"{'Method':<10}" + "".join(f"{c:>{width + 2}}" for c in table.columns))
    best = {c: table[c].max() for c in table.columns if "std" not in c}
    for name, row in table.iterrows():
        cells = []
        for c in table.columns:
            mark = "*" if c in best and np.isclose(row[c], best[c]) and len(table) > 1 else " "
            cells.append(f"{row[c]:>{width + 1}.3f}{mark}")
        lines.append(f"{name!s:<10}" + "".join(cells))
    return "\n".join(lines)


def format_choices(res: ExperimentResult) -> str:
    """Per method: the configuration fixed for every subject (the mode) and the per-subject
    session-CV winners it was taken from (``subject: params``), one line each."""
    lines = [
        "Configurations: the mode of the per-subject session-CV winners, fixed for every subject"
    ]
    for method, chosen in res.chosen.items():
        if not chosen:
            continue
        for stage in ("hyper", "grid"):
            wins = [w for w in res.winners if w["method"] == method and w["stage"] == stage]
            if not wins:
                continue
            keys = list(wins[0]["params"]) if stage == "hyper" else list(chosen)
            fixed = {k: chosen[k] for k in keys if k in chosen}
            per = "; ".join(
                f"{w['subject']} " + ",".join(f"{w['params'][k]}" for k in keys) for w in wins
            )
            name = _label(method) + (" (hyper)" if stage == "hyper" else "")
            lines.append(f"{name:<16} {_params(fixed)}   [{', '.join(keys)} per subject: {per}]")
    return "\n".join(lines)


def _params(p: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in p.items())


def _split(res: ExperimentResult) -> str:
    return f"trained on {' + '.join(res.train_sessions)}, held-out session {res.test_session}"


def write(res: ExperimentResult, out: str | Path) -> dict[str, Path]:
    """Write tables (txt, csv), every score (csv, json) and the three figures (PNG) into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    t1, t2 = table1(res), table2(res)
    text = "\n\n".join(
        [
            format_table(t1, f"Table 1. Mean R^2 over DoA; {_split(res)}"),
            format_table(t2, f"Table 2. Per-DoA R^2; {_split(res)}"),
            *([format_choices(res)] if res.chosen else []),
        ]
    )
    paths["tables"] = out / "tables.txt"
    paths["tables"].write_text(text + "\n")
    t1.to_csv(out / "table1.csv")
    t2.to_csv(out / "table2.csv")
    res.frame().to_csv(out / "scores.csv", index=False)
    paths["scores"] = out / "scores.json"
    paths["scores"].write_text(json.dumps(_jsonable(res), indent=1))
    paths["traces"] = out / "traces.npz"
    np.savez_compressed(
        paths["traces"],
        **{
            f"{m}|{s}|{k}": a
            for (m, s), pair in res.traces.items()
            for k, a in zip("yp", pair, strict=True)
        },
    )
    paths["fig2"] = _trace(res, out / "fig2_trace.png")
    paths["fig3"] = _per_doa(res, t2, out / "fig3_per_doa.png")
    paths["fig4"] = _distribution(res, out / "fig4_subjects.png")
    return paths


def load(folders: list[str | Path]) -> ExperimentResult:
    """One result from the output folders of runs over disjoint subjects (e.g. one per node).

    The configuration and sessions must agree; rows, CV records and traces are concatenated.
    """
    from emgcore.methods.kinembed import config_from_dict

    merged: ExperimentResult | None = None
    for folder in map(Path, folders):
        data = json.loads((folder / "scores.json").read_text())
        cfg = config_from_dict(data["config"], source=folder / "scores.json")
        part = ExperimentResult(
            cfg, tuple(data["doa_names"]), tuple(data["train_sessions"]), data["test_session"]
        )
        part.rows, part.selection, part.seconds = data["rows"], data["selection"], data["seconds"]
        part.winners, part.chosen = data.get("winners", []), data.get("chosen", {})
        part.excluded = tuple(data.get("excluded", ()))
        part.window_s = cfg.features.stride_ms / 1000
        with np.load(folder / "traces.npz") as npz:
            for key in npz.files:
                if key.endswith("|y"):
                    m, s, _ = key.split("|")
                    part.traces[(m, s)] = (npz[key], npz[f"{m}|{s}|p"])
        if merged is None:
            merged = part
            continue
        if dataclasses.replace(part.config, subjects=()) != dataclasses.replace(
            merged.config, subjects=()
        ):
            raise ValueError(f"{folder}: configuration differs from {folders[0]}")
        if (part.train_sessions, part.test_session) != (merged.train_sessions, merged.test_session):
            raise ValueError(f"{folder}: sessions differ from {folders[0]}")
        if part.chosen != merged.chosen:  # each run took the mode over its own subjects only
            raise ValueError(
                f"{folder}: its runs fixed different configurations ({part.chosen} vs "
                f"{merged.chosen} in {folders[0]}); the protocol's mode is over all subjects: "
                "run selection over all subjects, or fix the grids to one value (e.g. dims: [32])"
            )
        merged.rows += part.rows
        merged.selection += part.selection
        merged.winners += part.winners
        merged.traces.update(part.traces)
        merged.seconds += part.seconds
    if merged is None:
        raise ValueError("no result folders given")
    return merged


def _jsonable(res: ExperimentResult) -> dict[str, Any]:
    return {
        "config": dataclasses.asdict(res.config),
        "doa_names": list(res.doa_names),
        "train_sessions": list(res.train_sessions),
        "test_session": res.test_session,
        "rows": res.rows,
        "selection": res.selection,
        "winners": res.winners,
        "chosen": res.chosen,
        "excluded": list(res.excluded),
        "seconds": res.seconds,
    }


def _trace(res: ExperimentResult, path: Path, seconds: float = 120.0) -> Path:
    import matplotlib.pyplot as plt

    method = (
        "kinembed" if any(m == "kinembed" for m, _ in res.traces) else next(iter(res.traces))[0]
    )
    subject = next(s for m, s in res.traces if m == method)
    y, pred = res.traces[(method, subject)]
    n = min(len(y), int(seconds / res.window_s))
    t = np.arange(n) * res.window_s
    fig, axes = plt.subplots(
        len(res.doa_names), 1, figsize=(10, 1.6 * len(res.doa_names)), sharex=True
    )
    for j, ax in enumerate(np.atleast_1d(axes)):
        ax.plot(t, y[:n, j], color="0.2", lw=1.0, label="glove DoA")
        ax.plot(t, pred[:n, j], color="tab:red", lw=1.0, label=_label(method))
        ax.set_ylabel(SHORT.get(res.doa_names[j], res.doa_names[j]))
    np.atleast_1d(axes)[0].legend(loc="upper right", fontsize=8)
    np.atleast_1d(axes)[-1].set_xlabel("time (s)")
    fig.suptitle(f"{_label(method)}: subject {subject}, held-out session {res.test_session}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _per_doa(res: ExperimentResult, t2: pd.DataFrame, path: Path) -> Path:
    import matplotlib.pyplot as plt

    t2 = t2.drop(index="ARIMA", errors="ignore").drop(columns="Mean")  # as in the paper's Fig. 3
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(len(t2), 1)
    x = np.arange(len(t2.columns))
    for i, (name, row) in enumerate(t2.iterrows()):
        ax.bar(x + i * width, row.to_numpy(), width, label=str(name))
    ax.set_xticks(x + 0.4 - width / 2, t2.columns)
    ax.set_ylabel("R$^2$ (held-out session)")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _distribution(res: ExperimentResult, path: Path) -> Path:
    import matplotlib.pyplot as plt

    per = res.per_subject()
    methods = list(dict.fromkeys(per["method"]))
    data = [per.loc[per["method"] == m, "mean"].to_numpy() for m in methods]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.boxplot(data, showmeans=True)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.08, 0.08, len(d)), d, s=12, color="k", zorder=3)
    ax.set_xticks(range(1, len(methods) + 1), [_label(m) for m in methods])
    ax.set_ylabel("mean R$^2$ per subject")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
