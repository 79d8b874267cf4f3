"""Peak memory while iterating windows over a 2 GB emg2pose-format file set. Target: < 600 MB.

Writes ~2 GB of emg2pose HDF5 files (120 s each, like the real sessions' upper end) into a
temporary folder, then in a fresh process: loads them lazily, preprocesses them into the cache
and iterates every 1 s window through a DataLoader. Peak RSS of that process is reported against
the baseline of reading the same files eagerly (the size of the data a naive loader would hold).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_BYTES = 2 * 2**30
SECONDS_PER_FILE = 120.0


def write_set(root: Path) -> int:
    from emgcore.data.emg2pose import DTYPE, write_emg2pose
    from emgcore.recording import ChannelLayout, Recording

    n = int(SECONDS_PER_FILE * 2000)
    n_files = int(np.ceil(TARGET_BYTES / (n * DTYPE.itemsize)))
    rng = np.random.default_rng(0)
    t = np.arange(n) / 2000
    kin = (30 + 20 * np.sin(2 * np.pi * 0.5 * t[:, None] + np.arange(20))).astype(np.float32)
    for i in range(n_files):
        rec = Recording(
            emg=rng.normal(0, 2e-5, (n, 16)).astype(np.float32),
            fs=2000.0,
            layout=ChannelLayout.ring(16),
            subject=f"u{i % 8}",
            session=f"s{i}",
            kinematics=kin,
            meta={"stage": "FingerFreeform"},
            fingerprint=str(i),
        )
        write_emg2pose(root / f"s{i}_right.hdf5", rec)
    return sum(p.stat().st_size for p in root.glob("*.hdf5"))


def iterate(root: str, cache: str) -> None:
    from torch.utils.data import DataLoader

    from emgcore.data import load_emg2pose
    from emgcore.preprocessing import Pipeline
    from emgcore.streaming import peak_rss
    from emgcore.windows import RecordingCache, WindowDataset

    t0 = time.perf_counter()
    recs = [load_emg2pose(p) for p in sorted(Path(root).glob("*.hdf5"))]
    pipe = Pipeline.from_config(
        [{"name": "bandpass", "low": 20, "high": 450}, {"name": "notch", "freq": 60}]
    )
    cached = RecordingCache(cache).get_all(recs, pipe)
    ds = WindowDataset(cached, 2000, 2000, target="last")
    n = 0
    for batch in DataLoader(ds, batch_size=64, shuffle=True):
        n += len(batch["emg"])
    peak = peak_rss()
    print(f"{n} {peak} {time.perf_counter() - t0:.1f}")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--iterate":
        iterate(sys.argv[2], sys.argv[3])
        return
    with tempfile.TemporaryDirectory() as d:
        root, cache = Path(d) / "emg2pose", Path(d) / "cache"
        root.mkdir()
        size = write_set(root)
        out = subprocess.run(
            [sys.executable, __file__, "--iterate", str(root), str(cache)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        windows, peak, secs = int(out[0]), int(out[1]), out[2]
    print(f"memory: {size / 2**30:.2f} GB of emg2pose files, {windows} windows of 1 s in {secs} s")
    print(f"  peak RSS while iterating  {peak / 2**20:7.0f} MB (target < 600 MB)")
    print(f"  baseline: eager load      {size / 2**20:7.0f} MB (the file set held in memory)")
    print(f"  ratio peak/eager = {peak / size:.3f}")
    sys.exit(0 if peak < 600 * 2**20 else 1)


if __name__ == "__main__":
    main()
