"""The pose-alignment evaluation end to end on a tiny simulated emg2pose corpus."""

from __future__ import annotations

import numpy as np

from emgcore.cpep import CPEPConfig
from emgcore.embridge import EMBridgeConfig
from emgcore.gestures import GestureConfig, gesture_splits
from emgcore.mae import MAEConfig
from emgcore.posealign import (
    ALIGNED,
    METHODS,
    PoseAlignConfig,
    as_table,
    score,
    train_all,
    tune_score,
)

TINY = {"dim": 32, "depth": 2, "decoder_depth": 1, "heads": 4, "epochs": 2, "batch_size": 32}


def tiny_config() -> PoseAlignConfig:
    fast = {"epochs": 2, "batch_size": 32}
    return PoseAlignConfig(
        gestures=GestureConfig(tune_users=1),
        emg_mae=MAEConfig(patch=200, **TINY),
        pose_mae=MAEConfig(patch=400, **TINY),
        poset=MAEConfig(patch=200, **TINY),
        cpep=CPEPConfig(**fast),
        embridge=EMBridgeConfig(n_queries=4, **fast),
    )


def test_every_method_is_trained_and_scored(emg2pose_sim) -> None:
    cfg = tiny_config()
    splits = gesture_splits(emg2pose_sim, cfg.gestures)
    seen: dict[str, list[float]] = {}
    hooks = {
        m: (lambda e, metrics, model, m=m: seen.setdefault(m, []).append(metrics["train_loss"]),)
        for m in (*METHODS, "pose_mae")
    }
    enc = train_all(splits["pretrain"], cfg, hooks=hooks)
    assert set(seen) == {*METHODS, "pose_mae"} and all(len(v) == 2 for v in seen.values())
    rows = score(enc, splits, cfg)
    by = {(r["method"], r["task"]): r for r in rows}
    for m in (*METHODS, "pose_mae_upper_bound"):
        for task in ("in_dist", "unseen"):
            r = by[(m, task)]
            assert 0.0 <= r["lp_bacc"] <= 1.0
            assert ("zs_bacc" in r) == (m in ALIGNED)
    table = as_table(rows)
    assert "embridge" in table and "pose_mae_upper_bound" in table
    # the upper bound reads poses, which the simulator draws per stage: well above chance (0.25)
    assert by[("pose_mae_upper_bound", "in_dist")]["lp_bacc"] > 0.5
    assert np.isfinite(by[("embridge", "unseen")]["zs_bacc"])
    for m in ALIGNED:
        assert 0.0 <= tune_score(enc, splits["tune"], cfg, m) <= 1.0
