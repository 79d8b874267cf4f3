"""Time blocks that act as sessions: split_sessions, and the BYOD writer option that uses it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from emgcore.data import load_byod, split_sessions, write_byod
from emgcore.errors import InvalidValueError, ShapeError
from emgcore.recording import ChannelLayout, LazyArray, Recording
from emgcore.splits import catalog, cross_session


def _rec(t: int = 1000, fs: float = 100.0, **kw) -> Recording:
    """``t`` samples whose values are their own row index: a block's rows show where it was cut."""
    rows = np.arange(t, dtype=np.float32)
    base = {
        "emg": np.stack([rows, -rows], axis=1),
        "fs": fs,
        "layout": ChannelLayout.custom([[0.0, 100.0], [90.0, 120.0]]),
        "subject": "p01",
        "session": "walk",
        "source": "lab.h5",
        "kinematics": rows[:, None] * 0.5,
        "joint_names": ("knee_flexion",),
        "kinematics_unit": "deg",
        "labels": {"phase": np.arange(t) % 3},
        "valid": np.arange(t) % 7 != 0,
        "meta": {"task": "walk"},
        "emg_unit": "mV",
        "channel_names": ("rectus_femoris", "biceps_femoris"),
    }
    return Recording(**(base | kw))


def test_n_blocks_cover_the_recording_and_keep_every_array_aligned() -> None:
    rec = _rec(t=1001)
    blocks = split_sessions(rec, 3)
    assert [b.session for b in blocks] == ["walk-b0", "walk-b1", "walk-b2"]
    assert [(b.meta["block_start_sample"], b.meta["block_end_sample"]) for b in blocks] == [
        (0, 334),
        (334, 667),
        (667, 1001),
    ]
    assert sum(b.n_samples for b in blocks) == rec.n_samples
    for k, b in enumerate(blocks):
        a, e = b.meta["block_start_sample"], b.meta["block_end_sample"]
        np.testing.assert_array_equal(b.emg[:, 0], np.arange(a, e))
        np.testing.assert_array_equal(b.kinematics[:, 0], np.arange(a, e) * 0.5)
        np.testing.assert_array_equal(b.labels["phase"], np.arange(a, e) % 3)
        np.testing.assert_array_equal(b.valid, np.arange(a, e) % 7 != 0)
        assert b.meta == {
            "task": "walk",
            "block": k,
            "n_blocks": 3,
            "block_start_sample": a,
            "block_end_sample": e,
            "block_source_session": "walk",
            "block_source_fingerprint": rec.fingerprint,
        }
        assert (b.subject, b.source, b.emg_unit, b.fs) == ("p01", "lab.h5", "mV", 100.0)
        assert b.channel_names == rec.channel_names and b.layout == rec.layout
    assert len({b.fingerprint for b in blocks} | {rec.fingerprint}) == 4


def test_block_s_gap_and_a_dropped_tail_is_named() -> None:
    rec = _rec(t=1100)  # 11 s at 100 Hz
    with pytest.warns(UserWarning, match=r"lab.h5: split_sessions dropped the last 120 samples"):
        blocks = split_sessions(rec, block_s=3.0, gap_s=0.4)
    # 300-sample blocks with 40 samples left out between them; 980-1100 is shorter than a block
    assert [(b.meta["block_start_sample"], b.meta["block_end_sample"]) for b in blocks] == [
        (0, 300),
        (340, 640),
        (680, 980),
    ]
    np.testing.assert_array_equal(blocks[1].emg[:, 0], np.arange(340, 640))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a tail no longer than the gap is a gap: no warning
        assert len(split_sessions(_rec(t=1000), block_s=3.0, gap_s=0.4)) == 3
        assert len(split_sessions(rec, block_s=2.75)) == 4  # an exact fit drops nothing


def test_n_blocks_with_gaps_end_at_the_last_sample() -> None:
    blocks = split_sessions(_rec(t=1000), 2, gap_s=1.0)
    assert [(b.meta["block_start_sample"], b.meta["block_end_sample"]) for b in blocks] == [
        (0, 450),
        (550, 1000),
    ]


def test_blocks_of_blocks_count_rows_of_the_source() -> None:
    rec = _rec(t=1200)
    inner = split_sessions(split_sessions(rec, 2)[1], 2, names=("x", "y"))
    assert [(b.meta["block_start_sample"], b.meta["block_end_sample"]) for b in inner] == [
        (600, 900),
        (900, 1200),
    ]
    assert inner[0].meta["block_source_session"] == "walk"
    assert inner[0].meta["block_source_fingerprint"] == rec.fingerprint
    np.testing.assert_array_equal(inner[1].emg[:, 0], np.arange(900, 1200))


def test_lazy_recordings_stay_lazy_and_read_only_their_rows() -> None:
    data = np.arange(2000, dtype=np.float32).reshape(1000, 2)
    calls: list[tuple[int, int]] = []

    def reader(a: int, b: int) -> np.ndarray:
        calls.append((a, b))
        return data[a:b]

    lazy = LazyArray(reader, data.shape, np.float32, source="lab.h5", field="emg")
    rec = Recording(
        emg=lazy,
        fs=100.0,
        layout=ChannelLayout.ring(2),
        subject="p",
        session="s",
        source="lab.h5",
        fingerprint="f0",
    )
    blocks = split_sessions(rec, 4)
    assert all(b.is_lazy for b in blocks) and not calls
    np.testing.assert_array_equal(blocks[2].emg[10:12], data[510:512])
    assert calls == [(510, 512)]


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        (
            {"n_blocks": 4},
            ShapeError,
            "lab.h5: field 'emg': 300 samples (3 s at 100 Hz) cut into 4 blocks gives blocks of "
            "75 samples (0.75 s), shorter than min_block_s=1 s: use fewer blocks",
        ),
        (
            {"n_blocks": 2, "gap_s": 1.5},
            ShapeError,
            "lab.h5: field 'emg': 300 samples (3 s at 100 Hz) cut into 2 blocks with 1.5 s gaps "
            "gives blocks of 75 samples (0.75 s), shorter than min_block_s=1 s: use fewer blocks",
        ),
        (
            {"block_s": 4.0},
            ShapeError,
            "lab.h5: field 'emg': 300 samples (3 s at 100 Hz) is shorter than one block of "
            "block_s=4 s",
        ),
        (
            {"block_s": 0.5},
            ShapeError,
            "lab.h5: field 'emg': block_s=0.5 s is 50 samples at 100 Hz, shorter than "
            "min_block_s=1 s",
        ),
        (
            {},
            InvalidValueError,
            "lab.h5: field 'n_blocks': give exactly one of n_blocks or block_s (got "
            "n_blocks=None, block_s=None)",
        ),
        (
            {"n_blocks": 2, "block_s": 1.0},
            InvalidValueError,
            "lab.h5: field 'n_blocks': give exactly one of n_blocks or block_s (got "
            "n_blocks=2, block_s=1.0)",
        ),
        (
            {"n_blocks": 0},
            InvalidValueError,
            "lab.h5: field 'n_blocks': must be a whole number >= 1, got 0",
        ),
        (
            {"n_blocks": 1.5},
            InvalidValueError,
            "lab.h5: field 'n_blocks': must be a whole number >= 1, got 1.5",
        ),
        ({"block_s": -1.0}, InvalidValueError, "lab.h5: field 'block_s': must be > 0 seconds"),
        ({"n_blocks": 2, "gap_s": -1}, InvalidValueError, "lab.h5: field 'gap_s': must be >= 0"),
        (
            {"n_blocks": 2, "names": ("a", "a")},
            InvalidValueError,
            "lab.h5: field 'names': need 2 different non-empty session names, got ['a', 'a']",
        ),
        (
            {"n_blocks": 2, "names": ("a",)},
            InvalidValueError,
            "lab.h5: field 'names': need 2 different non-empty session names, got ['a']",
        ),
    ],
    ids=[
        "blocks-too-short",
        "gaps-leave-blocks-too-short",
        "recording-shorter-than-a-block",
        "block-s-below-minimum",
        "no-size",
        "two-sizes",
        "zero-blocks",
        "fractional-blocks",
        "negative-block-s",
        "negative-gap",
        "repeated-names",
        "too-few-names",
    ],
)
def test_bad_cuts_are_one_clear_error(kw, error, message) -> None:
    with pytest.raises(error) as info:
        split_sessions(_rec(t=300), **kw)
    assert str(info.value).startswith(message)


def test_one_block_is_the_whole_recording_with_the_cut_recorded() -> None:
    rec = _rec(t=300)
    (only,) = split_sessions(rec, 1, min_block_s=3.0)
    np.testing.assert_array_equal(only.emg, rec.emg)
    assert (only.meta["block_start_sample"], only.meta["block_end_sample"]) == (0, 300)


# -- through BYOD ----------------------------------------------------------------------------------
def test_write_byod_cuts_sessions_and_they_round_trip(tmp_path: Path) -> None:
    recs = [_rec(t=900, subject=s, session="day1") for s in ("p01", "p02")]
    write_byod(tmp_path, recs, n_blocks=3, names=("s1", "s2", "s3"))
    back = load_byod(tmp_path)
    assert [(r.subject, r.session) for r in back] == [
        (s, k) for s in ("p01", "p02") for k in ("s1", "s2", "s3")
    ]
    assert (tmp_path / "sessions.csv").read_text().count("\n") == 7  # header + 6 blocks
    third = back[2]
    assert third.meta["block_start_sample"] == 600 and third.meta["block_end_sample"] == 900
    assert third.meta["block_source_session"] == "day1" and third.meta["task"] == "walk"
    np.testing.assert_array_equal(np.asarray(third.emg)[:, 0], np.arange(600, 900))
    assert third.emg_unit == "mV" and third.channel_names == recs[0].channel_names
    # blocks named alike across subjects are what a cross-session split holds out
    split = cross_session(catalog(back), test_sessions=["s3"])
    assert [back[i].session for i in split["test"]] == ["s3", "s3"]
    assert len(split["train"]) == 4


def test_write_byod_refuses_short_blocks_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ShapeError, match=r"lab.h5: field 'emg': 300 samples .* cut into 10 blocks"):
        write_byod(tmp_path / "out", [_rec(t=300)], n_blocks=10)
    assert not (tmp_path / "out").exists()
