"""Simulator speed: the db8-like 16-channel 2 kHz preset. Target: >= 100x faster than real time.

Baseline: real time (the recording's own duration). One core. The 4-s case is the smoke size
(``sweep.py --smoke``: 240 such recordings for the pose family), where a fixed 2^16-sample FFT
once cost 5x the work.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import median_time, pin_one_core

pin_one_core()

from emgcore.data.simulator import preset, simulate_recording  # noqa: E402

CASES = (("db8-like", 300.0), ("emg2pose-like", 300.0), ("emg2pose-like", 4.0))


def main() -> None:
    for name, seconds in CASES:
        cfg = preset(name, duration_s=seconds)
        stage = cfg.stages[0] if cfg.stages else None
        t = median_time(lambda cfg=cfg, stage=stage: simulate_recording(cfg, 0, 0, stage), 5)
        print(
            f"simulator {name:<14} {seconds:3.0f} s of 16 ch @ {cfg.fs:g} Hz: {t:6.3f} s "
            f"= {seconds / t:5.0f}x real time (target >= 100x)"
        )
        if seconds / t < 100:
            sys.exit(1)


if __name__ == "__main__":
    main()
