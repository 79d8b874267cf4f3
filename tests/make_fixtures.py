"""Write small files in the exact published formats of emg2pose and NinaPro.

The real datasets are not reachable here, so the loaders are tested on these. Run as a script to
write a sample set: ``python tests/make_fixtures.py OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from emgcore.data.emg2pose import METADATA_COLUMNS, write_emg2pose
from emgcore.data.simulator import preset, simulate_recording
from emgcore.recording import Recording

NINAPRO_SHAPES = {  # db -> (emg channels, glove channels or None, extra 2-D variables)
    "db8": (16, 18, {"acc": 48, "gyro": 48, "mag": 48}),
    "db2": (12, 22, {"acc": 36, "inclin": 2, "force": 6, "forcecal": 2}),
    "db7": (12, 18, {"acc": 36, "gyro": 36, "mag": 36}),
    "db4": (12, None, {"acc": 36}),
}


def emg2pose_recording(user: int, session: int, stage: str, seconds: float = 2.0) -> Recording:
    cfg = preset("emg2pose-like", duration_s=seconds, n_subjects=user + 1)
    return simulate_recording(cfg, user, session, stage)


def write_emg2pose_dataset(root: Path, n_users: int = 3, seconds: float = 2.0) -> pd.DataFrame:
    """A tiny emg2pose tree: ``<session>_<side>.hdf5`` files and ``metadata.csv``."""
    root.mkdir(parents=True, exist_ok=True)
    stages = ("HandClawGraspFlicks", "ShakaVulcanPeace")
    rows = []
    for u in range(n_users):
        for k, stage in enumerate(stages):
            rec = emg2pose_recording(u, 0, stage, seconds)
            name = f"2022-0{u + 1}-0{k + 1}-session{u}{k}_right"
            write_emg2pose(root / f"{name}.hdf5", rec)
            rows.append(
                {
                    "user": rec.subject,
                    "session": rec.session,
                    "stage": stage,
                    "side": "right",
                    "moving_hand": "right",
                    "held_out_user": u == n_users - 1,
                    "held_out_stage": stage == "ShakaVulcanPeace",
                    "split": "test" if u == n_users - 1 else "train",
                    "generalization": "user" if u == n_users - 1 else "user_stage",
                    "filename": name,
                    "start": 0.0,
                }
            )
    df = pd.DataFrame(rows, columns=list(METADATA_COLUMNS))
    df.to_csv(root / "metadata.csv", index=False)
    return df


def ninapro_arrays(db: str, n: int = 4000, seed: int = 0) -> dict[str, np.ndarray]:
    """Variables of one NinaPro file, every one 2-D and labels (N, 1), as the real files are."""
    rng = np.random.default_rng(seed)
    n_emg, n_glove, extra = NINAPRO_SHAPES[db]
    stim = np.repeat(np.arange(n // 500) % 5, 500)[:n, None].astype(np.float64)
    rep = np.repeat(np.arange(n // 500) // 5 + 1, 500)[:n, None].astype(np.float64)
    out = {
        "emg": rng.normal(0, 2e-5, (n, n_emg)),  # volts, as recorded
        "stimulus": stim.copy(),
        "restimulus": stim,
        "repetition": rep.copy(),
        "rerepetition": rep,
        "subject": np.array([[1.0]]),
        "exercise": np.array([[1.0]]),
    }
    if n_glove is not None:
        out["glove"] = rng.uniform(0, 90, (n, n_glove))
    for key, cols in extra.items():
        out[key] = rng.normal(0, 1, (n, cols))
    return out


def write_ninapro(path: Path, db: str, **arrays: np.ndarray) -> Path:
    """Write a NinaPro-format MATLAB v5 file; ``arrays`` override or add variables."""
    data = ninapro_arrays(db) | arrays
    scipy.io.savemat(path, data, format="5")
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "fixtures")
    write_emg2pose_dataset(out / "emg2pose")
    for db in NINAPRO_SHAPES:
        (out / db).mkdir(parents=True, exist_ok=True)
        write_ninapro(out / db / "S1_E1_A1.mat", db)
    print(f"wrote fixtures under {out}")
