"""EMG-JEPA's low-channel analyses (papers/emg-jepa.txt Sec. 4.4, Table 6).

* Emulated 8-channel signals from a high-density grid: the 8 electrodes of the low-channel band
  are placed on the grid and each is interpolated bilinearly from the grid electrodes around
  it; the emulated windows join JEPA pre-training, decoder training, or both.
* The 8 -> 110 adapter: an MLP maps each 8-channel sample to 110 channels, feeding the
  110-channel context encoder and pose decoder; trained in three stages (adapter alone; adapter
  and decoder; everything), with the paper's learning rates (adapter 5e-4, decoder 1e-4,
  encoder 1e-5), each stage early-stopped on validation JA-MAE.

Choices: the grid is taken to encircle the forearm (a wristband), so the 8 electrodes sit
evenly around its columns at its middle row and interpolation wraps from the last column to
the first; the adapter's hidden width (256) and epochs per stage (10) are not given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emgcore.errors import InvalidValueError
from emgcore.methods.jepa import PoseData, PoseEstConfig, PoseWindows, prepare, run
from emgcore.models.jepa import EarlyStopping, PoseHeadConfig, PoseModel, ja_mae
from emgcore.models.nn import seeded
from emgcore.recording import ChannelLayout, Recording, digest
from emgcore.training import batched, fit


def emulation_matrix(layout: ChannelLayout, n: int = 8) -> np.ndarray:
    """``(C_grid, n)`` weights: column ``i`` interpolates electrode ``i`` of an ``n``-electrode
    ring placed evenly around the grid's columns at its middle row (bilinear, wrapping)."""
    g = layout.grid
    if layout.kind != "grid" or g is None or (g < 0).any():
        raise InvalidValueError(
            "emulation needs a fully populated electrode grid", field="layout.grid"
        )
    rows, cols = g.shape
    w = np.zeros((layout.n_channels, n))
    v = (rows - 1) / 2.0  # the middle row, between two rows when there is an even number
    r0 = int(np.floor(v))
    r1, wv = min(r0 + 1, rows - 1), v - r0
    for i in range(n):
        u = i * cols / n  # column coordinate of electrode i
        c0 = int(np.floor(u)) % cols
        c1, wu = (c0 + 1) % cols, u - np.floor(u)
        for r, wr in ((r0, 1 - wv), (r1, wv)):
            for c, wc in ((c0, 1 - wu), (c1, wu)):
                w[g[r, c], i] += wr * wc
    return w


def emulate(rec: Recording, n: int = 8) -> Recording:
    """``rec`` (a grid recording) as the ``n``-electrode band would have recorded it."""
    w = emulation_matrix(rec.layout, n).astype(np.float32)
    around = np.unique(rec.layout.positions_mm[:, 0])  # the grid's column positions
    pitch = float(np.diff(around).min()) if len(around) > 1 else 10.0
    return rec.load().replace(
        emg=np.asarray(rec.emg, np.float32) @ w,
        layout=ChannelLayout.ring(n, circumference_mm=len(around) * pitch),
        device=f"{n}-channel band emulated from {rec.device}",
        source=f"{rec.source} (emulated {n}-channel)",
        fingerprint=digest(rec.fingerprint, "emulate", n),
        channel_names=(),  # the band's electrodes are mixtures of the grid's, none named
        meta={**rec.meta, "emulated_from": rec.layout.n_channels},
    )


@dataclass(frozen=True)
class AdapterConfig:
    """The 8 -> 110 adapter and its three training stages (Sec. 4.4)."""

    hidden: int = 256
    lr_adapter: float = 5e-4
    lr_decoder: float = 1e-4
    lr_encoder: float = 1e-5
    stage_epochs: tuple[int, int, int] = (10, 10, 10)


class Adapter(nn.Module):
    """Each sample's ``c_in`` channels to ``c_out``: ``(B, T, c_in) -> (B, T, c_out)``."""

    def __init__(self, c_in: int, c_out: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(c_in, hidden), nn.GELU(), nn.Linear(hidden, c_out))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class AdaptedPose(nn.Module):
    """Adapter then a (110-channel) pose model: ``(B, T, 8) -> (B, J)``."""

    def __init__(self, adapter: Adapter, pose: PoseModel):
        super().__init__()
        self.adapter, self.pose = adapter, pose

    def forward(self, x: Tensor, standardised: bool = False) -> Tensor:
        return self.pose(self.adapter(x), standardised=standardised)


def train_adapter(
    pose: PoseModel,
    data: PoseData,
    cfg: AdapterConfig,
    schedule: PoseHeadConfig,
    seed: int = 0,
) -> tuple[AdaptedPose, float]:
    """Train an adapter from ``data``'s channels into ``pose`` in the three stages; returns the
    model and its best validation JA-MAE. ``schedule`` gives batch, warm-up, clipping and
    patience; the learning rates are ``cfg``'s."""
    tr = data.train
    with seeded(seed) as gen:
        adapter = Adapter(tr.emg.shape[2], pose.encoder.channels, cfg.hidden)
        model = AdaptedPose(adapter, pose)
        parts = [
            (adapter, cfg.lr_adapter),
            (pose.head, cfg.lr_decoder),
            (pose.encoder, cfg.lr_encoder),
        ]
        best = float("inf")
        for stage, epochs in enumerate(cfg.stage_epochs, start=1):
            model.requires_grad_(False)
            groups = []
            for module, lr in parts[:stage]:
                module.requires_grad_(True)
                groups.append({"params": list(module.parameters()), "lr": lr})
            stopper = EarlyStopping(data.val.emg, data.val.pose, data.unit, schedule.patience)

            def step(idx: Tensor, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
                want = (tr.pose[idx] - pose.y_mean) / pose.y_std
                loss = F.mse_loss(model(tr.emg[idx], standardised=True), want)
                return loss, {"loss": float(loss.detach())}

            fit(
                model,
                step,
                len(tr),
                replace(schedule, epochs=epochs),
                name=f"adapter stage {stage}",
                gen=gen,
                hooks=(stopper,),
                param_groups=groups,
            )
            stopper.restore(model)
            best = stopper.best
    model.eval()
    return model, best


def low_channel_study(
    low: Sequence[Recording],
    dense: Sequence[Recording],
    cfg: PoseEstConfig,
    adapter: AdapterConfig = AdapterConfig(),
) -> list[dict[str, Any]]:
    """Table 6 on ``low`` (e.g. 8-channel band) recordings, helped by ``dense`` (grid) ones:
    the supervised and EMG-JEPA baselines, emulated windows in pre-training / decoder training /
    both, and the adapter into a model trained on the dense data. Scores on ``low``'s users."""
    # the study joins windows of two data sets (PoseWindows.concat), which streamed windows do
    # not: its windows are held in memory whatever their size (Table 6's sets are small)
    cfg = replace(cfg, data=replace(cfg.data, storage="memory"))
    d_low = prepare(low, cfg.data)
    channels = d_low.train.emg.shape[2]
    emu = prepare([emulate(r, channels) for r in dense], cfg.data)
    d_emu = PoseWindows.concat([emu.train, emu.val, emu.test])  # no dense user is scored here
    sup = replace(cfg, pretrain=False)
    rows = [
        {"method": "supervised", **run(d_low, sup)},
        {"method": "emg_jepa", **run(d_low, cfg)},
        {
            "method": "emulated_pretraining",
            **run(d_low, cfg, extra_pretrain=d_emu.emg),
        },
        {"method": "emulated_decoder", **run(d_low, cfg, extra_train=d_emu)},
        {
            "method": "emulated_both",
            **run(d_low, cfg, extra_pretrain=d_emu.emg, extra_train=d_emu),
        },
    ]
    d_dense = prepare(dense, cfg.data)
    dense_out: dict[str, Any] = {}
    run(d_dense, cfg, keep=dense_out)
    model, best = train_adapter(dense_out["model"], d_low, adapter, cfg.head, cfg.seeds[0])
    test = ja_mae(batched(model, d_low.test.emg), d_low.test.pose, d_low.unit)
    rows.append({"method": "adapter", "val_ja_mae": best, "test_ja_mae": test})
    return rows
