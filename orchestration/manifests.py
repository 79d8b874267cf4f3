"""Offline validation of the Kubernetes manifests in ``clusters/`` (no API server, no
credentials): ``python -m orchestration.manifests FILE... [--schemas DIR]``.

- KubeRay kinds (``RayCluster``, ``RayJob``, ``RayCronJob``): against the CRD's own
  ``openAPIV3Schema`` (``--schemas``: the folder of KubeRay's CRD YAMLs, e.g. v1.7.0's), made
  strict: ``additionalProperties: false`` wherever a schema lists ``properties`` (unless
  ``x-kubernetes-preserve-unknown-fields``), so a misspelt field is an error, not silently
  dropped as the API server would. Draft 7 (:mod:`jsonschema`).
- Core kinds (``CronJob``, ``Deployment``, ``Service``, ...): against the ``kubernetes``
  client's models, which name every field of every API type and its type: an unknown field, a
  list where a mapping belongs, a string where an integer belongs are errors.

Each problem is one line: ``FILE: document N (Kind name): path.to.field: what is wrong``.
Exit 0 when every document validates, 1 otherwise, 2 on unreadable input.
"""

from __future__ import annotations

import copy
import functools
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

KUBERAY = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayCronJob": "raycronjobs"}
SCHEMAS_ENV = "EMG_KUBERAY_SCHEMAS"


def problems(path: str | Path, schemas: str | Path | None = None) -> list[str]:
    """Every problem of every document in the YAML file ``path`` (empty: valid). A KubeRay
    document without ``schemas`` is a problem (it cannot be checked)."""
    import yaml

    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:  # one line: the problem and where (line, column)
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"not YAML: {getattr(e, 'problem', None) or e}{at}") from None
    if not docs:
        return [f"{path}: no Kubernetes object in the file"]
    out = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, Mapping):
            out.append(f"{path}: document {i + 1}: not a Kubernetes object (a mapping with "
                       f"apiVersion, kind and metadata), got {type(doc).__name__}")  # fmt: skip
            continue
        where = f"{path}: document {i + 1} ({doc.get('kind', '?')} " + (
            f"{(doc.get('metadata') or {}).get('name', '?')})"
        )
        out += [f"{where}: {p}" for p in _document(doc, schemas)]
    return out


def _document(doc: Mapping[str, Any], schemas: str | Path | None) -> list[str]:
    missing = [k for k in ("apiVersion", "kind", "metadata") if not doc.get(k)]
    if missing:  # the API server refuses an object without them; the models do not require them
        return [f"{', '.join(missing)}: missing"]
    kind = doc["kind"]
    if kind in KUBERAY:
        if doc["apiVersion"] != "ray.io/v1":
            return [f"apiVersion: {doc['apiVersion']!r}, KubeRay serves {kind} as 'ray.io/v1'"]
        if schemas is None:
            return [f"{kind} needs the KubeRay CRD schemas (--schemas or ${SCHEMAS_ENV})"]
        crd = Path(schemas).resolve() / f"ray.io_{KUBERAY[kind]}.yaml"
        if not crd.is_file():
            raise FileNotFoundError(
                f"--schemas {schemas}: no {crd.name} there (KubeRay's CRD folder)"
            )
        return _crd_problems(doc, _crd_schema(Path(schemas).resolve(), kind))
    return list(_model_problems(doc, _model_for(doc)))


def crd_schema(folder: Path, kind: str) -> dict[str, Any]:
    """``kind``'s CRD ``openAPIV3Schema``, strict (see the module doc). A fresh copy; the file
    is read once per process (KubeRay's CRDs are 1-2 MB of YAML)."""
    return copy.deepcopy(_crd_schema(Path(folder).resolve(), kind))


@functools.cache
def _crd_schema(folder: Path, kind: str) -> dict[str, Any]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's: 4x faster when built
    crd = yaml.load((folder / f"ray.io_{KUBERAY[kind]}.yaml").read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v.get("storage", True))
    return _strict(version["schema"]["openAPIV3Schema"])


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_problems(doc: Mapping[str, Any], schema: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    out = []
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        field = ".".join(str(p) for p in e.absolute_path) or "(top)"
        out.append(f"{field}: {e.message}")
    return out


def _model_for(doc: Mapping[str, Any]) -> str:
    """The client model of ``doc``'s kind and API version (``batch/v1`` CronJob:
    ``V1CronJob``)."""
    version = str(doc.get("apiVersion", "")).split("/")[-1]
    return f"{version.capitalize()}{doc.get('kind', '')}"


# the client spells containers both ways across versions: list[X] / List[X], dict(str, X) /
# Dict[str, X]
_LIST = re.compile(r"^[lL]ist\[(.+)\]$")
_DICT = re.compile(r"^(?:dict\(str, (.+)\)|Dict\[str, (.+)\])$")
# resource quantities are typed str in the client; the API server takes 2 as well as "2"
_QUANTITIES = (".limits", ".requests", ".capacity", ".allocatable")
_PRIMITIVE: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "quantity": (str, int, float),
    "object": (object,),
    "datetime": (str,),
    "date": (str,),
}


def _model_problems(value: Any, type_name: str, path: str = "") -> Iterator[str]:
    """Walk ``value`` along the client's ``openapi_types`` of ``type_name``."""
    import kubernetes.client as k8s

    here = path or "(top)"
    if m := _LIST.match(type_name):
        if not isinstance(value, list):
            yield f"{here}: expected a list, got {type(value).__name__}"
            return
        for i, v in enumerate(value):
            yield from _model_problems(v, m.group(1), f"{path}[{i}]")
        return
    if m := _DICT.match(type_name):
        if not isinstance(value, Mapping):
            yield f"{here}: expected a mapping, got {type(value).__name__}"
            return
        inner = m.group(1) or m.group(2)
        if inner == "str" and path.endswith(_QUANTITIES):
            inner = "quantity"
        for k, v in value.items():
            yield from _model_problems(v, inner, f"{path}.{k}" if path else str(k))
        return
    if type_name in _PRIMITIVE:
        ok = isinstance(value, _PRIMITIVE[type_name])
        if type_name in ("int", "float", "quantity") and isinstance(value, bool):
            ok = False
        if not ok:
            yield f"{here}: expected {type_name}, got {type(value).__name__} {value!r}"
        return
    model = getattr(k8s, type_name, None)
    if model is None:
        yield f"{here}: the kubernetes client has no model {type_name} (apiVersion / kind?)"
        return
    if type_name == "V1IntOrString" or not getattr(model, "openapi_types", None):
        return  # int-or-string, quantities: free-form in the client's models
    if not isinstance(value, Mapping):
        yield f"{here}: expected a mapping ({type_name}), got {type(value).__name__}"
        return
    by_json = {json: py for py, json in model.attribute_map.items()}
    for key, v in value.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in by_json:
            yield f"{sub}: unknown field of {type_name}"
            continue
        yield from _model_problems(v, model.openapi_types[by_json[key]], sub)


def main(argv: list[str] | None = None) -> int:
    import os

    from emgcore.config import ArgumentParser

    p = ArgumentParser(prog="python -m orchestration.manifests", description=__doc__)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--schemas", default=os.environ.get(SCHEMAS_ENV), help="KubeRay CRD folder")
    a = p.parse_args(argv)
    if a.schemas is not None and not Path(a.schemas).is_dir():
        print(f"error: --schemas {a.schemas}: not a folder (KubeRay's CRD folder)", file=sys.stderr)
        return 2
    found, unreadable = [], 0
    for f in a.files:  # every file is checked, an unreadable one too
        try:
            found += problems(f, a.schemas)
        except (OSError, ValueError) as e:  # unreadable, not YAML
            print(f"error: {f}: {e}", file=sys.stderr)
            unreadable += 1
        except Exception as e:
            print(f"error: {f}: {type(e).__name__}: {e}", file=sys.stderr)
            unreadable += 1
    for line in found:
        print(line)
    if not found and not unreadable:
        print(f"ok: {len(a.files)} file(s) valid")
    return 2 if unreadable else 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
