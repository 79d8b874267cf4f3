"""The recording type: validation on construction, layouts, lazy arrays."""

from __future__ import annotations

import numpy as np
import pytest

from emgcore.errors import InvalidValueError, ShapeError
from emgcore.recording import VOLTS_PER_UNIT, ChannelLayout, LazyArray, Recording


def _rec(**kw) -> Recording:
    base = {
        "emg": np.zeros((100, 4), np.float32),
        "fs": 1000.0,
        "layout": ChannelLayout.ring(4),
        "subject": "u",
        "session": "s",
        "source": "x.h5",
    }
    return Recording(**(base | kw))


@pytest.mark.parametrize(
    ("kw", "error", "field"),
    [
        ({"emg": np.zeros(100)}, ShapeError, "emg"),
        ({"emg": np.zeros((100, 5))}, ShapeError, "emg"),
        ({"emg": np.full((100, 4), np.nan)}, InvalidValueError, "emg"),
        ({"fs": 0.0}, InvalidValueError, "fs"),
        ({"kinematics": np.zeros((99, 3))}, ShapeError, "kinematics"),
        ({"kinematics": np.zeros((100, 3)), "joint_names": ("a", "b")}, ShapeError, "joint_names"),
        ({"kinematics": np.full((100, 2), np.inf)}, InvalidValueError, "kinematics"),
        ({"labels": {"gesture": np.zeros(50)}}, ShapeError, "labels.gesture"),
        ({"labels": {"gesture": np.full(100, 0.5)}}, InvalidValueError, "labels.gesture"),
        ({"valid": np.ones(3, bool)}, ShapeError, "valid"),
        ({"emg_unit": "microvolts"}, InvalidValueError, "emg_unit"),
        ({"emg_unit": ""}, InvalidValueError, "emg_unit"),
        ({"channel_names": ("a", "b", "c")}, ShapeError, "channel_names"),
        ({"channel_names": ("a", "b", "a", "c")}, InvalidValueError, "channel_names"),
        ({"channel_names": ("a", "", "b", "c")}, InvalidValueError, "channel_names"),
        ({"channel_names": "abcd"}, InvalidValueError, "channel_names"),
    ],
)
def test_validation_names_source_and_field(kw, error, field) -> None:
    with pytest.raises(error) as info:
        _rec(**kw)
    assert str(info.value).startswith(f"x.h5: field '{field}'")


def test_valid_recording_and_fingerprint() -> None:
    r = _rec(emg=np.arange(400, dtype=np.float64).reshape(100, 4))
    assert r.emg.dtype == np.float32 and r.duration_s == 0.1
    assert r.fingerprint == _rec(emg=np.arange(400).reshape(100, 4)).fingerprint
    assert r.fingerprint != _rec().fingerprint


def test_ring_wraps_and_grid_is_four_connected() -> None:
    assert ChannelLayout.ring(8).neighbours()[0] == (1, 7)
    g = ChannelLayout.make_grid(3, 2)  # rows along the arm
    assert g.neighbours()[0] == (1, 2) and g.neighbours()[3] == (1, 2, 5)
    assert ChannelLayout.from_dict(g.to_dict()) == g
    with pytest.raises(ShapeError, match=r"layout.grid"):
        ChannelLayout.make_grid(2, 2, index=np.array([[0, 1], [1, 2]]))


def test_lazy_array_slices_and_checks_what_it_reads() -> None:
    data = np.arange(40, dtype=np.float32).reshape(10, 4)
    data[7, 1] = np.nan
    calls = []

    def reader(a: int, b: int) -> np.ndarray:
        calls.append((a, b))
        return data[a:b]

    lazy = LazyArray(reader, data.shape, np.float32, source="f.h5", field="emg")
    np.testing.assert_array_equal(lazy[2:5, 1], data[2:5, 1])
    assert calls == [(2, 5)]
    with pytest.raises(InvalidValueError, match=r"f.h5: field 'emg': NaN or Inf at sample 7"):
        lazy[5:9]
    rec = _rec(emg=lazy, layout=ChannelLayout.ring(4), fingerprint="abc")
    assert rec.is_lazy and rec.n_samples == 10
    with pytest.raises(InvalidValueError, match=r"explicit fingerprint"):
        _rec(emg=lazy)


def test_require_samples_names_the_recording_and_the_minimum() -> None:
    from emgcore.recording import require_samples

    rec = _rec()
    require_samples(rec, 100, "one window")  # exactly enough
    with pytest.raises(ShapeError) as info:
        require_samples(rec, 101, "one window")
    assert str(info.value) == (
        "x.h5: field 'emg': 100 samples (0.1 s at 1000 Hz), but one window needs at least 101 "
        "samples (0.101 s)"
    )


def test_emg_unit_and_channel_names() -> None:
    r = _rec()
    assert r.emg_unit == "a.u." and r.channel_names == ()  # not stated: unknown scale, unnamed
    assert r.channel_labels == ("ch0", "ch1", "ch2", "ch3")
    named = _rec(emg_unit="µV", channel_names=["RF", "VL", "VM", "BF"])
    assert named.emg_unit == "uV" and named.channel_names == ("RF", "VL", "VM", "BF")
    assert named.channel_labels == named.channel_names
    head = named.header()
    assert head["emg_unit"] == "uV" and head["channel_names"] == ["RF", "VL", "VM", "BF"]
    assert VOLTS_PER_UNIT[_rec(emg_unit="mV").emg_unit] == 1e-3
    with pytest.raises(InvalidValueError) as info:
        _rec(emg_unit="volts")
    assert str(info.value) == (
        "x.h5: field 'emg_unit': unknown EMG unit 'volts'; expected one of V, mV, uV, a.u."
    )


def test_unit_and_names_count_in_the_fingerprint_only_when_given() -> None:
    base = _rec(emg=np.arange(400).reshape(100, 4))
    # recordings made before the fields existed keep their fingerprint (and cached copies)
    assert base.fingerprint == _rec(emg=np.arange(400).reshape(100, 4), emg_unit="a.u.").fingerprint
    fps = {
        base.fingerprint,
        _rec(emg=np.arange(400).reshape(100, 4), emg_unit="mV").fingerprint,
        _rec(emg=np.arange(400).reshape(100, 4), emg_unit="uV").fingerprint,
        _rec(emg=np.arange(400).reshape(100, 4), channel_names=("a", "b", "c", "d")).fingerprint,
    }
    assert len(fps) == 4


def test_custom_layout_anywhere_on_a_limb() -> None:
    thigh = ChannelLayout.custom([[0, 250], [-90, 220], [90, 230], [200, 260]])
    assert thigh.kind == "custom" and thigh.n_channels == 4 and thigh.grid is None
    assert thigh.neighbours() == [(), (), (), ()]  # no adjacency, nothing wraps
    assert ChannelLayout.from_dict(thigh.to_dict()) == thigh
    assert thigh.positions_mm.dtype == np.float64
    with pytest.raises(ShapeError, match=r"field 'layout.positions': positions must be \(C, 2\)"):
        ChannelLayout.custom([[0, 1, 2]])
    with pytest.raises(InvalidValueError) as info:
        ChannelLayout("thigh", np.zeros((4, 2)))  # type: ignore[arg-type]
    assert str(info.value) == (
        "field 'layout.kind': unknown layout kind 'thigh'; expected one of ring, grid, custom"
    )
