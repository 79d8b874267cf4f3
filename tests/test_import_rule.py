"""emgcore is the science: it must never import ray or mlflow (orchestration/ owns them)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import emgcore

FORBIDDEN = {"ray", "mlflow"}
ROOT = Path(emgcore.__file__).parent


def test_no_module_in_emgcore_imports_ray_or_mlflow() -> None:
    offenders = []
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) > 5
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [
                f"{path}:{node.lineno} {n}" for n in names if n.split(".")[0] in FORBIDDEN
            ]
    assert not offenders, offenders


def test_importing_all_of_emgcore_loads_neither() -> None:
    code = (
        "import importlib, pkgutil, sys, emgcore\n"
        "for m in pkgutil.walk_packages(emgcore.__path__, 'emgcore.'):\n"
        "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('ray', 'mlflow')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
