"""The pose-alignment evaluation's tables and figures (EMBridge Sec. 3.3, Fig. 3, A.3-A.4).

From trained :class:`emgcore.methods.posealign.Encoders` and the splits: Table 2's rows
(zero-shot both with the papers' bank and with the query's own recording left out of it);
per-class F1 and confusion matrices of zero-shot on unseen gestures; per-user F1 of the same
(every eval user is held out); few-shot linear probes (n shots per class, 5 draws, mean +- std);
t-SNE of EMG against pose embeddings. :func:`write` puts them in a folder as CSV, text and PNG,
the files the sweeps log to MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emgcore.eval.probe import ClassScores, class_scores, few_shot, per_group_f1, zero_shot
from emgcore.gestures import PairedWindows
from emgcore.methods.posealign import Encoders, PoseAlignConfig, as_table, score
from emgcore.streaming import take
from emgcore.training import batched


@dataclass
class PoseReport:
    rows: list[dict[str, Any]]
    zs_unseen: dict[str, ClassScores] = field(default_factory=dict)  # method -> scores
    per_user_f1: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> user -> F1
    few_shot: dict[str, dict[str, dict[int, tuple[float, float]]]] = field(default_factory=dict)
    tsne: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    class_names: dict[str, list[str]] = field(default_factory=dict)  # task -> names


def evaluate(
    enc: Encoders,
    splits: Mapping[str, PairedWindows],
    cfg: PoseAlignConfig,
    *,
    shots: Sequence[int] = (5, 10, 20, 40, 80),
    draws: int = 5,
    tsne_points: int = 400,
) -> PoseReport:
    """Everything above for every trained EMG encoder (zero-shot parts: aligned ones only)."""
    g = cfg.gestures
    rep = PoseReport(score(enc, splits, cfg))
    rep.class_names = {"in_dist": list(g.in_dist), "unseen": list(g.unseen)}
    ev = splits["eval"]
    y_un = ev.labels(g.unseen)
    sel = y_un >= 0
    for name in enc.retrieve:
        bank = batched(enc.pose[name], take(ev.pose, sel))
        q = batched(enc.retrieve[name], take(ev.emg, sel))
        pred = zero_shot(q, bank, y_un[sel], k=cfg.zero_shot_k, n_classes=len(g.unseen))
        rep.zs_unseen[name] = class_scores(y_un[sel], pred, len(g.unseen))
        rep.per_user_f1[name] = per_group_f1(y_un[sel], pred, ev.user[sel], len(g.unseen))
    for name, emb in enc.emg.items():
        rep.few_shot[name] = {}
        for task, probe, classes in (
            ("in_dist", splits["probe_train_in"], g.in_dist),
            ("unseen", splits["probe_train_unseen"], g.unseen),
        ):
            y_tr, y_ev = probe.labels(classes), ev.labels(classes)
            keep = y_ev >= 0
            z_tr, z_ev = batched(emb, probe.emg).numpy(), batched(emb, take(ev.emg, keep)).numpy()
            rep.few_shot[name][task] = few_shot(
                z_tr,
                y_tr,
                z_ev,
                y_ev[y_ev >= 0],
                shots,
                len(classes),
                draws=draws,
                seed=cfg.seeds[0],
            )
    rng = np.random.default_rng(cfg.seeds[0])
    idx = np.flatnonzero(sel)
    idx = np.sort(rng.choice(idx, min(tsne_points, len(idx)), replace=False))
    for name in enc.retrieve:
        z_emg = batched(enc.emg[name], take(ev.emg, idx)).numpy()
        z_pose = batched(enc.pose[name], take(ev.pose, idx)).numpy()
        rep.tsne[name] = (z_emg, z_pose, y_un[idx])
    return rep


def write(rep: PoseReport, out: str | Path) -> dict[str, Path]:
    """Tables (CSV, text) and figures (PNG) into ``out``; returns ``{name: path}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"rows": out / "scores.csv", "table": out / "table2.txt"}
    pd.DataFrame(rep.rows).to_csv(paths["rows"], index=False)
    paths["table"].write_text(as_table(rep.rows) + "\n")
    names = rep.class_names.get("unseen", [])
    if rep.zs_unseen:
        f1 = pd.DataFrame({m: s.f1 for m, s in rep.zs_unseen.items()}, index=names)
        f1.to_csv(out / "zs_unseen_f1.csv")
        paths["zs_unseen_f1"] = out / "zs_unseen_f1.csv"
        paths["confusion"] = _confusions(rep, names, out / "zs_unseen_confusion.png")
        paths["per_user"] = _per_user(rep, out / "zs_unseen_per_user_f1.png")
    if rep.few_shot:
        rows = [
            {"method": m, "task": t, "shots": n, "mean": mu, "std": sd}
            for m, tasks in rep.few_shot.items()
            for t, curve in tasks.items()
            for n, (mu, sd) in curve.items()
        ]
        pd.DataFrame(rows).to_csv(out / "few_shot.csv", index=False)
        paths["few_shot"] = _few_shot(rows, out / "few_shot.png")
    for name, (z_emg, z_pose, y) in rep.tsne.items():
        paths[f"tsne_{name}"] = _tsne(name, z_emg, z_pose, y, names, out / f"tsne_{name}.png")
    return paths


def _confusions(rep: PoseReport, names: list[str], path: Path) -> Path:
    import matplotlib.pyplot as plt

    methods = list(rep.zs_unseen)
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 4), squeeze=False)
    for ax, m in zip(axes[0], methods, strict=True):
        s = rep.zs_unseen[m]
        cm = s.confusion / np.maximum(s.confusion.sum(1, keepdims=True), 1)
        ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
        for i in range(len(cm)):
            for j in range(len(cm)):
                ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=7)
        labels = [f"{n} (F1 {f:.2f})" for n, f in zip(names, s.f1, strict=True)]
        ax.set_yticks(range(len(names)), labels, fontsize=7)
        ax.set_xticks(range(len(names)), range(len(names)))
        ax.set_title(f"{m}: zero-shot, unseen (bal. acc {s.balanced_accuracy:.2f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _per_user(rep: PoseReport, path: Path) -> Path:
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(rep.per_user_f1)  # users x methods
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(frame) + 2), 3.5))
    frame.plot.bar(ax=ax)
    ax.set_ylabel("macro F1, zero-shot unseen")
    ax.set_xlabel("held-out user")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _few_shot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(rows)
    tasks = list(dict.fromkeys(frame["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for m, part in frame[frame["task"] == task].groupby("method", sort=False):
            ax.plot(part["shots"], part["mean"], marker="o", label=m)
            ax.fill_between(
                part["shots"], part["mean"] - part["std"], part["mean"] + part["std"], alpha=0.2
            )
        ax.set_xlabel("shots per class")
        ax.set_ylabel("balanced accuracy (LP)")
        ax.set_title(task)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _tsne(
    name: str, z_emg: np.ndarray, z_pose: np.ndarray, y: np.ndarray, names: list[str], path: Path
) -> Path:
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    z = np.concatenate([z_emg, z_pose])
    perplexity = float(min(30, max(2, (len(z) - 1) // 3)))
    xy = TSNE(perplexity=perplexity, init="pca", random_state=0).fit_transform(z)
    n = len(z_emg)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharex=True, sharey=True)
    for ax, part, title in ((axes[0], slice(0, n), "EMG"), (axes[1], slice(n, None), "pose")):
        sc = ax.scatter(xy[part, 0], xy[part, 1], c=y, cmap="tab10", s=8, vmin=0, vmax=9)
        ax.set_title(f"{name}: {title} embeddings (unseen gestures)", fontsize=9)
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=sc.cmap(sc.norm(i)), label=lab)
        for i, lab in enumerate(names)
    ]
    axes[1].legend(handles=handles, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
