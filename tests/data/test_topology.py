"""AEMG's calibration (emgcore.topology): channels mapped by electrode position onto the common
16-electrode ring, with the spatial condition."""

from __future__ import annotations

import numpy as np
import pytest

from emgcore.errors import InvalidValueError
from emgcore.recording import ChannelLayout
from emgcore.topology import calibrate, topology_map


def test_a_16_ring_maps_onto_itself():
    w, pos = topology_map(ChannelLayout.ring(16))
    np.testing.assert_allclose(w.sum(1), 1, rtol=1e-6)
    assert (w.argmax(1) == np.arange(16)).all() and w.max(1).min() > 0.5
    np.testing.assert_allclose(pos[:, 3], 0, atol=1e-6)  # an electrode on every target
    phi = 2 * np.pi * np.arange(16) / 16
    angle = np.arctan2(pos[:, 1], pos[:, 0])
    np.testing.assert_allclose(np.cos(angle - phi), 1, atol=1e-6)  # sources centred on phi
    assert 0.9 < np.hypot(pos[:, 0], pos[:, 1]).min() < 1  # and close together


def test_an_8_ring_interpolates_the_targets_between_its_electrodes():
    w, pos = topology_map(ChannelLayout.ring(8))
    # even targets sit on electrodes, odd ones halfway between two: equal weights
    assert (w[0::2].argmax(1) == np.arange(8)).all()
    for k in range(1, 16, 2):
        a, b = (k - 1) // 2, ((k + 1) // 2) % 8
        assert w[k, a] == pytest.approx(w[k, b], rel=1e-5) and w[k, a] + w[k, b] > 0.9
    np.testing.assert_allclose(pos[1::2, 3], 1 / 8, rtol=1e-5)  # 22.5 degrees = pi / 8 away


def test_a_rotated_ring_moves_its_weights_not_its_signal():
    """Channel order is not position: the same electrodes listed in another order give the same
    mapped EMG (the released code's index mapping would not)."""
    ring = ChannelLayout.ring(8)
    perm = np.random.default_rng(0).permutation(8)
    shuffled = ChannelLayout.custom(ring.positions_mm[perm])
    shuffled = ChannelLayout("ring", shuffled.positions_mm, ring.circumference_mm)
    emg = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32)
    w1, _ = topology_map(ring)
    w2, _ = topology_map(shuffled)
    np.testing.assert_allclose(emg @ w1.T, emg[:, perm] @ w2.T, rtol=1e-5, atol=1e-6)


def test_a_grid_averages_each_column_and_marks_the_uncovered_arc():
    grid = ChannelLayout.make_grid(4, 16, pitch_mm=10.0)  # flexemg's 16 columns, 4 rows
    w, pos = topology_map(grid)
    col = grid.positions_mm[:, 0]
    # the four electrodes of a column (one arc) weigh the same for every target
    for c in range(16):
        same = np.flatnonzero(col == c * 10.0)
        np.testing.assert_allclose(w[:, same], w[:, same[:1]].repeat(4, 1), rtol=1e-5)
    assert pos[:, 2].max() == pytest.approx(np.std([0, 10, 20, 30]) / 100, rel=1e-4)
    # 150 mm of a 260 mm forearm: targets beyond the grid are far from any electrode
    covered = pos[:, 3] < 0.05
    assert 6 <= covered.sum() <= 11 and pos[~covered, 3].max() > 0.2


def test_calibrate_resamples_and_maps():
    from emgcore.data.simulator import preset, simulate_recording

    rec = simulate_recording(preset("flexemg-like", duration_s=2.0), 0, 0)
    emg, pos = calibrate(rec)
    assert emg.shape == (400, 16) and emg.dtype == np.float32 and pos.shape == (16, 4)
    with pytest.raises(InvalidValueError):
        topology_map(rec.layout, 0)


def test_sources_that_cancel_give_a_zero_resultant_not_noise():
    two = ChannelLayout.ring(2)  # electrodes at 0 and 180 degrees
    _, pos = topology_map(two)
    np.testing.assert_allclose(pos[4, :2], 0, atol=1e-6)  # 90 degrees: both equally far
