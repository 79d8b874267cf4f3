"""The simulator: determinism, shapes of the presets, physiology, and learnable structure."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal as sps
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from emgcore.data.simulator import PRESETS, preset, simulate, simulate_recording
from emgcore.preprocessing import Pipeline


def test_deterministic_for_a_seed() -> None:
    cfg = preset("db8-like", duration_s=2.0)
    a, b = simulate_recording(cfg, 1, 0), simulate_recording(cfg, 1, 0)
    np.testing.assert_array_equal(a.emg, b.emg)
    np.testing.assert_array_equal(a.kinematics, b.kinematics)
    assert a.fingerprint == b.fingerprint
    c = simulate_recording(cfg.replace(seed=1), 1, 0)
    assert c.fingerprint != a.fingerprint and not np.allclose(c.emg, a.emg)
    # one recording does not depend on which others were generated
    np.testing.assert_array_equal(simulate(cfg, subjects=[1])[0].emg, a.emg)


@pytest.mark.parametrize(
    ("name", "channels", "kind", "fs", "joints"),
    [
        ("db8-like", 16, "ring", 2000, 5),
        ("emg2pose-like", 16, "ring", 2000, 20),
        ("grid110", 110, "grid", 2000, 20),
        ("myo-like", 8, "ring", 200, 5),
        ("flexemg-like", 64, "grid", 1000, 5),
    ],
)
def test_presets_have_the_shape_of_their_dataset(name, channels, kind, fs, joints) -> None:
    cfg = preset(name, duration_s=1.0)
    rec = simulate_recording(cfg, 0, 0, cfg.stages[0] if cfg.stages else None)
    assert rec.n_channels == channels and rec.layout.kind == kind and rec.fs == fs
    assert rec.kinematics.shape == (int(fs), joints) and rec.kinematics_unit == "deg"
    assert rec.emg.dtype == np.float32
    rms = np.sqrt((rec.emg.astype(np.float64) ** 2).mean())
    assert 5e-6 < rms < 5e-4  # tens of microvolts, like surface EMG in volts


def test_emg2pose_like_recordings_are_stage_labelled() -> None:
    cfg = preset("emg2pose-like", duration_s=1.0, n_subjects=1, sessions=("s0",))
    recs = simulate(cfg)
    assert [r.meta["stage"] for r in recs] == list(cfg.stages)
    assert len({r.fingerprint for r in recs}) == len(recs)


def test_spectrum_is_physiological() -> None:
    """Surface EMG power sits in ~20-250 Hz; mains shows as a line at 50 Hz."""
    rec = simulate_recording(preset("db8-like", duration_s=20.0), 0, 0)
    f, p = sps.welch(rec.emg.astype(np.float64), fs=rec.fs, nperseg=2048, axis=0)
    p = p.mean(axis=1)
    band = p[(f >= 20) & (f <= 250)].sum() / p[(f >= 2) & (f <= 1000)].sum()
    assert band > 0.5
    peak = p[np.argmin(np.abs(f - 50))]
    neighbours = np.median(p[(f > 35) & (f < 45)])
    assert peak > 3 * neighbours


def test_more_flexion_means_more_flexor_emg() -> None:
    """Amplitude follows effort: windows with stronger finger flexion carry more EMG power."""
    rec = simulate_recording(preset("db8-like", duration_s=60.0), 0, 0)
    x = Pipeline.from_config([{"name": "bandpass"}, {"name": "notch"}]).apply(rec).emg
    power = (x.astype(np.float64) ** 2).sum(axis=1)
    flex = rec.kinematics[:, 2:].mean(axis=1)
    strong, relaxed = power[flex > 40].mean(), power[np.abs(flex) < 5].mean()
    assert strong > 3 * relaxed


def _rms_features(rec, win: int = 400, hop: int = 100):
    x = (
        Pipeline.from_config([{"name": "bandpass"}, {"name": "notch", "harmonics": 2}])
        .apply(rec)
        .emg
    )
    starts = np.arange(0, len(x) - win + 1, hop)
    w = np.lib.stride_tricks.sliding_window_view(x, win, axis=0)[starts]  # (n, C, win)
    return np.log(np.sqrt((w.astype(np.float64) ** 2).mean(-1)) + 1e-9), rec.kinematics[
        starts + win - 1
    ]


def test_learnable_structure_and_electrode_shift() -> None:
    """A ridge decoder on RMS features predicts a held-out segment's kinematics (R^2 > 0.5), and
    does measurably worse once the electrode band is rotated and shifted."""
    cfg = preset("db8-like", duration_s=120.0)
    scores, shifted_scores = [], []
    for subject in (0, 1):
        x, y = _rms_features(simulate_recording(cfg, subject, 0))
        k = int(0.7 * len(x))
        model = Ridge(alpha=1.0).fit(x[:k], y[:k])
        scores.append(r2_score(y[k:], model.predict(x[k:])))
        xs, ys = _rms_features(simulate_recording(cfg, subject, 0, band_offset=(20.0, 10.0)))
        shifted_scores.append(r2_score(ys[k:], model.predict(xs[k:])))
    assert min(scores) > 0.5, scores
    assert max(s - t for s, t in zip(scores, shifted_scores, strict=True)) > 0.15
    assert all(t < s - 0.05 for s, t in zip(scores, shifted_scores, strict=True))


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(KeyError, match="db8-like"):
        preset("db9-like")
    assert set(PRESETS) >= {"db8-like", "emg2pose-like", "grid110"}
