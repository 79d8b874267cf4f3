"""Typed, frozen configs from plain data (YAML, search-space overrides), with errors that name
the file and the dotted key.

Nested dataclass fields are built recursively; YAML lists become tuples (the form frozen configs
hold); a mapping field keeps its keys and tuple-izes its values. Unknown keys and values a
config's own checks refuse raise :class:`emgcore.errors.InvalidValueError`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from emgcore.errors import InvalidValueError

T = TypeVar("T")


def tuplify(v: Any) -> Any:
    """YAML lists (nested too) as tuples."""
    if isinstance(v, list | tuple):
        return tuple(tuplify(i) for i in v)
    return v


def build(
    cls: type[T], data: Mapping[str, Any], *, source: str | Path | None = None, key: str = ""
) -> T:
    """An instance of dataclass ``cls`` from ``data``; ``key`` is the dotted path so far."""
    if not isinstance(data, Mapping):
        raise InvalidValueError("must be a mapping", source=source, field=key or "config")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        where = f"{key}.{name}" if key else str(name)
        if name not in fields:
            raise InvalidValueError(
                f"unknown key; known: {sorted(fields)}", source=source, field=where
            )
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = build(typ, value, source=source, key=where)
        elif isinstance(value, Mapping):
            kwargs[name] = {k: tuplify(v) for k, v in value.items()}
        else:
            kwargs[name] = _number(typ, tuplify(value), source, where)
    try:
        return cls(**kwargs)
    except InvalidValueError as e:
        raise InvalidValueError(e.message, source=source, field=e.field) from e
    except (TypeError, ValueError) as e:
        raise InvalidValueError(str(e), source=source, field=key or "config") from e


def _number(typ: Any, value: Any, source: str | Path | None, where: str) -> Any:
    """A float field's value as a float: PyYAML reads ``1e-4`` (no dot) as a string."""
    if typ is not float or isinstance(value, bool) or not isinstance(value, str | int):
        return value
    try:
        return float(value)
    except ValueError:
        msg = f"expected a number, got {value!r}"
        raise InvalidValueError(msg, source=source, field=where) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain nested data (the inverse of :func:`build`)."""
    return dataclasses.asdict(cfg)


def override(cfg: T, overrides: Mapping[str, Any], source: str | Path | None = None) -> T:
    """``cfg`` with dotted-key ``overrides`` (``"embridge.cascle.top_k": 5``), rebuilt, checked."""
    data = to_dict(cfg)
    for dotted, value in overrides.items():
        node = data
        *path, last = dotted.split(".")
        for part in path:
            if not isinstance(node.get(part), dict):
                raise InvalidValueError(f"{part!r} is not a section", source=source, field=dotted)
            node = node[part]
        if last not in node:
            raise InvalidValueError(
                f"unknown key; known: {sorted(node)}", source=source, field=dotted
            )
        node[last] = value
    return build(type(cfg), data, source=source)


def load_yaml(cls: type[T], path: str | Path | None) -> T:
    """``cls`` from the YAML file at ``path`` (``None``: the defaults, the papers' values)."""
    if path is None:
        return cls()
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as e:
        raise InvalidValueError("config file not found", source=path, field="config") from e
    except yaml.YAMLError as e:
        raise InvalidValueError(f"not valid YAML: {e}", source=path, field="config") from e
    if not isinstance(data, Mapping):
        raise InvalidValueError("top level must be a mapping", source=path, field="config")
    return build(cls, data, source=path)
