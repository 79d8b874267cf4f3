"""The two real datasets in ../shared/data, read through $EMG_REAL_DATA (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.signal as sps

from emgcore.data import load_flexemg, load_myoarmband
from emgcore.preprocessing import Pipeline
from emgcore.splits import catalog, leave_one_subject_out

pytestmark = pytest.mark.realdata


def test_myoarmband_layout_labels_and_subjects(real_data: Path) -> None:
    recs = load_myoarmband(real_data / "myoarmband")
    cat = catalog(recs)
    assert len(recs) == 22 * 28 + 18 * 3 * 28  # cohorts x sessions x 28 files
    assert cat["subject"].nunique() == 40  # (cohort, person): folder names repeat across cohorts
    assert {r.n_channels for r in recs} == {8} and {r.fs for r in recs} == {200.0}
    r = recs[12]  # classe_12 of the first person: gesture 12 % 7 = 5 (hand close), cycle 1
    assert r.source.endswith("classe_12.dat")
    assert r.labels["gesture"][0] == 5 and r.labels["cycle"][0] == 1
    assert np.abs(np.concatenate([x.emg for x in recs[:50]])).max() <= 128
    assert len(leave_one_subject_out(cat)) == 40


def test_flexemg_grid_volts_and_timeline(real_data: Path) -> None:
    recs = load_flexemg(real_data / "flexemg")
    r = recs[0]
    assert len(recs) == 40 and r.n_channels == 64 and r.fs == 1000.0 and r.n_samples == 28000
    assert r.layout.kind == "grid" and r.layout.grid.shape == (16, 4)
    assert r.layout.grid[7, 0] == 0  # arraymap row 8 starts with channel 1
    g = r.labels["gesture"]
    assert (g[:5000] == 0).all() and (g[25000:] == 0).all()
    assert sorted(np.unique(g[5000:25000])) == [1, 2, 3, 4]
    rms = np.sqrt((r.emg.astype(np.float64) ** 2).mean())
    assert 1e-6 < rms < 1e-2  # volts

    # the documented drift below 10 Hz dominates the raw signal; the band-pass removes it
    def low_fraction(x: np.ndarray) -> float:
        f, p = sps.welch(x.astype(np.float64), fs=1000, nperseg=1000, axis=0)
        return p[f < 10].sum() / p.sum()

    clean = (
        Pipeline.from_config(
            [{"name": "bandpass", "low": 20, "high": 450}, {"name": "notch", "freq": 60}]
        )
        .apply(r)
        .emg
    )
    assert low_fraction(r.emg) > 0.5 > 100 * low_fraction(clean)


@pytest.mark.slow
def test_mae_learns_gestures_from_real_myoarmband_emg(real_data: Path) -> None:
    """EMG-MAE pre-trained on the pre-training cohort, linear probe leave-one-subject-out over
    the evaluation cohort, against TD4 + LDA on the same folds (issue 5's real-signal check).
    Both must be far above chance (1/7); the numbers are printed for the record."""
    from dataclasses import replace

    from emgcore.checks.realcheck import MyoCheckConfig, run

    recs = load_myoarmband(real_data / "myoarmband")
    cfg = MyoCheckConfig()
    res = run(recs, replace(cfg, mae=replace(cfg.mae, epochs=10)))
    (mae, mae_sd), (lda, lda_sd) = res["summary"]["mae_probe"], res["summary"]["td4_lda"]
    print(f"\nLOSO balanced accuracy: MAE probe {mae:.3f} +- {mae_sd:.3f}", end="")
    print(f", TD4+LDA {lda:.3f} +- {lda_sd:.3f}")
    assert len(res["mae_probe"]) == len(res["td4_lda"]) == 18
    # raw 200 Hz EMG is mostly unpredictable interference: the masked MSE falls only ~15 % (its
    # predictable part is the amplitude envelope), but it must fall
    assert res["mae_loss"][-1] < 0.95 * res["mae_loss"][0]
    assert mae > 2 / 7 and lda > 2 / 7


@pytest.mark.slow
def test_jepa_learns_from_real_flexemg_grid(real_data: Path) -> None:
    """EMG-JEPA pre-trained on flexemg's Train trials (issue 6's real-signal check): on the Test
    trials it predicts each window's own masked targets clearly better than other windows'
    targets, window by window too, while the same architecture trained on shuffled targets does
    not (compared by the own / other-windows ratio: each model's L1 is in its own targets' units,
    and the shuffled control's EMA targets shrink); a gesture probe on its tokens is far above
    chance (1/5). Numbers printed for the record (measured after issue 14's position and EMA
    fixes: L1 0.251 own vs 0.347 other windows, ratio 0.724, own better for 83% of windows; the
    shuffled-target control 0.983 and 52%; gesture probe on per-electrode pooled tokens 0.948,
    0.940 for the same encoder untrained, 0.972 for TD4: pre-training adds a little over what
    the architecture alone gives, and does not reach handcrafted features)."""
    from emgcore.checks.jepacheck import run

    res = run(load_flexemg(real_data / "flexemg"))
    loss, probe = res["loss"], res["probe"]
    print(f"\nflexemg JEPA: {loss}; probe {probe}")
    assert res["pretrain_loss"][-1] < 0.5 * res["pretrain_loss"][0]
    ratio, control = loss["jepa_own_other_ratio"], loss["shuffled_target_model_own_other_ratio"]
    assert ratio < 0.85 and control > 0.93  # measured 0.724, 0.983
    assert ratio < 0.9 * control
    assert loss["own_better_fraction"] > 0.7  # its own targets, for most windows (0.83)
    assert loss["shuffled_target_model_own_better_fraction"] < 0.62  # about a coin (0.52)
    assert probe["jepa_tokens"] > 0.85 and probe["raw_td4"] > 0.85  # measured 0.949, 0.972
    assert 0.2 < probe["random_init_tokens"] <= 1.0
