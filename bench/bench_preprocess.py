"""Preprocessing chain on one hour of 16-channel 2 kHz EMG, one core.

Target: >= 300x faster than real time. Baseline in the same run: the textbook chain
(scipy sosfiltfilt per step, float64, time-major) on the same input.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import median_time, pin_one_core

pin_one_core()

import numpy as np  # noqa: E402
import scipy.signal as sps  # noqa: E402

from emgcore.preprocessing import Pipeline  # noqa: E402
from emgcore.recording import ChannelLayout, Recording  # noqa: E402

FS, SECONDS, C = 2000.0, 3600.0, 16
CHAIN = [
    {"name": "bandpass", "low": 20.0, "high": 450.0},
    {"name": "notch", "freq": 50.0, "harmonics": 2},
    {"name": "zscore"},
]


def main() -> None:
    x = np.random.default_rng(0).normal(0, 2e-5, (int(FS * SECONDS), C)).astype(np.float32)
    rec = Recording(
        emg=x, fs=FS, layout=ChannelLayout.ring(C), subject="u", session="s", fingerprint="bench"
    )
    pipe = Pipeline.from_config(CHAIN).fit([rec])

    def ours() -> None:
        pipe.apply(rec)

    def baseline() -> None:
        y = sps.sosfiltfilt(
            sps.butter(4, [20, 450], "bandpass", fs=FS, output="sos"), x.astype(np.float64), axis=0
        )
        for f in (50.0, 150.0):
            y = sps.sosfiltfilt(sps.tf2sos(*sps.iirnotch(f, 30.0, fs=FS)), y, axis=0)
        (y - y.mean(0)) / y.std(0)

    t_ours, t_base = median_time(ours, 3), median_time(baseline, 3)
    print(
        f"preprocessing {SECONDS / 3600:.0f} h x {C} ch @ {FS:g} Hz, 1 core, chain "
        f"{[s['name'] for s in CHAIN]}"
    )
    print(
        f"  emgcore pipeline     {t_ours:6.2f} s  = {SECONDS / t_ours:7.0f}x real time "
        f"(target >= 300x)"
    )
    print(f"  baseline scipy f64   {t_base:6.2f} s  = {SECONDS / t_base:7.0f}x real time")
    print(f"  ratio baseline/ours  {t_base / t_ours:.2f}x")
    sys.exit(0 if SECONDS / t_ours >= 300 else 1)


if __name__ == "__main__":
    main()
