"""Simulator speed: the db8-like 16-channel 2 kHz preset. Target: >= 100x faster than real time.

Baseline: real time (the recording's own duration). One core.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import median_time, pin_one_core

pin_one_core()

from emgcore.data.simulator import preset, simulate_recording  # noqa: E402

SECONDS = 300.0


def main() -> None:
    for name in ("db8-like", "emg2pose-like"):
        cfg = preset(name, duration_s=SECONDS)
        stage = cfg.stages[0] if cfg.stages else None
        t = median_time(lambda cfg=cfg, stage=stage: simulate_recording(cfg, 0, 0, stage), 3)
        print(
            f"simulator {name:<14} {SECONDS:.0f} s of 16 ch @ {cfg.fs:g} Hz: {t:5.2f} s "
            f"= {SECONDS / t:5.0f}x real time (target >= 100x)"
        )
        if name == "db8-like" and SECONDS / t < 100:
            sys.exit(1)


if __name__ == "__main__":
    main()
