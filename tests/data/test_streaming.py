"""Streamed windows (emgcore.streaming) against the in-memory path they replace: the same values,
the same training (losses, gradients, parameters) for 1 and 2 data-parallel workers, each worker
reading only its shard, read-ahead loaders that change nothing, and the storage choice."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from emgcore.distributed import DataParallel
from emgcore.gestures import GestureConfig, gesture_splits
from emgcore.models.cpep import CPEPConfig, train_cpep
from emgcore.models.embridge import EMBridgeConfig, train_embridge
from emgcore.models.mae import MAEConfig, train_mae, train_poset
from emgcore.streaming import WindowArray, choose_storage, take
from emgcore.training import channel_stats
from emgcore.windows import RecordingCache

TINY = {"dim": 16, "depth": 1, "decoder_depth": 1, "heads": 2, "epochs": 2, "batch_size": 8}


def _splits(recordings, cache: Path, storage: str, **kw) -> dict:
    cfg = GestureConfig(tune_users=1, storage=storage, **kw)
    return gesture_splits(recordings, cfg, RecordingCache(cache))


@pytest.fixture(scope="module")
def both(emg2pose_sim, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return _splits(emg2pose_sim, cache, "memory"), _splits(emg2pose_sim, cache, "stream")


def test_streamed_windows_hold_the_in_memory_values(both) -> None:
    mem, st = both
    for role in mem:
        m, s = mem[role], st[role]
        assert not m.streamed and s.streamed
        assert s.emg.shape == tuple(m.emg.shape) and len(s) == len(m)
        assert torch.equal(s.emg[:], m.emg)  # instance-normalised as each batch is read
        assert torch.equal(s.pose[:], m.pose)
        assert torch.equal(s.valid[:], m.valid)
        idx = torch.randperm(len(m), generator=torch.Generator().manual_seed(0))[:5]
        assert torch.equal(s.emg[idx], m.emg[idx]) and torch.equal(s.pose[idx], m.pose[idx])
        assert torch.equal(s.emg[int(idx[0])], m.emg[int(idx[0])])
        assert np.array_equal(s.stage, m.stage) and np.array_equal(s.recording, m.recording)
    assert mem["pretrain"].storage.startswith("memory (") and "forced" in mem["pretrain"].storage


def test_a_lazy_subset_is_the_subset(both) -> None:
    mem, st = both
    keep = np.arange(len(mem["eval"])) % 3 == 1
    a, b = mem["eval"].select(keep), st["eval"].select(keep)
    assert isinstance(b.emg, WindowArray) and torch.equal(b.emg[:], a.emg)
    rows = take(st["eval"].pose, np.flatnonzero(keep)[::-1].copy())
    assert torch.equal(rows[:], a.pose.flip(0))
    with pytest.raises(IndexError, match="out of"):
        st["eval"].emg[torch.tensor([len(keep)])]


def test_channel_statistics_are_those_of_all_the_windows(both) -> None:
    mem, st = both
    x = mem["pretrain"].emg
    mean, std = channel_stats(st["pretrain"].emg, chunk=3)  # merged over ragged chunks
    flat = x.reshape(-1, x.shape[-1]).double()
    assert torch.allclose(mean.double(), flat.mean(0), atol=1e-6)
    assert torch.allclose(std.double(), flat.std(0), rtol=1e-6)
    m2, s2 = channel_stats(x, chunk=3)  # one code for tensors and streamed windows
    assert torch.equal(mean, m2) and torch.equal(std, s2)


def test_ninapro_pose_scaling_is_applied_as_windows_are_read(ninapro_root, tmp_path) -> None:
    """pose_norm 'recording' (per-recording affine) is the same on both paths, bit for bit."""
    from emgcore.config import load_yaml, resolve_config
    from emgcore.data import open_dataset
    from emgcore.methods.posealign import PoseAlignConfig

    cfg = load_yaml(PoseAlignConfig, resolve_config("posealign-ninapro")).gestures
    recs = open_dataset(ninapro_root)
    mem = gesture_splits(recs, replace(cfg, storage="memory"), RecordingCache(tmp_path))
    st = gesture_splits(recs, replace(cfg, storage="stream"), RecordingCache(tmp_path))
    for role in mem:
        assert torch.equal(st[role].pose[:], mem[role].pose), role
        assert torch.equal(st[role].emg[:], mem[role].emg), role


def _train_all_four(w, parallel=None) -> dict[str, object]:
    """The four pose-path trainers on windows ``w``: every epoch's loss and the parameters."""
    kw = {"parallel": parallel, "seed": 1, "ring": w.ring}
    mae, fm = train_mae(MAEConfig(patch=200, **TINY), w.emg, rotate=True, **kw)
    pose_mae, fp = train_mae(MAEConfig(patch=400, **TINY), w.pose, **kw)
    poset, ft = train_poset(MAEConfig(patch=200, **TINY), w.emg, w.pose, w.valid, **kw)
    small = {"epochs": 2, "batch_size": 8}
    cpep, fc = train_cpep(CPEPConfig(**small), mae.encoder, pose_mae.encoder, w.emg, w.pose, **kw)
    emb, fe = train_embridge(
        EMBridgeConfig(n_queries=4, **small), mae.encoder, pose_mae.encoder, w.emg, w.pose,
        heads=2, **kw,
    )  # fmt: skip
    losses = {
        name: torch.tensor([e["train_loss"] for e in f.epochs])
        for name, f in zip(
            ("mae", "pose_mae", "poset", "cpep", "embridge"), (fm, fp, ft, fc, fe), strict=True
        )
    }
    params = {
        f"{name}.{k}": v.detach().clone()
        for name, m in (("poset", poset), ("cpep", cpep), ("embridge", emb))
        for k, v in m.state_dict().items()
    }
    with torch.no_grad():  # what training produced, by its function
        x = w.emg[:8]
        outputs = {
            "poset": poset.eval().predict(x),
            "cpep": cpep.eval().embed_emg(x),
            "embridge": emb.eval().embed_emg(x),
        }
    return {"losses": losses, "params": params, "outputs": outputs}


def test_one_worker_trains_the_same_on_streamed_windows(both) -> None:
    mem, st = both
    a = _train_all_four(mem["pretrain"])
    b = _train_all_four(st["pretrain"])
    for k in a["losses"]:
        assert torch.equal(a["losses"][k], b["losses"][k]), k
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
    for k in a["outputs"]:
        assert torch.equal(a["outputs"][k], b["outputs"][k]), k


def test_read_ahead_loaders_change_nothing(both, monkeypatch) -> None:
    """Two loader processes gathering each epoch's batches ahead give the same training, and
    the training process itself reads no training batch."""
    _, st = both
    a = _train_all_four(st["pretrain"])
    reads: list[int] = []
    gather = WindowArray.gather
    monkeypatch.setattr(
        WindowArray, "gather", lambda self, i: reads.append(len(i)) or gather(self, i)
    )
    b = _train_all_four(st["pretrain"].to("cpu", loader_workers=2))
    for k in a["losses"]:
        assert torch.equal(a["losses"][k], b["losses"][k]), k
    for k in a["outputs"]:
        assert torch.equal(a["outputs"][k], b["outputs"][k]), k
    # here: whole-set passes (statistics, centroids) and the 8 windows of the outputs only
    assert reads.count(8) == 1 and set(reads) == {8, len(st["pretrain"])}, reads


def _worker(rank: int, world: int, port: int, windows_path: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        w = torch.load(windows_path, weights_only=False)
        reads: list[int] = []
        gather = WindowArray.gather

        def counted(self, idx):
            reads.append(len(idx))
            return gather(self, idx)

        WindowArray.gather = counted  # what this worker reads from disk
        par = DataParallel.current()
        result = _train_all_four(w, par)
        WindowArray.gather = gather
        result["reads"] = reads
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_workers_stream_only_their_shards_and_train_as_one(both, tmp_path) -> None:
    """2 workers x 4 windows on streamed data == 1 worker x 8 in memory: losses and parameters
    (up to the order of the gradient all-reduce), and each worker read only its half."""
    from tests.orchestration.processes import free_port

    mem, st = both
    ref = _train_all_four(mem["pretrain"])
    path = tmp_path / "windows.pt"
    torch.save(st["pretrain"], path)
    mp.spawn(_worker, args=(2, free_port(), str(path), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for k, v in ref["losses"].items():
            assert torch.allclose(got["losses"][k], v, rtol=1e-4, atol=1e-5), (rank, k)
        # compared by function: an attention key bias gets a zero gradient, so AdamW moves it
        # by the all-reduce's rounding noise, which changes nothing
        for k, v in ref["outputs"].items():
            assert torch.allclose(got["outputs"][k], v, rtol=1e-3, atol=1e-4), (rank, k)
        # training batches: half of each global batch of 8, for each of the 9 arrays the five
        # trainers step over (2 epochs); the rest are whole-set passes in chunks (channel
        # statistics, CASCLe's pose centroids) and the 8 windows of the outputs above
        n = len(st["pretrain"])
        reads = got["reads"]
        assert reads.count(4) == 9 * 2 * (n // 8), reads
        assert set(reads) <= {4, 8, n}, sorted(set(reads))


def test_storage_is_chosen_by_size_and_can_be_forced() -> None:
    gb = 2**30
    assert choose_storage(3 * gb, "auto", 2.0) == (
        "stream",
        "stream (3 GB of windows > stream_above_gb 2)",
    )
    assert choose_storage(gb, "auto", 2.0)[0] == "memory"
    assert choose_storage(3 * gb, "memory", 2.0) == ("memory", "memory (3 GB of windows; forced)")
    assert choose_storage(100, "stream", 2.0)[0] == "stream"
    with pytest.raises(ValueError, match="storage must be one of"):
        choose_storage(1, "disk", 2.0)


def test_auto_streams_a_set_above_the_threshold(emg2pose_sim, tmp_path) -> None:
    small = _splits(emg2pose_sim, tmp_path, "auto")
    assert not small["pretrain"].streamed and small["pretrain"].storage.startswith("memory (")
    tiny = _splits(emg2pose_sim, tmp_path, "auto", stream_above_gb=1e-6)
    assert all(w.streamed for w in tiny.values())
    assert (
        tiny["eval"].storage.startswith("stream (")
        and "stream_above_gb 1e-06" in tiny["eval"].storage
    )


def test_jepa_trains_the_same_on_streamed_windows(tmp_path) -> None:
    """EMG-JEPA's overlapping 1-s windows: streamed from the cache, the same windows and the
    same pre-training and fine-tuning (losses, validation JA-MAE) as in memory."""
    from emgcore.config import load_yaml, resolve_config
    from emgcore.data import preset, simulate
    from emgcore.methods.jepa import PoseEstConfig, prepare, run

    stages = ("HandClawGraspFlicks", "ShakaVulcanPeace")
    recs = simulate(
        preset("emg2pose-like", n_subjects=5, duration_s=4.0, sessions=("s0",), stages=stages)
    )
    cfg = load_yaml(PoseEstConfig, resolve_config("jepa-smoke"))
    cache = RecordingCache(tmp_path)
    mem = prepare(recs, replace(cfg.data, storage="memory"), cache)
    st = prepare(recs, replace(cfg.data, storage="stream"), cache)
    assert isinstance(st.train.emg, WindowArray) and not isinstance(mem.train.emg, WindowArray)
    assert st.train.storage.startswith("stream (") and "forced" in st.train.storage
    for role in ("train", "val", "test"):
        a, b = getattr(mem, role), getattr(st, role)
        assert torch.equal(b.emg[:], a.emg) and torch.equal(b.pose, a.pose), role
    a, b = run(mem, cfg), run(st, cfg)
    assert a == b


# -- memory: what a streamed read leaves behind ----------------------------------------------------

_READER = """
import os, sys, time, pathlib
import numpy as np
from emgcore.streaming import WindowArray
from emgcore.windows import RecordingCache

root, go = sys.argv[1], sys.argv[2]

def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024

def npy_held():  # open descriptors and mappings of cache files
    fds = []
    for f in os.listdir("/proc/self/fd"):
        try:
            fds.append(os.readlink(f"/proc/self/fd/{f}"))
        except FileNotFoundError:  # the listing's own descriptor, closed by now
            pass
    maps = [ln for ln in open("/proc/self/maps") if ln.rstrip().endswith(".npy")]
    return sum(f.endswith(".npy") for f in fds) + len(maps)

files = [RecordingCache.open(p).file("emg") for p in sorted(pathlib.Path(root).iterdir())]
starts = [np.arange(0, len(f) - 4000 + 1, 4000) for f in files]
rec = np.concatenate([np.full(len(s), i, np.int32) for i, s in enumerate(starts)])
x = WindowArray(tuple(files), rec, np.concatenate(starts), 4000)
while not pathlib.Path(go).exists():
    time.sleep(0.05)
x[:16]  # the first batch's buffers and the allocator's arenas
before, peak, total = rss(), 0, 0
order = np.random.default_rng(0).permutation(len(x))
for a in range(0, len(x), 16):
    total += x[order[a : a + 16]].numel() * 4
    peak = max(peak, rss() - before)
print(total, peak, npy_held())
"""


def _write_cache(root: Path, mb: int) -> int:
    """``mb`` MB of 16-channel EMG as cached recordings (no preprocessing); returns the bytes."""
    from emgcore.preprocessing import Pipeline
    from emgcore.recording import ChannelLayout, Recording

    rng = np.random.default_rng(0)
    cache, total = RecordingCache(root), 0
    for i in range(max(1, mb // 50)):
        emg = rng.standard_normal((50 * 2**20 // 64, 16)).astype(np.float32)
        rec = Recording(emg=emg, fs=2000.0, layout=ChannelLayout.ring(16), subject=f"u{i}",
                        session="s", fingerprint=f"r{i}")  # fmt: skip
        cache.get(rec, Pipeline())
        total += emg.nbytes
    return total


def test_two_workers_reading_the_same_cache_hold_no_copy_of_it(tmp_path) -> None:
    """Two processes reading every window of the same 300 MB cache at once, in shuffled
    batches: neither's memory grows by more than a few batches (the pages are the page
    cache's, shared), and neither keeps a file or a mapping of the cache open."""
    import subprocess
    import sys

    size = _write_cache(tmp_path / "cache", 300)
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[2])}
    go = tmp_path / "go"
    args = [sys.executable, "-c", _READER, str(tmp_path / "cache"), str(go)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env) for _ in "ab"]
    go.touch()
    for p in procs:
        read, grew, held = (int(v) for v in p.communicate(timeout=300)[0].split())
        assert p.returncode == 0 and read >= 0.95 * size, (read, size)
        assert grew < 16 * 2**20, (grew, size)  # 4 MB batches, not the 300 MB read
        assert held == 0


_TRAINER = """
import pathlib, sys
import numpy as np
from emgcore.models.mae import MAEConfig, train_mae
from emgcore.streaming import WindowArray, peak_rss, take
from emgcore.training import channel_stats
from emgcore.windows import RecordingCache

root, storage = sys.argv[1], sys.argv[2]
files = [RecordingCache.open(p).file("emg") for p in sorted(pathlib.Path(root).iterdir())]
starts = [np.arange(0, len(f) - 4000 + 1, 4000) for f in files]
rec = np.concatenate([np.full(len(s), i, np.int32) for i, s in enumerate(starts)])
x = WindowArray(tuple(files), rec, np.concatenate(starts), 4000)
if storage == "memory":
    x = x.materialize()
mean, std = channel_stats(x)  # one pass over every window
pick = np.random.default_rng(0).choice(len(x), 128, replace=False)  # spread over the whole set
cfg = MAEConfig(patch=200, dim=32, depth=1, decoder_depth=1, heads=2, epochs=1, batch_size=16)
_, fit = train_mae(cfg, take(x, pick), rotate=True)
print("trained", len(x), fit.steps, peak_rss())
"""


def _memory_cgroup(limit: int) -> Path:
    """A child of this process's cgroup-v1 memory group limited to ``limit`` bytes, or skip."""
    line = next((ln for ln in open("/proc/self/cgroup") if ":memory:" in ln), None)
    base = Path("/sys/fs/cgroup/memory")
    if line is None or not base.is_dir():
        pytest.skip("no cgroup-v1 memory controller here to limit a worker's memory with")
    cg = base / line.strip().split(":", 2)[2].lstrip("/") / f"emg-test-{os.getpid()}"
    try:
        cg.mkdir()
        (cg / "memory.limit_in_bytes").write_text(str(limit))
    except OSError as e:
        pytest.skip(f"cannot create a memory cgroup ({e}): needs root")
    return cg


@pytest.mark.slow
def test_a_data_set_larger_than_the_memory_limit_trains_streamed(tmp_path) -> None:
    """A worker limited to 1 GB (a memory cgroup, as a container's limit is) trains on 1.5 GB of
    cached windows streamed, a full pass included; the same worker holding them in memory is
    killed by the limit."""
    import subprocess
    import sys

    limit = 2**30
    size = _write_cache(tmp_path / "cache", 1536)
    assert size > 1.4 * limit
    for f in (tmp_path / "cache").rglob("*.npy"):  # evicted: the worker's reads are its own
        fd = os.open(f, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    cg = _memory_cgroup(limit)
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}

    def join() -> None:  # the child enters the cgroup before it execs
        (cg / "cgroup.procs").write_text(str(os.getpid()))

    try:
        runs = {}
        for storage in ("stream", "memory"):
            runs[storage] = subprocess.run(
                [sys.executable, "-c", _TRAINER, str(tmp_path / "cache"), storage],
                capture_output=True, text=True, env=env, preexec_fn=join, timeout=900,
            )  # fmt: skip
    finally:
        cg.rmdir()
    st = runs["stream"]
    assert st.returncode == 0, st.stderr[-3000:]
    _, n, steps, peak = st.stdout.split()
    assert int(n) * 4000 * 16 * 4 > 1.4 * limit and int(steps) == 8
    assert int(peak) < limit  # the whole process, torch included
    assert runs["memory"].returncode == -9, runs["memory"].stderr[-2000:]  # the limit bites


def test_streamed_splits_hold_no_file_or_mapping_open(emg2pose_sim, tmp_path) -> None:
    """Any number of recordings costs no open files: a streamed subset holds paths and layouts
    (emg2pose has ~25k files; a mapping or descriptor each would exceed `ulimit -n` and
    vm.max_map_count), in memory or streamed."""
    cache = tmp_path / "held"
    for storage in ("stream", "memory"):
        splits = _splits(emg2pose_sim, cache, storage)
        splits["pretrain"].emg[:4]  # a read opens and closes
        fds = []
        for f in os.listdir("/proc/self/fd"):
            try:
                fds.append(os.readlink(f"/proc/self/fd/{f}"))
            except FileNotFoundError:
                pass
        maps = [ln for ln in open("/proc/self/maps") if str(cache) in ln]
        assert not maps and not [f for f in fds if str(cache) in f], storage


def test_keys_a_tensor_would_read_differently_are_refused(both) -> None:
    x = both[1]["eval"].emg
    for key in ((1, 2), (slice(None), 0), None, Ellipsis, 1.7, torch.zeros(2, 2, dtype=torch.long)):
        with pytest.raises(IndexError):
            x[key]
    with pytest.raises(IndexError, match="mask of shape"):
        x[torch.ones(3, dtype=torch.bool)]
    assert torch.equal(x[::-2], both[0]["eval"].emg[torch.arange(len(x) - 1, -1, -2)])
    assert take(both[0]["eval"].emg, []).shape[0] == 0 == take(x, []).shape[0]
