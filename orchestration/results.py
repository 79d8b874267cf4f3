"""What a sweep shows of its stages and studies: the leaderboard and study tables (rows, CSV)
and their plots, from a Ray Tune ``ResultGrid``; a failed trial's error in one line."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from orchestration import search_space as spaces


def trial_error(trial: Any) -> str:
    """The last line of a failed trial's error (e.g. the NaN loss message)."""
    path = getattr(trial, "error_file", None) or ""
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reasons = [ln for ln in lines if "NonFiniteLossError" in ln]
    return (reasons or lines or ["unknown error"])[-1][:300]


def result_error(r: Any) -> str:
    """A Tune result's error in one line ("" if none): the NaN-loss message when there is one."""
    if r.error is None:
        return ""
    text = str(r.error)
    found = [ln for ln in text.splitlines() if "NonFiniteLossError" in ln]
    return (found or [text.strip().splitlines()[-1] if text.strip() else "error"])[-1][:300]


def leaderboard(grid: Any, points: list[dict], metric: str, mode: str) -> list[dict[str, Any]]:
    rows = []
    for r in grid:
        cfg = r.config or {}
        score = (r.metrics or {}).get(metric, math.nan)
        done = bool((r.metrics or {}).get("done"))
        err = result_error(r)
        ok = r.error is None and done and isinstance(score, float) and math.isfinite(score)
        rows.append(
            {
                "trial": (r.metrics or {}).get("trial_id") or Path(str(r.path)).name,
                "overrides": json.dumps(cfg.get("overrides", {}), sort_keys=True),
                metric: score,
                "status": "ok" if ok else "failed",
                "error": err,
            }
        )
    sign = -1 if mode == "max" else 1
    rows.sort(key=lambda r: (r["status"] != "ok", sign * r[metric] if r["status"] == "ok" else 0))
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def stage_plot(rows: list[dict], stage: str, metric: str, path: Path) -> Path | None:
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(ok) + 1.2))
    labels = [r["overrides"][:60] for r in ok][::-1]
    ax.barh(range(len(ok)), [r[metric] for r in ok][::-1])
    ax.set_yticks(range(len(ok)), labels, fontsize=7)
    ax.set_xlabel(metric)
    ax.set_title(f"stage {stage}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def study_rows(grid: Any, points: list[dict], metric: str) -> list[dict[str, Any]]:
    """One row per study point, in grid order: the point, the final run's scores (``metric``
    and every ``eval_*`` the trial reported, with their ``_std`` over seeds), status."""
    order = {json.dumps(p, sort_keys=True): i for i, p in enumerate(points)}
    rows = []
    for r in grid:
        point = (r.config or {}).get("overrides", {})
        m = r.metrics or {}
        scores = {
            k: v
            for k, v in m.items()
            if (k.startswith(metric) or k.startswith("eval_")) and isinstance(v, int | float)
        }
        ok = r.error is None and bool(m.get("done")) and math.isfinite(scores.get(metric, math.nan))
        error = result_error(r)
        rows.append({**point, **dict(sorted(scores.items())), "status": "ok" if ok else "failed"})
        rows[-1]["error"] = error
        rows[-1]["_order"] = order.get(json.dumps(point, sort_keys=True), len(order))
    rows.sort(key=lambda r: r.pop("_order"))
    keys = list(dict.fromkeys(k for r in rows for k in r))  # failed rows lack the scores
    return [{k: r.get(k, math.nan) for k in keys} for r in rows]


def study_plot(rows: list[dict], study: spaces.Stage, metric: str, path: Path) -> Path | None:
    """Each score (mean +- std over seeds) against the study's grid: numbers on a numeric axis
    when the grid has one numeric key, else one tick per point."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(study.grid)
    numeric = len(keys) == 1 and all(isinstance(r[keys[0]], int | float) for r in ok)
    x = [r[keys[0]] for r in ok] if numeric else list(range(len(ok)))
    scores = [k for k in ok[0] if not k.endswith("_std") and f"{k}_std" in ok[0]]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k in scores:
        ax.errorbar(
            x,
            [r[k] for r in ok],
            yerr=[r[f"{k}_std"] for r in ok],
            marker="o",
            capsize=3,
            lw=2.5 if k == metric else 1.2,
            label=k,
        )
    if numeric:
        ax.set_xlabel(keys[0])
    else:
        ax.set_xticks(x, [", ".join(str(r[k]) for k in keys) for r in ok], fontsize=7)
        ax.set_xlabel(", ".join(keys))
    ax.set_ylabel("score (mean +- std over seeds)")
    ax.set_title(f"study {study.name}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
