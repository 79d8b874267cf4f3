"""The nightly's report (:mod:`orchestration.nightly`): the console table, ``report.md`` and a
self-contained ``report.html`` (plots inlined) with a table per entry and trend plots of the
last nights, and the webhook message. Imports no Ray or MLflow."""

from __future__ import annotations

import base64
import html
import json
import math
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestration import gate

HEAD = ("metric", "champion", "tonight", "change [95% CI]", "p", "verdict")
LEGEND = (
    "mean +- sd: over seeds, sample sd (n-1); change: tonight's mean - the champion's, with a "
    "95% bootstrap interval (for reading); p: Welch's one-sided test, the one the gate uses"
)


def rows(checked: Sequence[Any]) -> list[tuple[str, list[tuple[str, ...]]]]:
    """Per entry: its heading and one row per gated metric (mean +- sd over seeds)."""
    out = []
    for c in checked:
        head = f"{c.entry.name} ({c.champion or 'no champion'}): {c.verdict}"
        if c.note:
            head += f" - {c.note}"
        table = [
            (
                k.metric,
                f"{k.champion_mean:.4f} +- {k.champion_sd:.4f} (n={len(k.champion)})",
                f"{k.tonight_mean:.4f} +- {k.tonight_sd:.4f} (n={len(k.tonight)})",
                f"{k.change:+.4f} [{k.low:+.4f}, {k.high:+.4f}]",
                f"{k.p_value:.3g}",
                k.verdict,
            )
            for k in c.comparisons
        ]
        if r := c.rescore:  # the champion artifact scored again tonight
            ok = not gate.artifact_problem(r["value"], r["recorded"], r["tolerance"])
            table.append(
                (
                    f"{r['metric']} (artifact)",
                    f"{r['recorded']:.6f} (registered)",
                    f"{r['value']:.6f} (scored again)",
                    f"{r['value'] - r['recorded']:+.2g}",
                    "",
                    "PASS" if ok else "REGRESSION",
                )
            )
        if "wall_s" in c.cost:
            ratio = "" if c.slowdown is None else f" ({c.slowdown:.2f}x trailing median)"
            table.append(
                ("wall time", "", f"{c.cost['wall_s']:.0f} s{ratio}", "", "", _cost_verdict(c))
            )
            rate = c.cost.get("samples_s_median", math.nan)
            if math.isfinite(rate):
                table.append(("samples/s", "", f"{rate:.0f} (median epoch)", "", "", ""))
            if "peak_rss_mb" in c.cost:
                table.append(("peak RSS", "", f"{c.cost['peak_rss_mb']:.0f} MiB", "", "", ""))
        out.append((head, table))
    return out


def _cost_verdict(c: Any) -> str:
    limit = c.entry.slowdown
    if limit is None or c.slowdown is None:
        return "not gated" if limit is None else "no history"
    return "SLOWER" if c.slowdown > limit else "PASS"


def console(checked: Sequence[Any], night: str) -> str:
    """The night's table as fixed-width text."""
    lines = ["", f"== nightly {night} =="]
    for head, table in rows(checked):
        lines.append(head)
        if not table:
            continue
        widths = [max(len(r[i]) for r in [HEAD, *table]) for i in range(len(HEAD))]
        for r in [HEAD, *table]:
            row = "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True))
            lines.append(f"  {row}".rstrip())
    return "\n".join([*lines, LEGEND])


def markdown(checked: Sequence[Any], night: str, plots: Mapping[str, str]) -> str:
    out = [f"# Nightly {night}", ""]
    for (head, table), c in zip(rows(checked), checked, strict=True):
        out += [f"## {head}", ""]
        if table:
            out += ["| " + " | ".join(HEAD) + " |", "|" + " --- |" * len(HEAD)]
            out += ["| " + " | ".join(r) + " |" for r in table]
            out.append("")
        if c.entry.name in plots:
            out += [f"![{c.entry.name} trend]({plots[c.entry.name]})", ""]
    return "\n".join([*out, f"_{LEGEND}_", ""])


def html_page(checked: Sequence[Any], night: str, plots: Mapping[str, bytes]) -> str:
    """One file, plots inlined as PNG data, so it opens anywhere (an MLflow artifact view,
    a mail attachment)."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Nightly {e(night)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:4px 8px}"
        ".REGRESSION,.SLOWER,.ERROR{background:#fdd}.PASS{background:#dfd}"
        ".IMPROVEMENT{background:#ddf}</style></head><body>",
        f"<h1>Nightly {e(night)}</h1>",
    ]
    for (head, table), c in zip(rows(checked), checked, strict=True):
        parts.append(f"<h2 class='{e(c.verdict)}'>{e(head)}</h2>")
        if table:
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in HEAD) + "</tr>")
            for r in table:
                cells = "".join(f"<td>{e(v)}</td>" for v in r[:-1])
                parts.append(f"<tr>{cells}<td class='{e(r[-1])}'>{e(r[-1])}</td></tr>")
            parts.append("</table>")
        if c.entry.name in plots:
            data = base64.b64encode(plots[c.entry.name]).decode()
            parts.append(
                f"<p><img alt='{e(c.entry.name)} trend' src='data:image/png;base64,{data}'></p>"
            )
    parts.append(f"<p><small>{e(LEGEND)}</small></p></body></html>")
    return "\n".join(parts)


def trend(entry: Any, history: Sequence[Any], path: Path) -> bool:
    """Plot ``entry``'s gated metrics and wall time over its last nights (``history``: MLflow
    runs, oldest first) into ``path``; False when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nights = [r.data.tags.get("emg.night", "?") for r in history]
    if not nights:
        return False
    names = [m.name for m in entry.metrics]
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4.2 * (len(names) + 1), 3.2))
    for ax, name in zip(axes, names, strict=False):
        for key, label in ((name, "tonight"), (f"champion_{name}", "champion")):
            y = [r.data.metrics.get(key, math.nan) for r in history]
            ax.plot(range(len(y)), y, marker="o", label=label)
        ax.set_title(name)
        ax.legend(fontsize=7)
    wall = [r.data.metrics.get("wall_s", math.nan) for r in history]
    axes[-1].plot(range(len(wall)), wall, marker="o", color="gray")
    axes[-1].set_title("wall time (s)")
    for ax in axes:
        ax.set_xticks(range(len(nights)), nights, rotation=45, ha="right", fontsize=7)
    fig.suptitle(f"{entry.name}: last {len(nights)} night(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def write(
    checked: Sequence[Any],
    history: Mapping[str, Sequence[Any]],
    night: str,
    folder: Path,
    suite: Any,
) -> list[Path]:
    """``report.md``, ``report.html`` and ``trend-<entry>.png`` in ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    files, plots = [], {}
    for c in checked:
        path = folder / f"trend-{c.entry.name}.png"
        if trend(c.entry, history.get(c.entry.name, ()), path):
            files.append(path)
            plots[c.entry.name] = path.name
    md = folder / "report.md"
    md.write_text(markdown(checked, night, plots))
    page = folder / "report.html"
    page.write_text(
        html_page(checked, night, {k: (folder / v).read_bytes() for k, v in plots.items()})
    )
    return [md, page, *files]


def post(url: str, checked: Sequence[Any], night: str, timeout: float = 10.0) -> str:
    """POST the regressions as Slack-style JSON (``{"text": ...}``) to ``url``; returns ``""``
    or why it failed (a webhook that does not answer never fails the night)."""
    bad = [c for c in checked if c.verdict == "REGRESSION"]
    text = f"Nightly {night}: {len(bad)} regression(s)\n" + "\n".join(
        f"- {c.entry.name} ({c.champion}): {c.note}" for c in bad
    )
    body = json.dumps({"text": text}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
    except OSError as e:
        print(f"webhook {url} not reached: {e}", flush=True)
        return str(e)
    return ""
