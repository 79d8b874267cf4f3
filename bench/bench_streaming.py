"""Streamed windows (emgcore.streaming) at 1, 4 and 8 GB of emg2pose-format data.

Targets (issue 20), all in one run:

1. Peak RSS of one training worker (a fresh process: load the set lazily, cut the gesture splits
   streamed from the warm preprocessing cache, train the EMG-MAE for a fixed number of steps on
   windows drawn from the whole set, embed every evaluation window): flat within 10% across the
   three sizes and under 1.5 GB, torch included. Baseline: the windows held in memory.
2. Samples/s of the streaming path against the in-memory path on the 1 GB set (which fits), one
   core, the same windows and steps: >= 70%.
3. Cost grows with the data read, not the set's size: the fixed steps on the 8 GB set within 15%
   of the 1 GB set's time, their cache pages dropped (``POSIX_FADV_DONTNEED``) first, so every
   window is read from disk, not from the page cache.
4. Preprocessing throughput (recording-hours per core-second) building the cache, one process
   against Ray Data over this machine's cores; and the loader cores one A100 needs at the MAE's
   paper-size step (its FLOPs and operators by ``bench_cluster_cost.py``'s A100 rule) from the
   measured per-core rate of gathering windows.

The data: 1 GB of unique emg2pose HDF5 files (6 users, in-distribution and unseen stages, 120 s
each, random EMG and smooth joint angles), written once; the 4 GB and 8 GB sets are hard links of
them under other names. A cache entry is keyed by its file's path, so each set's cache is its own
(0.62 GB of cache per GB of HDF5), built from scratch and read from disk.

Usage: ``python bench/bench_streaming.py [--sizes 1,4,8] [--steps 20] [--dir DIR]``; about 15
minutes and 30 GB of disk on the default sizes (the files are deleted at the end unless
``--dir`` names a folder to keep them in).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

SECONDS_PER_FILE = 120.0
FS = 2000.0
USERS = {  # user -> stages: 2 train users, 2 val (tune + probe), 2 test (GestureConfig's rule)
    "u0": ("ThumbsSwipesWholeHand", "HandClawGraspFlicks"),
    "u1": ("ThumbsSwipesWholeHand", "HandClawGraspFlicks"),
    "u2": ("ThumbsSwipesWholeHand", "ShakaVulcanPeace"),
    "u3": ("ThumbsSwipesWholeHand", "ShakaVulcanPeace"),
    "u4": ("ThumbsSwipesWholeHand", "ShakaVulcanPeace"),
    "u5": ("ThumbsSwipesWholeHand", "ShakaVulcanPeace"),
}
BATCH = 32
MAE = {"patch": 50, "dim": 64, "depth": 2, "decoder_depth": 1, "heads": 4, "epochs": 1}


def write_unique(root: Path, gigabytes: float) -> list[Path]:
    """emg2pose HDF5 files adding up to ``gigabytes``: train users' files repeat until the size
    is reached; every val and test user has one file per stage."""
    from emgcore.data.emg2pose import DTYPE, write_emg2pose
    from emgcore.recording import ChannelLayout, Recording

    n = int(SECONDS_PER_FILE * FS)
    n_files = max(len(USERS) * 2, int(np.ceil(gigabytes * 2**30 / (n * DTYPE.itemsize))))
    rng = np.random.default_rng(0)
    t = np.arange(n) / FS
    plan = [(u, st) for u in ("u2", "u3", "u4", "u5") for st in USERS[u]]
    while len(plan) < n_files:
        k = len(plan)
        plan.append(("u0" if k % 2 else "u1", USERS["u0"][(k // 2) % 2]))
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (user, stage) in enumerate(plan):
        phase = rng.uniform(0, 2 * np.pi, 20)
        kin = 30 + 20 * np.sin(2 * np.pi * 0.5 * t[:, None] + phase)
        rec = Recording(
            emg=rng.normal(0, 2e-5, (n, 16)).astype(np.float32),
            fs=FS,
            layout=ChannelLayout.ring(16),
            subject=user,
            session=f"s{i}",
            kinematics=kin.astype(np.float32),
            meta={"stage": stage},
            fingerprint=str(i),
        )
        out.append(write_emg2pose(root / f"s{i}_right.hdf5", rec))
    return out


def link_set(unique: list[Path], root: Path, copies: int) -> int:
    """``copies`` hard links of every unique file under ``root``; returns the set's bytes."""
    root.mkdir(parents=True, exist_ok=True)
    total = 0
    for k in range(copies):
        for p in unique:
            dst = root / f"c{k}_{p.name}"
            if not dst.exists():
                os.link(p, dst)
            total += p.stat().st_size
    return total


def drop_page_cache(folder: Path) -> None:
    """Evict ``folder``'s files from the OS page cache (clean pages; no root needed)."""
    for p in folder.rglob("*.npy"):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _recordings(folder: str) -> list:
    from emgcore.data.emg2pose import load_emg2pose

    return [load_emg2pose(p) for p in sorted(Path(folder).glob("*.hdf5"))]


def build_one_process(folder: Path, cache: Path) -> float:
    """Build ``folder``'s cache in this process; returns the seconds."""
    from emgcore.gestures import GestureConfig
    from emgcore.windows import RecordingCache

    t = time.perf_counter()
    RecordingCache(cache).get_all(_recordings(str(folder)), GestureConfig().pipeline())
    return time.perf_counter() - t


def build_ray_data(folder: Path, cache: Path) -> tuple[float, int]:
    """Build ``folder``'s cache with Ray Data over this machine's cores; (seconds, cores)."""
    import ray

    from emgcore.gestures import GestureConfig
    from orchestration.cache import warm

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        recs = _recordings(str(folder))
        t = time.perf_counter()
        warm([(r, GestureConfig().pipeline()) for r in recs], str(cache))
        return time.perf_counter() - t, int(ray.cluster_resources()["CPU"])
    finally:
        ray.shutdown()


def worker(folder: str, cache: str, storage: str, steps: int, evaluate: bool) -> None:
    """One training worker, in its own process: prints a JSON line of its figures."""
    from _common import pin_one_core

    pin_one_core()
    import torch

    from emgcore.gestures import GestureConfig, gesture_splits
    from emgcore.models.mae import MAEConfig, train_mae
    from emgcore.streaming import peak_rss, take
    from emgcore.training import batched
    from emgcore.windows import RecordingCache

    t0 = time.perf_counter()
    cfg = GestureConfig(tune_users=1, storage=storage)
    splits = gesture_splits(_recordings(folder), cfg, RecordingCache(cache))
    t_split = time.perf_counter() - t0
    peak_split = peak_rss()
    pre = splits["pretrain"]
    # the same windows on every set and path: steps x batch drawn from the whole pre-training set
    pick = np.sort(np.random.default_rng(0).choice(len(pre), steps * BATCH, replace=False))
    x = take(pre.emg, pick)
    t1 = time.perf_counter()
    model, _ = train_mae(MAEConfig(batch_size=BATCH, **MAE), x, rotate=True, ring=pre.ring)
    t_train = time.perf_counter() - t1
    peak_train = peak_rss()
    n_eval = 0
    if evaluate:  # embeddings of every evaluation window, streamed in batches
        n_eval = len(batched(model.encoder.summary, splits["eval"].emg, 64))
    print(
        json.dumps(
            {
                "peak": peak_rss(),
                "peak_split": peak_split,
                "peak_train": peak_train,
                "split_s": t_split,
                "train_s": t_train,
                "samples": steps * BATCH,
                "windows": sum(len(w) for w in splits.values()),
                "window_bytes": sum(w.nbytes for w in splits.values()),
                "eval": n_eval,
                "storage": pre.storage,
                "threads": torch.get_num_threads(),
            }
        )
    )


def run_worker(folder: Path, cache: Path, storage: str, steps: int, evaluate: bool) -> dict:
    args = [sys.executable, __file__, "--worker", str(folder), str(cache), storage, str(steps)]
    # glibc's dynamic mmap threshold makes a worker's peak bimodal (630 or 696 MB on the same
    # inputs, by what it freed first); a fixed threshold returns every large buffer on free, so
    # the peak is the live data's, the same run to run
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(
        [*args, "1" if evaluate else "0"], capture_output=True, text=True, check=False, env=env
    )
    if out.returncode:
        raise SystemExit(f"worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def gather_rate(folder: Path, cache: Path, seconds: float = 5.0) -> tuple[float, float, int]:
    """Windows/s one core gathers out of the warm page cache: instance-normalised as training
    reads them, and copied only (the share a GPU could take over); and one window's bytes."""
    from _common import pin_one_core

    pin_one_core()
    import dataclasses

    from emgcore.gestures import GestureConfig, gesture_splits
    from emgcore.preprocessing import Pipeline
    from emgcore.windows import RecordingCache

    cfg = GestureConfig(tune_users=1, storage="stream")
    pre = gesture_splits(_recordings(str(folder)), cfg, RecordingCache(cache))["pretrain"]
    rates = []
    for x in (pre.emg, dataclasses.replace(pre.emg, steps=Pipeline())):
        rng = np.random.default_rng(1)
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            x.gather(rng.choice(len(pre), 256, replace=False))
            n += 256
        rates.append(n / (time.perf_counter() - t))
    return rates[0], rates[1], pre.emg.nbytes // len(pre)


def a100_mae_step() -> tuple[float, int, float, float]:
    """The EMG-MAE's paper-size training step (forward, backward, AdamW) measured on this CPU
    on a probe batch, and on an A100 by bench_cluster_cost's rule:
    ``(A100 s, paper batch, CPU s per probe batch, FLOPs per probe batch)``."""
    import bench_cluster_cost as cc
    import torch
    from _common import median_time

    batch, probe, model, loss_fn = cc._method_steps()["MAE (EMG)"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # AdamW's state exists from here
    cpu_s = median_time(step, 3)
    flops, ops = cc._profile(step)
    return cc._a100_step(flops * batch / probe, ops), batch, cpu_s, flops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,4,8", help="GB of HDF5 per set (comma-separated)")
    ap.add_argument("--steps", type=int, default=20, help="training steps per worker")
    ap.add_argument("--dir", help="keep the data and caches in this folder")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        folder, cache, storage, steps, evaluate = a.worker
        worker(folder, cache, storage, int(steps), evaluate == "1")
        return
    sizes = [int(s) for s in a.sizes.split(",")]
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        base = Path(tmp)
        t = time.perf_counter()
        unique = write_unique(base / "unique", 1.0)
        print(f"wrote {len(unique)} unique emg2pose files in {time.perf_counter() - t:.0f} s")
        hours_per_gb = len(unique) * SECONDS_PER_FILE / 3600 / 1.0
        sets = {}
        for gb in sizes:
            folder, cache = base / f"set{gb}", base / f"cache{gb}"
            size = link_set(unique, folder, gb)
            if gb == sizes[0]:
                secs, cores = build_one_process(folder, cache), 1
            else:
                secs, cores = build_ray_data(folder, cache)
            rate = gb * hours_per_gb / secs  # recording-hours per second
            print(
                f"set {gb} GB: {size / 2**30:.2f} GB HDF5, {gb * hours_per_gb:.2f} recording-h; "
                f"cache built in {secs:.0f} s on {cores} core(s): {rate * 3600:.0f} "
                f"recording-h per hour, {rate / cores * 3600:.0f} per core-hour"
            )
            sets[gb] = (folder, cache, size, secs, cores)

        print("\n1. peak RSS of one training worker (streamed, fixed steps + streamed evaluation; "
              "medians of 3 runs)")  # fmt: skip
        res = {}
        for gb, (folder, cache, *_) in sets.items():
            runs = []
            for _ in range(3):  # the median run by training time; peak and time are medians
                drop_page_cache(cache)
                runs.append(run_worker(folder, cache, "stream", a.steps, True))
            r = dict(sorted(runs, key=lambda r: r["train_s"])[1])
            r["peak"] = float(np.median([x["peak"] for x in runs]))
            res[gb] = r
            print(
                f"  {gb} GB: peak {r['peak'] / 2**20:6.0f} MB; windows {r['windows']} "
                f"({r['window_bytes'] / 2**30:.2f} GB held in memory would be the baseline); "
                f"{a.steps} steps in {r['train_s']:.1f} s "
                f"(cold page cache), eval {r['eval']} windows; splits {r['split_s']:.1f} s"
            )
        peaks = [r["peak"] for r in res.values()]
        flat = max(peaks) / min(peaks)
        print(f"  max/min peak = {flat:.3f} (target <= 1.10), max {max(peaks) / 2**30:.2f} GB "
              "(target < 1.5 GB)")  # fmt: skip

        print("\n2. samples/s, streaming vs in memory, 1 GB set, warm page cache, one core")
        first = sizes[0]
        folder, cache = sets[first][:2]
        ratios = []
        for _ in range(3):
            mem = run_worker(folder, cache, "memory", a.steps, False)
            st = run_worker(folder, cache, "stream", a.steps, False)
            ratios.append(mem["train_s"] / st["train_s"])
            print(
                f"  memory {mem['samples'] / mem['train_s']:6.1f} samples/s (peak "
                f"{mem['peak'] / 2**20:.0f} MB), stream {st['samples'] / st['train_s']:6.1f} "
                f"samples/s (peak {st['peak'] / 2**20:.0f} MB): ratio {ratios[-1]:.2f}"
            )
        print(f"  median ratio stream/memory = {np.median(ratios):.2f} (target >= 0.70)")

        print("\n3. cost of fixed steps vs the set's size (cold page cache; medians of 3 runs)")
        last = sizes[-1]
        cost = res[last]["train_s"] / res[first]["train_s"]
        print(
            f"  {a.steps} steps: {res[first]['train_s']:.1f} s on {first} GB, "
            f"{res[last]['train_s']:.1f} s on {last} GB: ratio {cost:.2f} (target <= 1.15)"
        )

        print("\n4. loader cores for one A100 at the MAE's paper-size step")
        rate, copy_rate, window_bytes = gather_rate(folder, cache)
        step_s, batch, cpu_s, flops = a100_mae_step()
        need = batch / step_s
        print(
            f"  here: the paper-size EMG-MAE step on a batch of 8 takes {cpu_s:.2f} s, "
            f"{flops / 1e9:.1f} GFLOP ({flops / cpu_s / 1e9:.1f} GFLOP/s on one core)\n"
            f"  A100 (bench_cluster_cost's rule): batch {batch} in {step_s * 1e3:.0f} ms, "
            f"{need:.0f} windows/s\n"
            f"  one core gathers {rate:.0f} windows/s ({window_bytes / 2**10:.0f} KB each, "
            f"copied and instance-normalised): {need / rate:.2f} loader cores per A100\n"
            f"  copying alone: {copy_rate:.0f} windows/s, {need / copy_rate:.2f} cores (instance "
            "normalisation moved onto the GPU)"
        )


if __name__ == "__main__":
    main()
