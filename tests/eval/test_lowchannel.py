"""EMG-JEPA's low-channel analyses: grid -> band emulation, the staged adapter, Table 6's rows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from emgcore.config import load_yaml, override, resolve_config
from emgcore.data import preset, simulate
from emgcore.errors import InvalidValueError
from emgcore.eval.lowchannel import (
    AdapterConfig,
    emulate,
    emulation_matrix,
    low_channel_study,
    train_adapter,
)
from emgcore.methods.jepa import PoseEstConfig, prepare
from emgcore.models.jepa import Encoder, PoseModel
from emgcore.recording import ChannelLayout

STAGE = ("HandClawGraspFlicks",)


def test_emulated_electrodes_interpolate_the_grid() -> None:
    layout = ChannelLayout.make_grid(4, 6, pitch_mm=10.0)
    w = emulation_matrix(layout, 4)
    assert w.shape == (24, 4) and np.allclose(w.sum(axis=0), 1.0)
    rows, cols = np.nonzero(layout.grid >= 0)
    field = np.zeros(24)
    field[layout.grid[rows, cols]] = 2.0 * cols + 5.0 * rows  # linear in grid coordinates
    # electrodes at columns 0, 1.5, 3, 4.5 of the middle row (1.5): no wrap needed
    np.testing.assert_allclose(field @ w, 2.0 * np.array([0, 1.5, 3, 4.5]) + 5.0 * 1.5)
    w8 = emulation_matrix(layout, 8)  # electrode 7 sits at column 5.25: between 5 and 0
    assert w8[layout.grid[1, 0], 7] > 0 and w8[layout.grid[1, 5], 7] > 0
    with pytest.raises(InvalidValueError, match="grid"):
        emulation_matrix(ChannelLayout.ring(16), 8)


def test_emulated_recording_is_a_band_with_the_same_hand() -> None:
    cfg = preset("emg2pose-like", layout="grid64", n_subjects=1, duration_s=1.0, stages=STAGE)
    rec = simulate(cfg, subjects=[0])[0]
    band = emulate(rec, 8)
    assert band.n_channels == 8 and band.layout.kind == "ring"
    np.testing.assert_array_equal(band.kinematics, rec.kinematics)
    want = rec.emg.astype(np.float64) @ emulation_matrix(rec.layout, 8)
    np.testing.assert_allclose(band.emg, want, rtol=1e-4, atol=1e-10)  # volts, float32
    assert band.fingerprint != rec.fingerprint


@pytest.fixture(scope="module")
def small():
    """Tiny models; 250-sample patches keep a 64-channel grid at 512 tokens."""
    cfg = load_yaml(PoseEstConfig, resolve_config("jepa-smoke"))
    return override(cfg, {"jepa.patch": 250, "data.stride_s": 1.0})


@pytest.fixture(scope="module")
def corpora():
    kw = {"n_subjects": 3, "duration_s": 3.0, "sessions": ("s0",), "stages": STAGE}
    low = simulate(preset("emg2pose-like", layout="ring8", **kw))
    dense = simulate(preset("emg2pose-like", layout="grid64", seed=1, **kw))
    return low, dense


def test_adapter_stages_unfreeze_decoder_then_encoder(corpora, small) -> None:
    low, _ = corpora
    d_low = prepare(low, small.data)
    torch.manual_seed(0)
    pose = PoseModel(Encoder(small.jepa, 64, 2000 // 250), small.head, 20)
    start = {k: v.clone() for k, v in pose.state_dict().items()}

    def changed(epochs: tuple[int, int, int]) -> set[str]:
        pose.load_state_dict(start)
        cfg = AdapterConfig(hidden=16, stage_epochs=epochs)
        model, _ = train_adapter(pose, d_low, cfg, replace(small.head, warmup_steps=1), seed=0)
        after = model.pose.state_dict()
        return {k.split(".")[0] for k in start if not torch.equal(start[k], after[k])}

    assert changed((1, 0, 0)) == set()  # stage 1: the adapter alone
    assert changed((1, 1, 0)) == {"head"}  # stage 2: and the decoder
    assert changed((1, 1, 1)) == {"head", "encoder"}  # stage 3: everything


def test_low_channel_study_has_table_6s_rows(corpora, small) -> None:
    low, dense = corpora
    rows = low_channel_study(low, dense, small, AdapterConfig(hidden=16, stage_epochs=(1, 1, 1)))
    assert [r["method"] for r in rows] == [
        "supervised",
        "emg_jepa",
        "emulated_pretraining",
        "emulated_decoder",
        "emulated_both",
        "adapter",
    ]
    for r in rows:
        assert 0.0 < r["test_ja_mae"] < 90.0 and np.isfinite(r["val_ja_mae"])
