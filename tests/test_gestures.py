"""Paired windows and Table 1's gesture splits, on the emg2pose-like simulator and on real-format
emg2pose files (metadata.csv decides the split there)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emgcore.errors import InvalidValueError
from emgcore.gestures import (
    IN_DIST,
    ROLES,
    UNSEEN,
    GestureConfig,
    gesture_splits,
    rotate_channels,
    windows,
)


@pytest.fixture(scope="module")
def recordings(emg2pose_sim):
    return emg2pose_sim


@pytest.fixture(scope="module")
def splits(recordings):
    return gesture_splits(recordings, GestureConfig(tune_users=1))


def test_windows_are_two_seconds_instance_normalised_and_paired(recordings) -> None:
    w = windows(recordings[:3], GestureConfig())
    assert w.emg.shape == (6, 4000, 16) and w.pose.shape == (6, 4000, 20)
    assert torch.allclose(w.emg.mean(1), torch.zeros(6, 16), atol=1e-4)
    assert torch.allclose(w.emg.std(1, unbiased=False), torch.ones(6, 16), atol=1e-3)
    first = recordings[0]
    assert np.allclose(w.pose[1].numpy(), np.asarray(first.kinematics[4000:8000]))
    assert list(w.stage[:2]) == [first.meta["stage"]] * 2


def test_cached_preprocessing_gives_the_same_windows(recordings, tmp_path) -> None:
    from emgcore.windows import RecordingCache

    cache = RecordingCache(tmp_path / "cache")
    a = windows(recordings[:4], GestureConfig())
    b = windows(recordings[:4], GestureConfig(), cache)
    c = windows(recordings[:4], GestureConfig(), cache)  # now read back from disk
    assert len(list((tmp_path / "cache").iterdir())) == 4
    for w in (b, c):
        assert torch.allclose(w.emg, a.emg, atol=1e-5) and torch.equal(w.pose, a.pose)
        assert torch.equal(w.valid, a.valid) and list(w.stage) == list(a.stage)


def test_splits_follow_table_1(splits) -> None:
    assert set(splits) == set(ROLES)
    users = {r: set(splits[r].user) for r in ROLES}
    assert users["pretrain"] == users["probe_train_in"] == {"s00", "s01"}
    assert users["tune"] == {"s02"} and users["probe_train_unseen"] == {"s03"}
    assert users["eval"] == {"s04", "s05"}  # unseen users only
    held = GestureConfig().held_out
    assert not held & set(splits["pretrain"].stage)  # no held-out stage in pre-training
    assert (splits["probe_train_in"].labels(IN_DIST) >= 0).all()
    assert (splits["probe_train_unseen"].labels(UNSEEN) >= 0).all()
    ev = splits["eval"]
    assert set(ev.labels(IN_DIST)) == {-1, 0, 1, 2, 3}
    assert set(ev.labels(UNSEEN)) == {-1, 0, 1, 2, 3}
    assert "FingerFreeform" not in set(ev.stage)


def test_metadata_split_wins_over_the_user_rule(recordings) -> None:
    split = {"s00": "train", "s01": "val", "s02": "val", "s03": "test"}
    recs = [r for r in recordings if r.subject in split]
    for r in recs:
        r.meta["split"] = split[r.subject]
    try:
        s = gesture_splits(recs, GestureConfig(tune_users=1))
        assert set(s["pretrain"].user) == {"s00"} and set(s["eval"].user) == {"s03"}
        assert set(s["tune"].user) == {"s01"} and set(s["probe_train_unseen"].user) == {"s02"}
    finally:
        for r in recs:
            del r.meta["split"]


def test_too_few_users_is_a_clear_error(recordings) -> None:
    with pytest.raises(InvalidValueError, match="cannot give 2 val and 2 test users"):
        gesture_splits([r for r in recordings if r.subject in ("s00", "s01")])


def test_channel_rotation_rolls_the_ring_by_at_most_one() -> None:
    x = torch.arange(16.0).expand(50, 3, 16).clone()
    out = rotate_channels(x, torch.Generator().manual_seed(0))
    seen = set()
    for b in range(50):
        (shift,) = [s for s in (-1, 0, 1) if torch.equal(out[b], torch.roll(x[b], s, dims=-1))]
        seen.add(shift)
    assert seen == {-1, 0, 1}


def test_pretrain_fraction_keeps_a_share_of_each_stages_sessions(recordings) -> None:
    full = gesture_splits(recordings, GestureConfig(tune_users=1))["pretrain"]
    half = gesture_splits(recordings, GestureConfig(tune_users=1, pretrain_fraction=0.5))
    part = half["pretrain"]
    for stage in set(full.stage):  # 2 users x 2 sessions = 4 recordings per stage -> 2 kept
        assert (part.stage == stage).sum() * 2 == (full.stage == stage).sum()
    assert len(half["eval"]) == len(gesture_splits(recordings, GestureConfig(tune_users=1))["eval"])
    with pytest.raises(ValueError, match="pretrain_fraction"):
        GestureConfig(pretrain_fraction=0.0)
