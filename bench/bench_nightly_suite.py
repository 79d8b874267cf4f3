"""The whole nightly suite at ``--smoke`` against five registered champions, timed against the
issue's target (15 minutes on this 2-core machine).

A ``--smoke`` sweep of every method goes into one fresh store (MAE before CPEP and EMBridge,
which start from its champions). A method whose smoke version does not beat its trivial baseline
gets no champion alias from the registry's rule; for the measurement its newest version is made
champion by hand, so every entry retrains a champion's recipe. Then ``nightly.py --smoke`` runs
``--nights`` nights in a row (the second on has a cost history). Printed: each sweep's and each
night's wall time, every entry's verdict and cost, and each night's ratio to the target.

    python bench/bench_nightly_suite.py            # ~15 min here: 11 of sweeps, ~3 a night
    python bench/bench_nightly_suite.py --folder /tmp/m5 --nights 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 15 * 60
ORDER = ("kinembed", "mae", "cpep", "embridge", "jepa")  # MAE before the methods it starts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", default=None, help="an empty folder (default: a temporary one)")
    p.add_argument("--nights", type=int, default=3, help="nights to run (default: 3)")
    a = p.parse_args()
    folder = Path(a.folder or tempfile.mkdtemp(prefix="emg-nightly-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    uri, store = f"sqlite:///{folder / 'm.db'}", ["--storage-path", str(folder / "results")]
    env = {**os.environ, "EMGCORE_CACHE": str(folder / "cache")}
    env.setdefault("RAY_AUTH_MODE", "disabled")

    def run(script: str, *args: str, log: str) -> tuple[int, float]:
        t0 = time.perf_counter()
        with (folder / log).open("w") as f:
            r = subprocess.run(
                [sys.executable, str(ROOT / "orchestration" / script), *args,
                 "--tracking-uri", uri, *store],
                cwd=folder, env=env, stdout=f, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return r.returncode, time.perf_counter() - t0

    for m in ORDER:
        code, s = run("sweep.py", m, "--smoke", log=f"{m}.log")
        print(f"sweep {m}: exit {code}, {s:.0f} s", flush=True)
        if code:
            return code
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    for name in ("kinembed", "mae-emg", "cpep", "embridge", "jepa"):
        try:
            c.get_model_version_by_alias(name, "champion")
        except Exception:  # below its trivial baseline at the smoke size: made champion here
            newest = max(int(v.version) for v in c.search_model_versions(f"name='{name}'"))
            c.set_registered_model_alias(name, "champion", str(newest))
            print(f"{name}: no champion by the rule; v{newest} made champion for the measurement")
    for i in range(a.nights):
        night = f"2030-01-{i + 1:02d}"
        code, s = run("nightly.py", "--smoke", "--night", night, log=f"night{i + 1}.log")
        print(f"night {night}: exit {code}, {s:.0f} s = {s / TARGET_S:.2f}x the 15-min target")
        for line in (folder / f"night{i + 1}.log").read_text().splitlines():
            if line.split(" ")[0] in ORDER or line.strip().startswith(
                ("wall time", "samples/s", "peak RSS")
            ):
                print(f"  {line.rstrip()}")
    print(f"logs and store: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
