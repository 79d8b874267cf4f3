"""Typed, frozen configs from plain data (YAML, search-space overrides), with errors that name
the file and the dotted key.

Nested dataclass fields are built recursively; YAML lists become tuples (the form frozen configs
hold); a mapping field keeps its keys and tuple-izes its values. Unknown keys and values a
config's own checks refuse raise :class:`emgcore.errors.InvalidValueError`.

:func:`effective` is a config as the method sees it: the fields it will not read given the others
(VICReg never reads KinEMbed's temperature) replaced by a placeholder, so a search can tell two
points that cannot differ (issue 14). A dataclass declares its own with an ``inert_fields``
method, or a rule registered here with :func:`rule` (for configs defined in other modules).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

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
        else:
            kwargs[name] = _typed(typ, tuplify(value), source, where)
    try:
        return cls(**kwargs)
    except InvalidValueError as e:
        raise InvalidValueError(e.message, source=source, field=e.field) from e
    except (TypeError, ValueError) as e:
        raise InvalidValueError(str(e), source=source, field=key or "config") from e


def _typed(typ: Any, value: Any, source: str | Path | None, where: str) -> Any:
    """``value`` checked against the field's type ``typ`` (``int``, ``float``, ``bool``,
    ``str``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``X | None``, mappings), one line naming the
    key when it is not one: a wrong type must fail on load, not inside a trial. A float field
    takes an integer or a string PyYAML left unparsed (``1e-4``, no dot)."""

    def bad(what: str) -> InvalidValueError:
        return InvalidValueError(f"expected {what}, got {value!r}", source=source, field=where)

    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in (a for a in args if a is not type(None)):
            try:
                return _typed(a, value, source, where)
            except InvalidValueError:
                continue
        raise bad(" or ".join(getattr(a, "__name__", str(a)) for a in args))
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise bad("a number")
        try:
            return float(value)
        except ValueError:
            raise bad("a number") from None
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if typ in (bool, str) and not isinstance(value, typ):
        raise bad("true or false" if typ is bool else "a string")
    if origin is tuple:
        if not isinstance(value, tuple):
            raise bad("a list")
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif args and len(value) != len(args):
            raise bad(f"a list of {len(args)}")
        return tuple(
            _typed(a, v, source, f"{where}[{i}]")
            for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin in (Mapping, dict) or typ in (dict,):
        if not isinstance(value, Mapping):
            raise bad("a mapping")
        return {k: tuplify(v) for k, v in value.items()}
    return value


def yaml_problem(e: Exception) -> str:
    """A PyYAML error in one line: what and where (its own message spans several)."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain nested data (the inverse of :func:`build`)."""
    return dataclasses.asdict(cfg)


PARAM_MAX = 6000  # MLflow's limit on a param value's length


def flatten(obj: Any, prefix: str | None = None) -> dict[str, str]:
    """A (nested) config as MLflow params with dotted keys: ``{"kinembed.lr": "0.003"}``.

    Mapping keys may be data names (a label ``""``, ``"."``): the key is joined, never
    stripped of dots, so each stays distinct (:func:`mlflow_key` makes it valid when logged).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out |= flatten(v, f"{prefix}.{k}" if prefix is not None else str(k))
        return out
    return {prefix or "": str(list(obj) if isinstance(obj, tuple) else obj)[:PARAM_MAX]}


def override(cfg: T, overrides: Mapping[str, Any], source: str | Path | None = None) -> T:
    """``cfg`` with dotted-key ``overrides`` (``"embridge.cascle.top_k": 5``), rebuilt, checked."""
    data = to_dict(cfg)
    for dotted, value in overrides.items():
        node = data
        *path, last = dotted.split(".")
        for part in path:
            if part not in node:
                msg = f"unknown section {part!r}; known: {sorted(node)}"
                raise InvalidValueError(msg, source=source, field=dotted)
            if not isinstance(node[part], dict):
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
    except OSError as e:  # a folder, unreadable
        raise InvalidValueError(f"cannot read: {e.strerror}", source=path, field="config") from e
    except yaml.YAMLError as e:
        raise InvalidValueError(
            f"not valid YAML: {yaml_problem(e)}", source=path, field="config"
        ) from e
    if not isinstance(data, Mapping):
        raise InvalidValueError("top level must be a mapping", source=path, field="config")
    return build(cls, data, source=path)


# -- fields a method does not read ---------------------------------------------------------------

# What :func:`effective` puts in place of a field the method will not read.
UNUSED = "<unused>"

# Fields one config leaves unread, given its other fields: ``rule(cfg) -> {field: deciders}``,
# ``field`` a name (or a dotted path into a nested section) and ``deciders`` the fields whose
# values make it unused. Keyed by the class's qualified name: these dataclasses live in modules
# that import this one. A dataclass can instead (or also) define ``inert_fields(self)`` returning
# the same mapping, as emgcore.models.kinembed.KinEmbedConfig does.
Rule = Callable[[Any], Mapping[str, tuple[str, ...]]]
RULES: dict[str, Rule] = {}


def rule(qualname: str) -> Callable[[Rule], Rule]:
    """Register ``fn`` as the inert-field rule of the dataclass named ``module.Class``."""

    def register(fn: Rule) -> Rule:
        RULES[qualname] = fn
        return fn

    return register


def _qualname(cfg: Any) -> str:
    return f"{type(cfg).__module__}.{type(cfg).__qualname__}"


def inert_fields(cfg: Any) -> dict[str, tuple[str, ...]]:
    """This section's fields the method will not read, given its other fields: ``{field:
    the fields deciding it}`` (nested sections are not searched; see :func:`unused`)."""
    out: dict[str, tuple[str, ...]] = {}
    if (fn := RULES.get(_qualname(cfg))) is not None:
        out |= fn(cfg)
    if callable(own := getattr(cfg, "inert_fields", None)):
        out |= own()
    return out


def unused(cfg: Any, prefix: str = "") -> dict[str, str]:
    """Every field of ``cfg`` (nested sections too) that the method will not read, as
    ``{dotted.field: why}``, e.g. ``{"kinembed.temperature": "kinembed.loss=vicreg"}``.

    A section that is unused as a whole is listed once, not field by field.
    """
    out: dict[str, str] = {}
    for name, deciders in inert_fields(cfg).items():
        why = ", ".join(f"{prefix}{d}={_get(cfg, d)}" for d in deciders)
        out[prefix + name] = why
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and prefix + f.name not in out:
            for key, why in unused(value, f"{prefix}{f.name}.").items():
                out.setdefault(key, why)
    covered = sorted(out)  # "a.b" covers "a.b.c": keep the outermost
    return {k: out[k] for k in covered if not any(k.startswith(f"{c}.") for c in covered if c != k)}


def as_read(cfg: Any) -> Any:
    """``cfg`` as the method reads it: ``cfg.resolved()`` where the config has one (e.g.
    ``PoseAlignConfig`` writes its ablation row into the sections), else ``cfg``."""
    resolved = getattr(cfg, "resolved", None)
    return resolved() if callable(resolved) else cfg


def effective(cfg: Any) -> dict[str, Any]:
    """``cfg`` as the method reads it (:func:`as_read`), as plain nested data (:func:`to_dict`),
    with every field the method will not read replaced by :data:`UNUSED`: two configs that
    train the same experiment compare equal."""
    cfg = as_read(cfg)
    data = to_dict(cfg)
    for dotted in unused(cfg):
        node = data
        *path, last = dotted.split(".")
        for part in path:
            node = node[part]
        node[last] = UNUSED
    return data


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


# Pose alignment (emgcore.models.cpep, emgcore.models.embridge; read in their forward and train
# functions).
# Not here: ``PoseAlignConfig.methods`` deciding which sections train, since the sweeps' trials
# replace ``methods`` by the one method they score (emgcore/methods/posealign.py).


@rule("emgcore.models.cpep.CPEPConfig")
def _cpep(cfg: Any) -> dict[str, tuple[str, ...]]:
    # CASCLe's targets and centres are computed only when cascle_alpha > 0
    return {"cascle": ("cascle_alpha",)} if cfg.cascle_alpha <= 0 else {}


@rule("emgcore.models.embridge.EMBridgeConfig")
def _embridge(cfg: Any) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    if cfg.soft != "label_smoothing":
        out["label_smoothing"] = ("soft",)
    if cfg.soft != "softclip":
        out["softclip_tau"] = ("soft",)
    if cfg.soft != "cascle":
        out["alpha"] = out["cascle"] = ("soft",)
    elif cfg.alpha <= 0:
        out["cascle"] = ("soft", "alpha")
    if cfg.lam <= 0:
        # the MPRL mask is still drawn (same random numbers whatever the ratio) but never used
        out["mask_ratio"] = ("lam",)
    return out


# EMG-JEPA (emgcore.models.jepa, emgcore.methods.jepa, emgcore.training.fit).


@rule("emgcore.models.jepa.JEPAConfig")
def _jepa(cfg: Any) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    if cfg.featurizer == "raw":  # one Linear(patch, feat_dim): no intermediate layer
        out["feat_hidden"] = ("featurizer",)
    if cfg.warmup_steps > 0:  # training.fit's warm-up schedule replaces the warm restarts
        out["restart_epochs"] = ("warmup_steps",)
    return out


@rule("emgcore.models.jepa.PoseHeadConfig")
def _pose_head(cfg: Any) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    if cfg.decoder == "conv":  # ConvHead: two convolutions of width `hidden`, no attention
        out["heads"] = out["mlp_dim"] = ("decoder",)
    if cfg.warmup_steps > 0:
        out["restart_epochs"] = ("warmup_steps",)
    return out


# Without pre-training only the encoder's architecture is read (poseest.run builds a fresh
# Encoder); the predictor, the masks, the EMA and the pre-training recipe are not.
_PRETRAIN_ONLY = (
    "pred_width",
    "pred_depth",
    "pred_heads",
    "pred_mlp_dim",
    "ema",
    "masks",
    "lr",
    "betas",
    "weight_decay",
    "warmup_steps",
    "grad_clip",
    "batch_size",
    "epochs",
    "restart_epochs",
    "ema_schedule",
)


@rule("emgcore.methods.jepa.PoseEstConfig")
def _poseest(cfg: Any) -> dict[str, tuple[str, ...]]:
    if cfg.pretrain:
        return {}
    return {f"jepa.{f}": ("pretrain",) for f in _PRETRAIN_ONLY if hasattr(cfg.jepa, f)}


PRESETS_DIR = Path(__file__).parent / "presets"


def resolve_config(spec: str | Path | None) -> Path | None:
    """A config argument as a path: an existing file or a bundled preset name (``kinembed-sim``,
    ``posealign-smoke``, ``jepa-sim``, ...: any method's), or one line naming both."""
    if spec is None:
        return None
    path = Path(spec)
    if path.exists():
        return path
    bundled = PRESETS_DIR / f"{spec}.yaml"
    if bundled.exists():
        return bundled
    names = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    raise InvalidValueError(
        f"no such file, and not a bundled preset ({', '.join(names)})", source=path, field="config"
    )


def parse_settings(pairs: Sequence[str], flag: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` pairs of a command-line ``flag`` (``--set``) as dotted-key overrides, each
    value read as YAML; a malformed pair is one line naming the flag and the pair."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            msg = "expected KEY=VALUE (a dotted config key, a YAML value)"
            raise InvalidValueError(msg, source=f"{flag} {pair}", field=flag)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            msg = f"not valid YAML: {yaml_problem(e)}"
            raise InvalidValueError(msg, source=f"{flag} {pair}", field=key.strip()) from e
    return out


def override_from_flag(cfg: T, pairs: Sequence[str], flag: str = "--set") -> T:
    """``cfg`` with a command-line ``flag``'s ``KEY=VALUE`` pairs applied together (so that
    fields checked against each other can change at once). An error names the flag and the pair
    it comes from (``--set gestures.tune_users=1: field 'gestures.tune_users': ...``), never the
    config file the pairs override: that file was fine on its own."""
    settings = parse_settings(pairs, flag)
    if not settings:
        return cfg
    try:
        return override(cfg, settings, source=flag)
    except InvalidValueError as e:
        field = e.field or ""
        # the pair whose key is the field, or a section holding it; else every pair
        owners = [p for p in pairs if _covers(p.partition("=")[0].strip(), field)]
        given = [max(owners, key=len)] if owners else pairs
        source = " ".join(f"{flag} {p}" for p in given)
        raise InvalidValueError(e.message, source=source, field=field or flag) from e


def _covers(key: str, field: str) -> bool:
    """Whether dotted ``key`` is ``field`` or holds it (``a`` holds ``a.b`` and ``a[0]``)."""
    return field == key or field.startswith((f"{key}.", f"{key}["))


_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")
_DEFAULT_ROLE = re.compile(r"(?<![`\w])`([^`]+)`(?![`\w])")


class ArgumentParser(argparse.ArgumentParser):
    """The project's command lines: a bad flag is one line on stderr, exit 2, naming the
    command, the flag and what is wrong (argparse's own ``error`` first prints the whole usage
    block, burying that line under a dozen others); ``--help`` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")  # argparse's own last line


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """For a command line's ``formatter_class``: the description as written (:func:`help_text`
    wraps it), each option's help wrapped without breaking a flag or a name at its hyphens
    (``--mae-any-data``, ``emg2pose-like``)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        text = " ".join(text.split())
        return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)


def help_text(doc: str | None, width: int | None = None) -> str:
    """A reST docstring as plain text for ``--help``: inline literals and roles lose their
    markup (a ``:func:`` role keeps its target, ``~a.B`` its last part, ``title <target>`` its
    title), a paragraph's closing ``::`` becomes ``:``, and each unindented paragraph is
    rewrapped to ``width`` (default: the terminal's, at most 100); indented blocks and lists
    keep their lines."""
    import inspect
    import shutil

    def role(m: re.Match[str]) -> str:
        text = m.group(1).strip()
        if text.endswith(">") and "<" in text:
            return text[: text.index("<")].strip()
        return text[1:].rsplit(".", 1)[-1] if text.startswith("~") else text

    text = _DEFAULT_ROLE.sub(r"\1", _LITERAL.sub(r"\1", _ROLE.sub(role, doc or "")))
    text = re.sub(r"(?<=\S)::$", ":", text, flags=re.M)
    text = re.sub(r"^::$\n?", "", text, flags=re.M)
    if width is None:
        width = max(40, min(100, shutil.get_terminal_size().columns - 2))
    out = []
    for para in re.split(r"\n[ \t]*\n", inspect.cleandoc(text)):
        lines = para.splitlines()
        if any(line[:1].isspace() for line in lines) or re.match(r"\s*[-*] ", para):
            out.append(para)  # a literal block or a list: as written
        else:
            words = " ".join(line.strip() for line in lines)
            out.append(textwrap.fill(words, width, break_on_hyphens=False, break_long_words=False))
    return "\n\n".join(out) + "\n"


def at_least(low: float, cast: Callable[[str], Any] = float) -> Callable[[str], Any]:
    """An argparse ``type`` for counts and sizes: ``cast(text)``, refused below ``low`` (and a
    NaN always) with one line naming the flag, so that e.g. ``--workers 0`` or ``--duration -1``
    stop before anything starts instead of failing inside a trial."""
    import argparse
    import math

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if math.isnan(value) or value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {text}")
        return value

    return parse
