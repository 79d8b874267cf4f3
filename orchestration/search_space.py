"""Staged search spaces as data: one YAML file per method under ``search_spaces/``.

Schema (every method's file has the same shape)::

    method: kinembed            # a key of emgcore.methods.METHODS
    metric: cv_r2               # what each trial reports and the stage selects on
    mode: max                   # max | min
    subjects: [S1, S3]          # optional: the subjects every trial is evaluated on
                                # (``sweep.py --subjects`` replaces the list)
    stages:
      - name: loss
        grid:   {dotted.key: [values...]}   # full cartesian product
        choice: {dotted.key: [values...]}   # sampled, ``budget`` times
        fixed:  {dotted.key: value}         # held constant in this stage
        inherit: [earlier, stages]          # their winners are fixed here
        budget: 20                          # trials drawn when the stage has ``choice`` keys
    studies:                    # optional: ``sweep.py <method> --study <name>``
      data_efficiency:
        grid:  {gestures.pretrain_fraction: [0.2, 0.6, 1.0]}
        fixed: {dotted.key: value}

A study runs every point of its grid like a sweep's final run (retrained per seed, scored on the
held-out data) and plots the scores against the grid, without picking or registering a winner:
the papers' data-efficiency and batch-size figures.

Dotted keys address fields of the method's configuration dataclass (``kinembed.lr`` is
``ExperimentConfig.kinembed.lr``); a key that names no field, a stage that inherits from a later
or unknown stage, or a value of the wrong kind fails on load, naming the file and the key.
Every point of a stage must be a distinct experiment. :func:`distinct` compares the points'
effective configurations (:func:`emgcore.config.effective`: the fields the method will not read,
like VICReg's temperature, left out) on the base config with the stage's fixed values and
inherited winners; the sweep runs the first of each kind and lists the others as duplicates.
This module imports no Ray: the sweep reads it, and so can a researcher's notebook.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emgcore.config import as_read, effective, override, tuplify, unused, yaml_problem
from emgcore.errors import InvalidValueError
from emgcore.methods import METHODS

SEARCH_SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
_TOP = {"method", "metric", "mode", "subjects", "stages", "studies"}
_STAGE = {"name", "grid", "choice", "fixed", "inherit", "budget"}
_STUDY = {"grid", "fixed"}


@dataclass(frozen=True)
class Stage:
    name: str
    grid: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    choice: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    inherit: tuple[str, ...] = ()
    budget: int | None = None  # trials drawn from ``choice``; the grid is always complete

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid keys (one empty point for a grid-less stage)."""
        keys = list(self.grid)
        return [
            dict(zip(keys, vals, strict=True)) for vals in itertools.product(*self.grid.values())
        ]


@dataclass(frozen=True)
class SearchSpace:
    method: str
    metric: str
    mode: str
    stages: tuple[Stage, ...]
    subjects: tuple[str, ...] = ()
    source: str = ""
    studies: Mapping[str, Stage] = field(default_factory=dict)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def study(self, name: str) -> Stage:
        if name not in self.studies:
            raise InvalidValueError(
                f"no study {name!r}; this space has {sorted(self.studies) or 'none'}",
                source=self.source,
                field="--study",
            )
        return self.studies[name]

    def digest(self) -> str:
        """Content hash of the resolved space's stages (a tag on every run they produced);
        studies are left out, so adding one does not orphan a sweep in progress."""
        fields = dataclasses.asdict(self) | {"source": ""}
        del fields["studies"]
        blob = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def path_for(method: str) -> Path:
    return SEARCH_SPACES_DIR / f"{method}.yaml"


def load(path: str | Path, base: Any | None = None) -> SearchSpace:
    """Read and validate one search-space file. Its values are checked on ``base`` (the
    configuration a sweep runs: its preset, e.g. a 4-head model for ``model.dim``), else on
    the method's configuration class's defaults."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise InvalidValueError("search space file not found", source=path, field="file") from e
    except OSError as e:  # a folder, unreadable
        raise InvalidValueError(f"cannot read: {e.strerror}", source=path, field="file") from e
    except yaml.YAMLError as e:
        msg = f"not valid YAML: {yaml_problem(e)}"
        raise InvalidValueError(msg, source=path, field="file") from e

    def bad(msg: str, key: str) -> InvalidValueError:
        return InvalidValueError(msg, source=path, field=key)

    if not isinstance(data, Mapping):
        raise bad("top level must be a mapping", "file")
    if unknown := set(data) - _TOP:
        raise bad(f"unknown key(s) {sorted(unknown)}; known: {sorted(_TOP)}", sorted(unknown)[0])
    method = data.get("method")
    if method not in METHODS:
        raise bad(f"unknown method {method!r}; known: {sorted(METHODS)}", "method")
    if data.get("mode") not in ("max", "min"):
        raise bad(f"must be 'max' or 'min', got {data.get('mode')!r}", "mode")
    if not isinstance(data.get("metric"), str):
        raise bad("must name the metric trials report", "metric")
    cls = METHODS[method].config
    on = base if isinstance(base, cls) else cls()  # what the values are checked on
    stages: list[Stage] = []
    for i, raw in enumerate(data.get("stages") or []):
        where = f"stages[{i}]"
        if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
            raise bad("each stage is a mapping with a 'name'", where)
        where = f"stages.{raw['name']}"
        if unknown := set(raw) - _STAGE:
            raise bad(f"unknown key(s) {sorted(unknown)}; known: {sorted(_STAGE)}", where)
        if raw["name"] in {s.name for s in stages}:
            raise bad("duplicate stage name", where)
        inherit = tuple(raw.get("inherit") or ())
        earlier = {s.name for s in stages}
        if missing := [n for n in inherit if n not in earlier]:
            raise bad(f"inherits {missing}, which is not an earlier stage", f"{where}.inherit")
        parts = _parts(raw, ("grid", "choice", "fixed"), cls, path, where)
        keys = [k for p in parts.values() for k in p]
        if dup := {k for k in keys if keys.count(k) > 1}:
            raise bad(f"key(s) {sorted(dup)} appear in more than one of grid/choice/fixed", where)
        budget = raw.get("budget")
        if parts["choice"] and not (isinstance(budget, int) and budget > 0):
            raise bad(
                "a stage with 'choice' keys needs a positive integer budget", f"{where}.budget"
            )
        stage = Stage(raw["name"], parts["grid"], parts["choice"], parts["fixed"], inherit, budget)
        _check_stage(on, stage, path, where)
        stages.append(stage)
    if not stages:
        raise bad("needs at least one stage", "stages")
    studies: dict[str, Stage] = {}
    raw_studies = data.get("studies") or {}
    if not isinstance(raw_studies, Mapping):
        raise bad("must map study names to {grid, fixed}", "studies")
    for name, raw in raw_studies.items():
        where = f"studies.{name}"
        if not isinstance(raw, Mapping) or not raw.get("grid"):
            raise bad("a study is a mapping with a non-empty 'grid'", where)
        if unknown := set(raw) - _STUDY:
            raise bad(f"unknown key(s) {sorted(unknown)}; known: {sorted(_STUDY)}", where)
        parts = _parts(raw, ("grid", "fixed"), cls, path, where)
        studies[str(name)] = Stage(str(name), parts["grid"], fixed=parts["fixed"])
        _check_stage(on, studies[str(name)], path, where)
    subjects = tuple(str(s) for s in data.get("subjects") or ())
    return SearchSpace(
        method, data["metric"], data["mode"], tuple(stages), subjects, str(path), studies
    )


def _parts(
    raw: Mapping[str, Any], names: tuple[str, ...], cls: type, path: Path, where: str
) -> dict[str, dict[str, Any]]:
    """A stage's or study's ``grid`` / ``choice`` / ``fixed`` mappings, keys checked."""
    parts: dict[str, dict[str, Any]] = {}
    for part in names:
        values = raw.get(part) or {}
        if not isinstance(values, Mapping):
            raise InvalidValueError(
                "must be a mapping of dotted keys", source=path, field=f"{where}.{part}"
            )
        parts[part] = {}
        for key, v in values.items():
            _check_key(cls, key, path, f"{where}.{part}.{key}")
            if part != "fixed" and (not isinstance(v, list) or not v):
                raise InvalidValueError(
                    "must be a non-empty list of values", source=path, field=f"{where}.{part}.{key}"
                )
            parts[part][key] = tuplify(v)
    return parts


def _check_stage(cfg: Any, stage: Stage, path: Path, where: str) -> None:
    """Every value must build a valid config from ``cfg``: each alone (naming its key), then
    together."""
    for key, values in {**stage.grid, **stage.choice}.items():
        for v in values:
            _check_values(cfg, {**stage.fixed, key: v}, path, f"{where}.{key}")
    for point in [*stage.grid_points()[:1], {}]:
        _check_values(cfg, {**stage.fixed, **point}, path, where)


def _check_key(cls: type, key: str, path: Path, where: str) -> None:
    """``key`` must walk dataclass fields down to a leaf: ``kinembed.lr`` -> KinEmbedConfig.lr."""
    node: Any = cls
    for part in key.split("."):
        fields = (
            {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        )
        if part not in fields:
            known = sorted(fields) if fields else []
            raise InvalidValueError(
                f"{key!r} is not a field of {cls.__name__} (at {part!r}; known: {known})",
                source=path,
                field=where,
            )
        default = (
            fields[part].default_factory()
            if callable(fields[part].default_factory)
            else fields[part].default
        )
        node = type(default) if dataclasses.is_dataclass(default) else None
    if dataclasses.is_dataclass(node):
        raise InvalidValueError(
            f"{key!r} is a section; name one of its fields", source=path, field=where
        )


def _check_values(cfg: Any, overrides: Mapping[str, Any], path: Path, where: str) -> None:
    try:
        apply(cfg, overrides)
    except (TypeError, ValueError) as e:
        raise InvalidValueError(f"invalid value: {e}", source=path, field=where) from e


def apply(cfg: Any, overrides: Mapping[str, Any]) -> Any:
    """``cfg`` with dotted-key overrides, rebuilt through the config loader (values checked)."""
    return override(cfg, overrides)


@dataclass(frozen=True)
class Distinct:
    """A stage's points split into the experiments to run and the points that repeat them."""

    points: list[dict[str, Any]]  # the first point of each effective configuration, in order
    repeats: list[tuple[dict[str, Any], dict[str, Any]]]  # (skipped point, the point it repeats)
    reasons: tuple[str, ...] = ()  # e.g. "kinembed.loss=vicreg ignores kinembed.temperature"

    def message(self, stage: str, kind: str = "stage") -> str:
        """One line for the sweep's log; empty when nothing repeats."""
        if not self.repeats:
            return ""
        n, total = len(self.repeats), len(self.points) + len(self.repeats)
        return (
            f"{kind} {stage}: {n} of {total} points repeat others "
            f"({'; '.join(self.reasons)}), skipped"
        )


def distinct(
    base: Any, points: list[Mapping[str, Any]], fixed: Mapping[str, Any] | None = None
) -> Distinct:
    """Drop the points whose configuration (``base`` with ``fixed`` and the point's dotted-key
    overrides) trains the same experiment as an earlier point's: equal :func:`effective` data.

    A point that does not build a valid config is kept (its trial fails with the reason).
    """
    fixed = dict(fixed or {})
    first: dict[str, dict[str, Any]] = {}  # effective configuration -> the point that has it
    kept: list[dict[str, Any]] = []
    repeats: list[tuple[dict[str, Any], dict[str, Any]]] = []
    reasons: dict[str, None] = {}
    for point in map(dict, points):
        try:
            cfg = apply(base, {**fixed, **point})
        except InvalidValueError:
            kept.append(point)
            continue
        key = json.dumps(effective(cfg), sort_keys=True, default=repr)
        if key not in first:
            first[key] = point
            kept.append(point)
            continue
        other = first[key]
        repeats.append((point, other))
        ignored = unused(as_read(cfg))
        differ = [k for k in point if tuplify(point[k]) != tuplify(other.get(k))]
        for k in differ:
            for u, why in ignored.items():
                if k == u or k.startswith(f"{u}."):
                    reasons[f"{why} ignores {u}"] = None
        if not differ:
            reasons["the same values twice"] = None
    return Distinct(kept, repeats, tuple(reasons))
