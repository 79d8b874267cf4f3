"""Training throughput at paper size on this machine: MAE, CPEP and EMBridge steps.

Paper size (CPEP App. B, EMBridge A.6): 2 s windows at 2 kHz, 16 EMG channels (S = 50: 80
tokens), 20 joint angles (S = 200: 20 tokens), d = 256, 4 encoder + 2 decoder blocks, 16 queries,
batch 256. One optimiser step = forward, backward, AdamW. Reported as samples/s (median step).

The EMBridge ratio compares a full step (InfoNCE + CASCLe + MPRL) with the plain Q-Former's
(InfoNCE only) on the same batch. Target: <= 1.5x.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch
import torch.nn.functional as F

from emgcore.models.cpep import CPEP, CPEPConfig
from emgcore.models.embridge import EMBridge, EMBridgeConfig, pose_token_mask
from emgcore.models.mae import MAE, MAEConfig, random_masking

B, T, C, J = 256, 4000, 16, 20
STEPS, WARMUP = 5, 2


def time_steps(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor]) -> float:
    """Median seconds per optimiser step."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(WARMUP + STEPS):
        t = time.perf_counter()
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= WARMUP:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, p = torch.randn(B, T, C), torch.randn(B, T, J)
    emg_mae, pose_mae = MAE(MAEConfig(patch=50), C, T), MAE(MAEConfig(patch=200), J, T)
    print(f"batch {B}, {torch.get_num_threads()} threads")

    def mae_loss(m: MAE, data: torch.Tensor) -> Callable[[], torch.Tensor]:
        def f() -> torch.Tensor:
            keep, restore = random_masking(B, m.encoder.n_tokens, 0.5, gen)
            return m(data, keep, restore)[0]

        return f

    rows = {
        "EMG-MAE": time_steps(emg_mae, mae_loss(emg_mae, x)),
        "pose-MAE": time_steps(pose_mae, mae_loss(pose_mae, p)),
    }
    cpep = CPEP(CPEPConfig(), emg_mae.encoder, pose_mae.encoder)
    rows["CPEP"] = time_steps(cpep, lambda: cpep(x, p)[0])
    models = {
        "Q-Former (InfoNCE)": EMBridge(
            EMBridgeConfig(soft="none", lam=0.0), emg_mae.encoder, pose_mae.encoder, heads=8
        ),
        "EMBridge (+CASCLe +MPRL)": EMBridge(
            EMBridgeConfig(), emg_mae.encoder, pose_mae.encoder, heads=8
        ),
    }
    models["EMBridge (+CASCLe +MPRL)"].centroids = F.normalize(torch.randn(138, 256), dim=1)
    for name, m in models.items():
        rows[name] = time_steps(m, lambda m=m: m(x, p, pose_token_mask(B, 20, 0.5, gen))[0])
    for name, s in rows.items():
        print(f"{name:28s} {s:6.2f} s/step  {B / s:7.1f} samples/s")
    ratio = rows["EMBridge (+CASCLe +MPRL)"] / rows["Q-Former (InfoNCE)"]
    print(f"EMBridge step / Q-Former step  {ratio:6.2f}x  (target <= 1.5)")
    sys.exit(0 if ratio <= 1.5 else 1)


if __name__ == "__main__":
    main()
