"""Paired windows and Table 1's gesture splits, on the emg2pose-like simulator, on real-format
emg2pose files (metadata.csv decides the split there) and on NinaPro DB2/DB7-format files."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from emgcore.config import load_yaml, resolve_config
from emgcore.data import open_dataset
from emgcore.errors import InvalidValueError, MissingFieldError
from emgcore.gestures import (
    IN_DIST,
    NINAPRO_IN_DIST,
    NINAPRO_JOINTS,
    NINAPRO_UNSEEN,
    ROLES,
    UNSEEN,
    GestureConfig,
    gesture_splits,
    recording_id,
    rotate_channels,
    windows,
)
from emgcore.methods.posealign import PoseAlignConfig


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


def test_val_subsets_hold_only_held_out_users_as_eval_does(recordings) -> None:
    """emg2pose's val split (like its test split) also holds training users' recordings of
    held-out stages (metadata.csv: held_out_user False): they feed neither tune nor
    probe_train_unseen, as they feed no eval; nor does any user with a train recording."""
    split = {"s00": "train", "s01": "val", "s02": "val", "s03": "val", "s04": "test"}
    recs = [r for r in recordings if r.subject in split]
    for r in recs:
        r.meta["split"] = split[r.subject]
        r.meta["held_out_user"] = r.subject != "s03"  # a training user's val recordings
    unseen = {st for stages in UNSEEN.values() for st in stages}
    leak = next(r for r in recordings if r.subject == "s05" and r.meta["stage"] in unseen)
    leak.meta.update(split="val", held_out_user=True)  # metadata says held out, but ...
    train_too = recordings[0].replace(meta={**leak.meta, "split": "train"}, subject="s05")
    try:
        s = gesture_splits([*recs, leak, train_too], GestureConfig(tune_users=1))
        assert set(s["tune"].user) == {"s01"} and set(s["probe_train_unseen"].user) == {"s02"}
        assert set(s["eval"].user) == {"s04"}
    finally:
        for r in [*recs, leak]:
            del r.meta["split"], r.meta["held_out_user"]


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


def test_channel_rotation_leaves_electrodes_off_the_ring_in_place() -> None:
    """NinaPro DB2/DB7: electrodes 1-8 ring the forearm, 9-12 sit on muscle spots; rotation
    rolls the 8 among themselves and never moves the other 4 (nor draws them into the ring)."""
    x = torch.arange(12.0).expand(60, 3, 12).clone()
    ring = tuple(range(8))
    out = rotate_channels(x, torch.Generator().manual_seed(0), ring=ring)
    seen = set()
    for b in range(60):
        assert torch.equal(out[b, :, 8:], x[b, :, 8:])
        (shift,) = [s for s in (-1, 0, 1) if torch.equal(out[b, :, :8], x[b, :, :8].roll(s, -1))]
        seen.add(shift)
    assert seen == {-1, 0, 1}
    # no ring given: every channel is on it (emg2pose's band), as before
    same = rotate_channels(x, torch.Generator().manual_seed(0))
    assert torch.equal(same, rotate_channels(x, torch.Generator().manual_seed(0), ring=range(12)))


def test_windows_know_which_electrodes_ring_the_arm(recordings, ninapro) -> None:
    assert windows(recordings[:1], GestureConfig()).ring == tuple(range(16))  # the band
    db7 = next(r for r in ninapro if r.meta["database"] == "db7")
    assert db7.layout.kind != "ring" and db7.layout.n_channels == 12
    cfg = GestureConfig(benchmark="ninapro", joints=NINAPRO_JOINTS, mains_hz=50.0)
    assert windows([db7], cfg).ring == tuple(range(8))


def test_training_rotates_only_the_ring(monkeypatch) -> None:
    """The training loops pass the ring on: CPEP here (MAE, PoseT, EMBridge share the code)."""
    import emgcore.models.cpep as cpep
    from emgcore.models.cpep import CPEPConfig, train_cpep
    from emgcore.models.mae import MAE, MAEConfig

    calls = []

    def spy(x, g, max_shift=1, ring=None, parallel=None):
        out = rotate_channels(x, g, max_shift, ring, parallel)
        calls.append(torch.equal(out[..., 8:], x[..., 8:]))
        return out

    monkeypatch.setattr(cpep, "rotate_channels", spy)
    small = {"dim": 16, "depth": 1, "decoder_depth": 1, "heads": 2}
    emg, pose = MAE(MAEConfig(patch=10, **small), 12, 40), MAE(MAEConfig(patch=20, **small), 3, 40)
    x = torch.randn(8, 40, 12, generator=torch.Generator().manual_seed(0))
    p = torch.randn(8, 40, 3, generator=torch.Generator().manual_seed(1))
    cfg = CPEPConfig(epochs=1, batch_size=4)
    train_cpep(cfg, emg.encoder, pose.encoder, x, p, ring=tuple(range(8)))
    assert len(calls) == 2 and all(calls)


def test_pretrain_fraction_keeps_a_share_of_each_stages_sessions(recordings) -> None:
    full = gesture_splits(recordings, GestureConfig(tune_users=1))["pretrain"]
    half = gesture_splits(recordings, GestureConfig(tune_users=1, pretrain_fraction=0.5))
    part = half["pretrain"]
    for stage in set(full.stage):  # 2 users x 2 sessions = 4 recordings per stage -> 2 kept
        assert (part.stage == stage).sum() * 2 == (full.stage == stage).sum()
    assert len(half["eval"]) == len(gesture_splits(recordings, GestureConfig(tune_users=1))["eval"])
    with pytest.raises(ValueError, match="pretrain_fraction"):
        GestureConfig(pretrain_fraction=0.0)


# -- NinaPro DB2 -> DB7 ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ninapro(ninapro_root):
    return open_dataset(ninapro_root)


@pytest.fixture(scope="module")
def ninapro_cfg() -> GestureConfig:
    return load_yaml(PoseAlignConfig, resolve_config("posealign-ninapro")).gestures


def test_ninapro_preset_is_the_papers_split(ninapro_cfg) -> None:
    assert ninapro_cfg.benchmark == "ninapro" and ninapro_cfg.mains_hz == 50.0
    assert dict(ninapro_cfg.in_dist) == NINAPRO_IN_DIST
    assert dict(ninapro_cfg.unseen) == NINAPRO_UNSEEN
    assert ninapro_cfg.joints == NINAPRO_JOINTS and len(NINAPRO_JOINTS) == 18


def test_ninapro_windows_lie_inside_one_repetition_of_one_movement(ninapro, ninapro_cfg) -> None:
    rec = next(r for r in ninapro if r.meta["database"] == "db2" and r.meta["exercise"] == 2)
    w = windows([rec], ninapro_cfg)
    g, rep = rec.labels["gesture"], rec.labels["repetition"]
    names = rec.label_names["gesture"]
    # the reference: walk the runs of one label and one repetition, windows back to back
    n = round(ninapro_cfg.window_s * rec.fs)
    bounds = np.r_[0, np.flatnonzero(np.diff(g) | np.diff(rep)) + 1, len(g)]
    starts = [s for a, b in itertools.pairwise(bounds) for s in range(a, b - n + 1, n)]
    assert len(starts) == len(w) > 0
    assert [names[g[s]] for s in starts] == list(w.stage)
    assert list(w.session) == [f"A1/rep{rep[s]}" for s in starts]
    # cut after filtering the whole recording, then instance-normalised per window
    pipe = ninapro_cfg.pipeline()
    filtered = np.asarray(pipe.apply(rec).emg, np.float32)
    want = pipe.apply_windows(np.stack([filtered[s : s + n] for s in starts[:3]]))
    np.testing.assert_allclose(w.emg[:3].numpy(), want, atol=1e-5)
    assert {s[0] for s in w.stage} <= {"C", "r"}  # exercise C's grasps, or rest
    # the pose: the 18 shared sensors, as recorded (gesture_splits scales them, see below)
    assert w.pose.shape[2] == 18


def test_ninapro_recordings_go_through_the_preprocessing_cache(ninapro, ninapro_cfg, tmp_path):
    """MATLAB files load column-major; the cache stores and maps them back row-major."""
    from emgcore.windows import RecordingCache

    recs = ninapro[:2]
    direct = windows(recs, ninapro_cfg)
    cache = RecordingCache(tmp_path / "cache")
    for _ in range(2):  # the second pass reads the memory-mapped copies
        cached = windows(recs, ninapro_cfg, cache)
        assert torch.allclose(cached.emg, direct.emg, atol=1e-5)
        assert torch.allclose(cached.pose, direct.pose) and list(cached.stage) == list(direct.stage)


def test_ninapro_splits_follow_the_paper(ninapro, ninapro_cfg) -> None:
    s = gesture_splits(ninapro, ninapro_cfg)
    pre, tune, ev = s["pretrain"], s["tune"], s["eval"]
    assert set(pre.user) == {"S1", "S2"} and len(pre) > 0  # DB2's subjects
    assert not set(pre.stage) & {"B1", "B5", "B10", "B15"}  # unseen movements left out
    assert {"C1", "C5", "C10", "C15", "B2", "D1"} <= set(pre.stage)  # the rest is kept
    db7_users = {f"S{i}" for i in range(1, 6)}
    assert len(set(tune.user)) == 3 and set(tune.user) < db7_users
    probe_users = set(s["probe_train_in"].user) | set(s["probe_train_unseen"].user)
    assert not set(tune.user) & (probe_users | set(ev.user))
    # within each movement, sessions (subject x repetition) go to probe-training or to eval
    for role, classes in (
        ("probe_train_in", NINAPRO_IN_DIST),
        ("probe_train_unseen", NINAPRO_UNSEEN),
    ):
        probe = s[role]
        assert set(probe.stage) == set(classes)
        assert not {*zip(probe.user, probe.session, probe.stage, strict=True)} & {
            *zip(ev.user, ev.session, ev.stage, strict=True)
        }
    assert set(ev.stage) == set(NINAPRO_IN_DIST) | set(NINAPRO_UNSEEN)
    assert set(ev.labels(NINAPRO_IN_DIST)) == {-1, 0, 1, 2, 3}
    # each recording's glove channels are standardised (DB2's glove reads 1.3 x + 20), by its
    # samples outside the tune and eval runs: the eval windows come out near, not exactly at, 0
    for role in ("pretrain", "eval"):
        assert abs(float(s[role].pose.mean())) < 1.0 and float(s[role].pose.std()) < 5.0


def test_ninapro_pose_scaling_never_reads_the_evaluation_windows(
    ninapro, ninapro_cfg, recordings
) -> None:
    """Shift the glove of one DB7 recording's eval repetitions by 1000: only those eval windows
    may change. Standardising over the whole recording would move every window of it (its
    probe-training windows too), the evaluation data setting everyone's scale."""
    s = gesture_splits(ninapro, ninapro_cfg)
    ev = s["eval"]
    rec_id = ev.recording[0]
    rec = next(r for r in ninapro if recording_id(r) == rec_id)
    names = np.asarray(rec.label_names["gesture"])[rec.labels["gesture"]]
    rep = rec.labels["repetition"]
    hit = np.zeros(rec.n_samples, bool)
    for stage, session, r in zip(ev.stage, ev.session, ev.recording, strict=True):
        if r == rec_id:
            hit |= (names == stage) & (rep == int(session.split("/rep")[1]))
    kin = np.array(rec.kinematics, copy=True)
    kin[hit] += 1000.0
    moved = rec.replace(kinematics=kin)  # same fingerprint: the same recording id
    s2 = gesture_splits([moved if r is rec else r for r in ninapro], ninapro_cfg)
    probe = [s[r].recording == rec_id for r in ("probe_train_in", "probe_train_unseen")]
    assert any(p.any() for p in probe)  # the recording has probe windows the shift must spare
    for role in ("pretrain", "probe_train_in", "probe_train_unseen", "tune"):
        assert torch.equal(s2[role].pose, s[role].pose), role
    here = ev.recording == rec_id
    assert torch.equal(s2["eval"].pose[~here], ev.pose[~here])
    assert (s2["eval"].pose[here] - ev.pose[here]).min() > 1.0  # moved, by 1000 / its std
    # emg2pose puts each recording in one subset: an eval recording has nothing to scale by
    with pytest.raises(InvalidValueError, match=r"pose_norm: none"):
        gesture_splits(recordings, GestureConfig(tune_users=1, pose_norm="recording"))


def test_ninapro_benchmark_errors_name_the_fix(ninapro, ninapro_cfg) -> None:
    from dataclasses import replace

    db7 = [r for r in ninapro if r.meta["database"] == "db7"]
    with pytest.raises(InvalidValueError, match=r"pre-trains on DB2 and evaluates on DB7"):
        gesture_splits(db7, ninapro_cfg)
    with pytest.raises(MissingFieldError, match=r"gestures.benchmark: ninapro") as info:
        gesture_splits(ninapro, GestureConfig())
    assert "S1_E1_A1.mat" in str(info.value)
    with pytest.raises(MissingFieldError, match=r"no joint\(s\) \['index_dip'\]") as info:
        gesture_splits(ninapro, replace(ninapro_cfg, joints=("index_mcp", "index_dip")))
    assert "DB7" in str(info.value)
    with pytest.raises(InvalidValueError, match=r"22 pose channels where earlier recordings"):
        windows(db7[:1] + ninapro[:1], replace(ninapro_cfg, joints=()))
    with pytest.raises(InvalidValueError, match=r"5 DB7 subjects cannot give 5 tune"):
        gesture_splits(ninapro, replace(ninapro_cfg, tune_users=5))
