"""KinEMbed feature extraction (16 features x 16 channels) against libemg, one core.

Target: >= 20x libemg's windows/s on the same windows. Baseline in the same run: libemg 2.0.3's
FeatureExtractor computing the same quantities (MAV RMS WL VAR ZC SSC WAMP MOB COMP MNF DFTR, plus
its MDF loop, transcribed because it raises under numpy 2) on pre-cut windows; we time ours from
the continuous signal, cutting included.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from _common import median_time, pin_one_core

pin_one_core()

import numpy as np  # noqa: E402

from emgcore.data import preset, simulate_recording  # noqa: E402
from emgcore.features import FeatureConfig, extract, fit_thresholds, window_starts  # noqa: E402
from emgcore.preprocessing import DEFAULT_EMG, Pipeline  # noqa: E402
from tests.reference import libemg_feature_extractor, libemg_mdf  # noqa: E402

FS, SECONDS = 2000.0, 120.0
LIBEMG = ["MAV", "RMS", "WL", "VAR", "ZC", "SSC", "WAMP", "MOB", "COMP", "MNF", "DFTR"]


def main() -> None:
    rec = simulate_recording(preset("db8-like", duration_s=SECONDS), 0, 0)
    emg = np.asarray(Pipeline.from_config(DEFAULT_EMG).apply(rec).emg)
    cfg = FeatureConfig()
    th = fit_thresholds([emg], cfg)
    length, stride = cfg.lengths(FS)
    starts = window_starts(len(emg), length, stride)
    windows = np.stack([emg[s : s + length].T for s in starts]).astype(np.float64)
    fe = libemg_feature_extractor()
    params = {
        "SSC_threshold": float(th.ssc.mean()),
        "WAMP_threshold": float(th.wamp.mean()),
        "MNF_fs": FS,
        "DFTR_fs": FS,
    }

    def ours() -> None:
        extract(emg, FS, starts, length, th)

    def libemg() -> None:
        fe.extract_features(LIBEMG, windows, params)
        libemg_mdf(windows, FS)

    t_ours, t_lib = median_time(ours, 7), median_time(libemg, 3)
    n = len(starts)
    print(
        f"features: {n} windows of {length} x {emg.shape[1]} ch ({SECONDS:g} s @ {FS:g} Hz), 1 core"
    )
    print(f"  emgcore.features  {t_ours * 1e3:8.1f} ms = {n / t_ours:9.0f} windows/s")
    print(f"  libemg 2.0.3      {t_lib * 1e3:8.1f} ms = {n / t_lib:9.0f} windows/s")
    print(f"  ratio libemg/ours {t_lib / t_ours:.1f}x (target >= 20x)")
    sys.exit(0 if t_lib / t_ours >= 20 else 1)


if __name__ == "__main__":
    main()
