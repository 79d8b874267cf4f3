"""Training cost on a DB8-sized subject: ~25 min of 16-channel 2 kHz EMG, this machine's 2 cores.

Times one KinEMbed contrastive epoch (paper configuration: batch 256, projection head) and one TCN
decoder epoch, and projects the single-subject, single-configuration run. Baseline in the same run:
the textbook PyTorch loop (TensorDataset + shuffling DataLoader) for the same contrastive epoch.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np
import torch
from _common import median_time
from torch.utils.data import DataLoader, TensorDataset

from emgcore.data import preset, simulate_recording
from emgcore.features import FeatureConfig, Standardizer, fit_thresholds, recording_features
from emgcore.models.decoder import DecoderConfig, fit_decoder
from emgcore.models.kinembed import KinEmbed, KinEmbedConfig, embed, train_kinembed
from emgcore.preprocessing import DEFAULT_EMG, Pipeline

MINUTES = 25.0


def main() -> None:
    t0 = time.perf_counter()
    rec = simulate_recording(preset("db8-like", duration_s=MINUTES * 60), 0, 0)
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec = Pipeline.from_config(DEFAULT_EMG).apply(rec)
    emg = np.asarray(rec.emg)
    cfg_f = FeatureConfig()
    x, last = recording_features(emg, rec.fs, cfg_f, fit_thresholds([emg], cfg_f))
    x = Standardizer.fit(x)(x)
    y = np.asarray(rec.kinematics)[last]
    y = Standardizer.fit(y)(y)
    t_feat = time.perf_counter() - t0
    n = len(x)
    print(
        f"DB8-sized subject: {MINUTES:g} min x {emg.shape[1]} ch @ {rec.fs:g} Hz -> {n} windows "
        f"x {x.shape[1]} features; torch threads {torch.get_num_threads()}"
    )
    print(f"  simulate {t_sim:.1f} s, preprocess + features {t_feat:.1f} s")

    epochs = 3
    cfg = KinEmbedConfig(epochs=epochs, patience=epochs)
    t_ours = median_time(lambda: train_kinembed(cfg, [(x, y)], seed=0), 3) / epochs

    def textbook() -> None:
        torch.manual_seed(0)
        model = KinEmbed(cfg, x.shape[1], y.shape[1])
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        data = TensorDataset(torch.as_tensor(x), torch.as_tensor(y))
        loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=True)
        for _ in range(epochs):
            model.train()
            for xb, yb in loader:
                loss, _ = model(xb, yb)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()

    t_base = median_time(textbook, 3) / epochs
    model, _ = train_kinembed(KinEmbedConfig(epochs=1), [(x, y)], seed=0)
    z = embed(model, x)
    half = n // 2
    dec_epochs = 3
    t_dec = (
        median_time(
            lambda: fit_decoder(
                [(z[:half], y[:half]), (z[half:], y[half:])], DecoderConfig(epochs=dec_epochs)
            ),
            3,
        )
        / dec_epochs
    )
    print(f"  KinEMbed contrastive epoch   {t_ours:6.2f} s  ({n // cfg.batch_size} steps of 256)")
    print(
        f"  textbook DataLoader epoch    {t_base:6.2f} s  ratio textbook/ours "
        f"{t_base / t_ours:.2f}x"
    )
    print(f"  TCN decoder epoch            {t_dec:6.2f} s")
    full = 200 * t_ours + 100 * t_dec
    print(
        f"  one configuration, one subject (<= 200 contrastive + 100 TCN epochs): "
        f"<= {full / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
