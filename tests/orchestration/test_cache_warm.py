"""The preprocessing cache built with Ray Data (orchestration.cache.warm) is the cache a trial
builds itself, byte for byte; a second warm-up builds nothing; and the sweep warms only above
its threshold."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from emgcore.gestures import GestureConfig
from emgcore.windows import RecordingCache
from orchestration import cache

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def local_ray():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = tempfile.mkdtemp(prefix="rw")  # short (the temp root): Ray's socket paths have a limit
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def test_ray_data_builds_the_cache_a_trial_would(emg2pose_sim, tmp_path, local_ray) -> None:
    pipe = GestureConfig().pipeline()
    recs = emg2pose_sim[:6]
    pairs = [(r, pipe) for r in recs]
    got = cache.warm(pairs, tmp_path / "warm")
    assert got["built"] == 6 and got["cached"] == 0
    assert got["hours"] == pytest.approx(sum(r.n_samples / r.fs for r in recs) / 3600)
    here = RecordingCache(tmp_path / "here")
    for r in recs:
        key = here.key(r, pipe)
        built = here.get(r, pipe).path
        for f in sorted(p.name for p in built.iterdir()):
            assert (tmp_path / "warm" / key / f).read_bytes() == (built / f).read_bytes(), f
    again = cache.warm(pairs, tmp_path / "warm")
    assert again["built"] == 0 and again["cached"] == 6


def test_only_a_large_data_set_is_warmed(emg2pose_sim, monkeypatch) -> None:
    pairs = [(r, None) for r in emg2pose_sim[:2]] * 2  # a recording twice counts once
    assert cache.emg_bytes(pairs) == sum(4 * r.emg.size for r in emg2pose_sim[:2])
    assert cache.warm_threshold() == cache.WARM_ABOVE_GB
    monkeypatch.setenv(cache.WARM_ENV, "0")
    assert cache.warm_threshold() == 0.0


def test_a_folder_every_node_sees_is_shared(tmp_path, local_ray) -> None:
    assert cache.shared_everywhere(tmp_path / "c")
    assert not list((tmp_path / "c").iterdir())  # the marker is gone
