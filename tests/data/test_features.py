"""KinEMbed's 16 features per channel, against libemg's FeatureExtractor and direct definitions."""

from __future__ import annotations

import numpy as np
import pytest

from emgcore.data import preset, simulate_recording
from emgcore.errors import ShapeError
from emgcore.features import (
    FEATURES,
    FeatureConfig,
    Thresholds,
    extract,
    fit_thresholds,
    recording_features,
    window_starts,
)
from emgcore.preprocessing import DEFAULT_EMG, Pipeline
from tests.reference import libemg_feature_extractor, libemg_mdf

FS = 2000.0


@pytest.fixture(scope="module")
def emg() -> np.ndarray:
    rec = simulate_recording(preset("db8-like", duration_s=20.0), 0, 0)
    return np.asarray(Pipeline.from_config(DEFAULT_EMG).apply(rec).emg)  # (T, 16) volts


@pytest.fixture(scope="module")
def computed(emg):
    cfg = FeatureConfig(zc_k=0.0, ssc_k=0.3, wamp_k=0.2)
    th = fit_thresholds([emg], cfg)
    length, stride = cfg.lengths(FS)
    starts = window_starts(len(emg), length, stride)
    ours = extract(emg, FS, starts, length, th).reshape(len(starts), emg.shape[1], len(FEATURES))
    windows = np.stack([emg[s : s + length].T for s in starts]).astype(np.float64)  # (N, C, L)
    return ours, windows, th


def col(ours: np.ndarray, name: str) -> np.ndarray:
    return ours[..., FEATURES.index(name)]


def assert_rel(a, b, rtol=1e-5) -> None:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    err = np.abs(a - b) / np.maximum(np.abs(b), 1e-300)
    assert err.max() <= rtol, f"max relative error {err.max():.2e} > {rtol:.0e}"


def test_agrees_with_libemg_where_the_definitions_agree(computed) -> None:
    ours, w, th = computed
    fe = libemg_feature_extractor()
    assert_rel(col(ours, "mav"), fe.getMAVfeat(w))
    assert_rel(col(ours, "rms"), fe.getRMSfeat(w))
    assert_rel(col(ours, "wl"), fe.getWLfeat(w))
    assert_rel(np.exp(col(ours, "logvar")), fe.getVARfeat(w))
    assert_rel(col(ours, "zc"), fe.getZCfeat(w), rtol=0)  # zc_k = 0: libemg has no threshold
    assert_rel(col(ours, "mnf"), fe.getMNFfeat(w, MNF_fs=FS))
    for c in (0, 7, 15):  # libemg takes one scalar threshold; ours are per channel
        ssc = fe.getSSCfeat(w, SSC_threshold=float(th.ssc[c]))
        wamp = fe.getWAMPfeat(w, WAMP_threshold=float(th.wamp[c]))
        assert_rel(col(ours, "ssc")[:, c], ssc[:, c], rtol=0)
        assert_rel(col(ours, "wamp")[:, c], wamp[:, c], rtol=0)
    # bands: libemg's DFTR reports the first five of its six bins to the power 2/3, band-major
    dftr = fe.getDFTRfeat(w, DFTR_fs=FS)[:, : 5 * w.shape[1]]
    dftr = dftr.reshape(len(w), 5, w.shape[1]).transpose(0, 2, 1)
    bands = ours[..., FEATURES.index("band1") :]
    assert_rel(bands ** (2 / 3), dftr)
    # the features must be informative, not constant: a wrong axis would flatten them
    assert col(ours, "zc").std() > 1 and col(ours, "wamp").std() > 1


def test_median_frequency_matches_libemgs_definition(computed) -> None:
    """libemg's own getMDFfeat raises under numpy >= 2; its loop is transcribed in reference.py."""
    ours, w, _ = computed
    np.testing.assert_array_equal(col(ours, "mdf"), libemg_mdf(w, FS))


def test_hjorth_parameters_follow_their_definitions(computed) -> None:
    """Where we differ from libemg on purpose: variances, and complexity per window."""
    ours, w, _ = computed
    dx, ddx = np.diff(w, axis=2), np.diff(w, n=2, axis=2)
    mobility = np.sqrt(dx.var(axis=2) / w.var(axis=2))
    complexity = np.sqrt(ddx.var(axis=2) / dx.var(axis=2)) / mobility
    assert_rel(col(ours, "mobility"), mobility, rtol=2e-5)
    assert_rel(col(ours, "complexity"), complexity, rtol=2e-5)


def test_thresholds_scale_with_the_signal_units(emg) -> None:
    """The same signal in millivolts instead of volts gives the same counts and frequencies."""
    cfg = FeatureConfig(zc_k=0.5, ssc_k=0.5, wamp_k=0.5)
    a, _ = recording_features(emg, FS, cfg, fit_thresholds([emg], cfg))
    b, _ = recording_features(emg * 1000, FS, cfg, fit_thresholds([emg * 1000], cfg))
    a, b = (x.reshape(len(x), -1, len(FEATURES)) for x in (a, b))
    for name in ("zc", "ssc", "wamp", "mnf", "mdf", "mobility", "complexity"):
        np.testing.assert_allclose(col(a, name), col(b, name), rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(col(b, "rms"), 1000 * col(a, "rms"), rtol=1e-5)


def test_window_grid_and_target_index() -> None:
    x = np.zeros((1000, 2), np.float32)
    cfg = FeatureConfig()  # 256 / 104 samples at 2 kHz
    feats, last = recording_features(x, FS, cfg, fit_thresholds([x], cfg))
    np.testing.assert_array_equal(last, np.arange(0, 1000 - 256 + 1, 104) + 255)
    assert feats.shape == (len(last), 2 * 16)
    assert np.isfinite(feats).all(), "a flat channel must give finite features"


def test_dc_offset_does_not_change_shape_features(emg) -> None:
    """Centring for precision must not change what the features describe."""
    th = Thresholds(*(np.zeros(emg.shape[1]),) * 3)
    starts = window_starts(len(emg), 256, 104)[:50]
    a = extract(emg, FS, starts, 256, th).reshape(50, -1, 16)
    offset = 5 * float(emg.std())  # large, yet representable next to the signal in float32
    b = extract(emg + offset, FS, starts, 256, th).reshape(50, -1, 16)
    for name in ("wl", "logvar", "ssc", "wamp", "mobility", "complexity", "band2"):
        np.testing.assert_allclose(col(a, name), col(b, name), rtol=2e-3, err_msg=name)
    # the offset itself is seen by the amplitude features
    assert (col(b, "mav") > 0.8 * offset).all()


def test_bad_threshold_shape_names_the_field(emg) -> None:
    th = Thresholds(np.zeros(3), np.zeros(16), np.zeros(16))
    with pytest.raises(ShapeError, match=r"thresholds\.zc"):
        extract(emg, FS, np.array([0]), 256, th)
