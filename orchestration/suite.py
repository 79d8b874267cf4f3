"""The nightly regression suite as data: ``suites/nightly.yaml``, read and checked on load.

Schema::

    alpha: 0.05                 # the gate's test level (orchestration/gate.py), in (0, 1)
    seeds: 3                    # tonight's retrains per entry, >= 2 (the gate needs a spread)
    history: 30                 # nights in the trend plots and the cost baseline
    artifact_tolerance: 1.0e-4  # the champion artifact scored again tonight may differ from
                                # its registered score by this much (the metric's units)
    smoke: {seeds: 2}           # --smoke: replaces the top-level values it names
    entries:
      kinembed:                 # a key of emgcore.methods.METHODS (or any name + ``method:``)
        method: kinembed        # optional, default: the entry's name
        registry: kinembed      # optional: the registered model it gates, default: the method
        metrics: {heldout_r2: 0.02}   # metric -> tolerance (>= 0, in the metric's units);
                                # each one of the method's ``per_seed()`` metrics
        seeds: 3                # optional: this entry's retrains
        slowdown: 1.5           # optional: wall time above this x the trailing nights'
                                # median is a cost regression (> 1; default: not gated)
        flaky: false            # optional: computed and reported, never gated

A key that is not in the schema, an unknown method or metric, or a value of the wrong kind
fails on load as one :class:`~emgcore.errors.InvalidValueError` naming the file and the key
(``entries.jepa.metrics.test_ja_mea``). Imports no Ray or MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emgcore.config import yaml_problem
from emgcore.errors import InvalidValueError
from emgcore.methods import METHODS

SUITE = Path(__file__).resolve().parent.parent / "suites" / "nightly.yaml"
_TOP = {"alpha", "seeds", "history", "artifact_tolerance", "smoke", "entries"}
_SMOKE = {"seeds", "history"}
_ENTRY = {"method", "registry", "metrics", "seeds", "slowdown", "flaky"}


@dataclass(frozen=True)
class Metric:
    """One gated metric: its ``name``, direction (``mode``: ``"max"`` | ``"min"``, the method's
    declaration) and ``tolerance`` in its units."""

    name: str
    mode: str
    tolerance: float


@dataclass(frozen=True)
class Entry:
    """One method's nightly check (see the module doc)."""

    name: str
    method: str
    registry: str
    metrics: tuple[Metric, ...]
    seeds: int
    slowdown: float | None = None
    flaky: bool = False


@dataclass(frozen=True)
class Suite:
    alpha: float
    history: int
    entries: tuple[Entry, ...]
    source: str = ""
    smoke: bool = False
    artifact_tolerance: float = 1e-4

    def select(self, names: Sequence[str] = ()) -> list[Entry]:
        """The entries called ``names`` in that order, or every entry when ``names`` is empty;
        InvalidValueError for a name the suite lacks."""
        return [self.entry(n) for n in names] if names else list(self.entries)

    def entry(self, name: str) -> Entry:
        """The entry called ``name``; InvalidValueError naming the known ones otherwise."""
        for e in self.entries:
            if e.name == name:
                return e
        known = [e.name for e in self.entries]
        raise InvalidValueError(f"no entry {name!r}; known: {known}", source=self.source)


def load(path: str | Path = SUITE, *, smoke: bool = False) -> Suite:
    """Read and check the suite at ``path``; ``smoke``: with its ``smoke`` values applied
    (entries' own ``seeds`` give way to the smoke count, never above it)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise InvalidValueError("suite file not found", source=path, field="file") from e
    except OSError as e:
        raise InvalidValueError(f"cannot read: {e.strerror}", source=path, field="file") from e
    except yaml.YAMLError as e:
        msg = f"not valid YAML: {yaml_problem(e)}"
        raise InvalidValueError(msg, source=path, field="file") from e

    def bad(msg: str, key: str) -> InvalidValueError:
        return InvalidValueError(msg, source=path, field=key)

    def known(raw: Any, keys: set[str], where: str) -> Mapping[str, Any]:
        if not isinstance(raw, Mapping):
            raise bad("must be a mapping", where)
        if unknown := set(raw) - keys:
            first = sorted(map(str, unknown))[0]
            raise bad(f"unknown key; known: {sorted(keys)}", f"{where}.{first}".lstrip("."))
        return raw

    def count(raw: Any, where: str, least: int) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < least:
            raise bad(f"must be an integer >= {least}, got {raw!r}", where)
        return raw

    def number(raw: Any, where: str) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise bad(f"must be a number, got {raw!r}", where)
        return float(raw)

    top = known(data if data is not None else {}, _TOP, "")
    smoke_values = known(top.get("smoke") or {}, _SMOKE, "smoke")
    seeds = count(top.get("seeds", 3), "seeds", 2)
    history = count(top.get("history", 30), "history", 1)
    if smoke:
        seeds = count(smoke_values.get("seeds", seeds), "smoke.seeds", 2)
        history = count(smoke_values.get("history", history), "smoke.history", 1)
    alpha = number(top.get("alpha", 0.05), "alpha")
    if not 0 < alpha < 1:
        raise bad(f"must lie in (0, 1), got {alpha}", "alpha")
    artifact_tolerance = number(top.get("artifact_tolerance", 1e-4), "artifact_tolerance")
    if artifact_tolerance < 0:
        raise bad(f"must be >= 0, got {artifact_tolerance}", "artifact_tolerance")
    raw_entries = top.get("entries")
    if not isinstance(raw_entries, Mapping) or not raw_entries:
        raise bad("must map entry names to their checks", "entries")
    entries = []
    for name, raw in raw_entries.items():
        where = f"entries.{name}"
        raw = known(raw, _ENTRY, where)
        method = raw.get("method", name)
        if method not in METHODS:
            raise bad(f"unknown method {method!r}; known: {sorted(METHODS)}", f"{where}.method")
        per_seed = METHODS[method].per_seed()
        metrics_raw = raw.get("metrics")
        if not isinstance(metrics_raw, Mapping) or not metrics_raw:
            raise bad("must map at least one metric to its tolerance", f"{where}.metrics")
        metrics = []
        for metric, tol in metrics_raw.items():
            key = f"{where}.metrics.{metric}"
            if metric not in per_seed:
                raise bad(
                    f"{method} records no per-seed {metric!r}; it records {sorted(per_seed)}", key
                )
            tolerance = number(tol, key)
            if tolerance < 0:
                raise bad(f"a tolerance is >= 0 (in the metric's units), got {tol}", key)
            metrics.append(Metric(str(metric), per_seed[metric], tolerance))
        n = count(raw.get("seeds", seeds), f"{where}.seeds", 2)
        slowdown = raw.get("slowdown")
        if slowdown is not None and not number(slowdown, f"{where}.slowdown") > 1:
            raise bad(f"a slowdown factor is > 1, got {slowdown}", f"{where}.slowdown")
        flaky = raw.get("flaky", False)
        if not isinstance(flaky, bool):
            raise bad(f"must be true or false, got {flaky!r}", f"{where}.flaky")
        registry = raw.get("registry", method)
        if not isinstance(registry, str) or not registry:
            raise bad("must name a registered model", f"{where}.registry")
        entries.append(
            Entry(
                str(name),
                method,
                registry,
                tuple(metrics),
                min(n, seeds) if smoke else n,
                None if slowdown is None else float(slowdown),
                flaky,
            )
        )
    return Suite(alpha, history, tuple(entries), str(path), smoke, artifact_tolerance)
