"""Staged search spaces as data: one YAML file per method under ``search_spaces/``.

Schema (every method's file has the same shape)::

    method: kinembed            # a key of CONFIGS
    metric: cv_r2               # what each trial reports and the stage selects on
    mode: max                   # max | min
    subjects: [S1, S3]          # optional: the subjects every trial is evaluated on
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

from emgcore.config import override, tuplify
from emgcore.errors import InvalidValueError
from emgcore.experiment import ExperimentConfig
from emgcore.posealign import PoseAlignConfig
from emgcore.poseest import PoseEstConfig

SEARCH_SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
# method name -> the configuration dataclass its search space addresses
CONFIGS: dict[str, type] = {
    "kinembed": ExperimentConfig,
    "mae": PoseAlignConfig,  # the pose-alignment family shares one config
    "cpep": PoseAlignConfig,
    "embridge": PoseAlignConfig,
    "jepa": PoseEstConfig,
}
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


def load(path: str | Path) -> SearchSpace:
    """Read and validate one search-space file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise InvalidValueError("search space file not found", source=path, field="file") from e
    except yaml.YAMLError as e:
        raise InvalidValueError(f"not valid YAML: {e}", source=path, field="file") from e

    def bad(msg: str, key: str) -> InvalidValueError:
        return InvalidValueError(msg, source=path, field=key)

    if not isinstance(data, Mapping):
        raise bad("top level must be a mapping", "file")
    if unknown := set(data) - _TOP:
        raise bad(f"unknown key(s) {sorted(unknown)}; known: {sorted(_TOP)}", sorted(unknown)[0])
    method = data.get("method")
    if method not in CONFIGS:
        raise bad(f"unknown method {method!r}; known: {sorted(CONFIGS)}", "method")
    if data.get("mode") not in ("max", "min"):
        raise bad(f"must be 'max' or 'min', got {data.get('mode')!r}", "mode")
    if not isinstance(data.get("metric"), str):
        raise bad("must name the metric trials report", "metric")
    cls = CONFIGS[method]
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
        _check_stage(cls, stage, path, where)
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
        _check_stage(cls, studies[str(name)], path, where)
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


def _check_stage(cls: type, stage: Stage, path: Path, where: str) -> None:
    """Every value must build a valid config: each alone (naming its key), then together."""
    for key, values in {**stage.grid, **stage.choice}.items():
        for v in values:
            _check_values(cls, {**stage.fixed, key: v}, path, f"{where}.{key}")
    for point in [*stage.grid_points()[:1], {}]:
        _check_values(cls, {**stage.fixed, **point}, path, where)


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


def _check_values(cls: type, overrides: Mapping[str, Any], path: Path, where: str) -> None:
    try:
        apply(cls(), overrides)
    except (TypeError, ValueError) as e:
        raise InvalidValueError(f"invalid value: {e}", source=path, field=where) from e


def apply(cfg: Any, overrides: Mapping[str, Any]) -> Any:
    """``cfg`` with dotted-key overrides, rebuilt through the config loader (values checked)."""
    return override(cfg, overrides)
