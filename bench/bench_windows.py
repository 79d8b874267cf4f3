"""WindowDataset over the cache vs a bare memmap slicing loop on the same windows.

Target: the Dataset serves >= 50% of the bare loop's samples/s.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import median_time, pin_one_core

pin_one_core()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from emgcore.data.simulator import preset, simulate_recording  # noqa: E402
from emgcore.preprocessing import DEFAULT_EMG, Pipeline  # noqa: E402
from emgcore.windows import RecordingCache, WindowDataset  # noqa: E402

L, STRIDE = 256, 104  # KinEMbed's 128 ms windows, 52 ms stride at 2 kHz


def main() -> None:
    rec = simulate_recording(preset("db8-like", duration_s=300.0), 0, 0)
    with tempfile.TemporaryDirectory() as d:
        cached = RecordingCache(d).get(rec, Pipeline.from_config(DEFAULT_EMG))
        ds = WindowDataset([cached], L, STRIDE, target="last", label="gesture")
        n = len(ds)
        mm = np.load(Path(cached.path) / "emg.npy", mmap_mode="r")
        kin = np.load(Path(cached.path) / "kinematics.npy", mmap_mode="r")
        order = np.random.default_rng(0).permutation(n)  # shuffled, as training reads
        starts = ds.starts[order]

        def bare() -> None:
            for s in starts:
                torch.from_numpy(np.array(mm[s : s + L]))
                torch.from_numpy(np.array(kin[s + L - 1]))

        def dataset() -> None:
            for i in order:
                ds[i]

        t_bare, t_ds = median_time(bare, 5), median_time(dataset, 5)
    sps_bare, sps_ds = n / t_bare, n / t_ds
    print(
        f"windows ({n} x {L} x 16, shuffled): bare memmap loop {sps_bare:9.0f} windows/s, "
        f"WindowDataset {sps_ds:9.0f} windows/s"
    )
    print(f"  ratio dataset/bare = {sps_ds / sps_bare:.2f} (target >= 0.50)")
    sys.exit(0 if sps_ds / sps_bare >= 0.5 else 1)


if __name__ == "__main__":
    main()
