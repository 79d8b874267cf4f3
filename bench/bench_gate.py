"""The nightly gate's error rates on recorded seed scores (orchestration/gate.py).

Nights are simulated by resampling the seed scores a champion recorded (its ``seeds_<metric>``
tag, or ``--scores``): champion and tonight each draw n seeds with replacement. Printed, per n:
the false-alarm rate (no change; the baseline it is measured against is alpha, the test's
nominal level) and the smallest degradation caught in 9 nights of 10 at the suite's tolerance.

    python bench/bench_gate.py --tracking-uri sqlite:///mlflow.db --model kinembed
    python bench/bench_gate.py --scores 0.41,0.44,0.43,... --tolerance 0.02
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestration import gate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scores", default=None, help="comma-separated per-seed scores")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--model", default="kinembed", help="registered model (its champion)")
    p.add_argument("--metric", default="heldout_r2")
    p.add_argument("--mode", default="max", choices=("max", "min"))
    p.add_argument("--tolerance", type=float, default=0.02)
    p.add_argument("--alpha", type=float, default=0.05)
    a = p.parse_args()
    if a.scores:
        pool = [float(x) for x in a.scores.split(",")]
        where = "--scores"
    else:
        from mlflow.tracking import MlflowClient

        from emgcore.methods.base import seed_scores

        c = MlflowClient(a.tracking_uri, registry_uri=a.tracking_uri)
        v = c.get_model_version_by_alias(a.model, "champion")
        pool = list(seed_scores(v.tags, a.metric) or ())
        where = f"{a.model} v{v.version}"
    if len(pool) < 2:
        sys.exit("need at least 2 seed scores")
    spread = max(pool) - min(pool)
    print(f"{len(pool)} seed scores of {a.metric} from {where}: range {spread:.4f}")
    for n in (2, 3, 5):
        kw = {"mode": a.mode, "tolerance": a.tolerance, "alpha": a.alpha}
        fa = gate.alarm_rate(pool, n, **kw)
        fa0 = gate.alarm_rate(pool, n, mode=a.mode, tolerance=0.0, alpha=a.alpha)
        d = gate.smallest_detected(pool, n, **kw)
        print(
            f"n={n} seeds: false alarms {fa:.2%} at tolerance {a.tolerance:g} ({fa0:.2%} at "
            f"tolerance 0; alpha {a.alpha:g}); caught 9 nights in 10: a degradation of "
            f"{d:.4f} ({d / a.tolerance:.1f}x the tolerance)"
        )


if __name__ == "__main__":
    main()
