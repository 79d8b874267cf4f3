"""EMG-JEPA pre-training at paper size (A.1): mask sampling headroom, tokens/s, fused attention.

Paper size: 1-s windows at 2 kHz, 100-sample patches (K = 20), width 768, 6 encoder blocks
(8 heads, MLP 1536), predictor 4 blocks at 384, MLP featurizer 100 -> 256 -> 384; 16 channels
(320 tokens) and 110 channels (2200 tokens). One optimiser step = masks, forward (context,
EMA target, predictor), backward, AdamW, EMA update.

* Mask sampling vs a training step on the same batch: the collate function must keep up with
  >= 10x headroom (target).
* Tokens/s: all tokens of the batch's windows per second of training step (median).
* Attention: the same step with torch's fused scaled-dot-product kernel (what the model calls)
  vs its unfused reference (``SDPBackend.MATH``, softmax(QK^T)V spelled out); a ratio.
* With a CUDA device: the same steps under bf16 autocast, and model FLOPs utilisation against
  the device's peak (``--peak-tflops``, default the H200's dense bf16 989). The code path is
  the CPU one; only the device and autocast change.

    python bench/bench_jepa.py [--batch 16] [--channels 16,110]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from emgcore.models.jepa import JEPA, JEPAConfig, ema_momentum, mask_sampler
from emgcore.models.jepa_masks import Masks, MaskSampler

WINDOW = 2000
STEPS, WARMUP = 3, 1


def step_time(
    model: JEPA, x: torch.Tensor, sampler: MaskSampler, autocast: bool
) -> tuple[float, float]:
    """Median seconds of one training step and of its mask sampling alone."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    dev = x.device
    amp = torch.autocast(dev.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    steps, masks = [], []
    for i in range(WARMUP + STEPS):
        _sync(dev)
        t = time.perf_counter()
        m = sampler(len(x), gen)
        t_mask = time.perf_counter() - t
        m = Masks(m.obs.to(dev), m.target.to(dev), m.blocks)
        with amp:
            loss = model(x, m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.update_target(ema_momentum(i, 1000, model.cfg.ema))
        _sync(dev)
        if i >= WARMUP:
            steps.append(time.perf_counter() - t)
            masks.append(t_mask)
    return statistics.median(steps), statistics.median(masks)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def train_flops(model: JEPA, batch: int, channels: int, masks: Masks) -> float:
    """Model FLOPs of one step: 6 x params x tokens for the trained parts (forward + backward),
    2 x params x tokens for the target encoder's forward, plus attention's 4 L^2 d per block
    (x3 when trained)."""
    k = WINDOW // model.cfg.patch
    n_all, n_obs, n_tgt = channels * k, masks.obs.shape[1], masks.target.shape[1]
    enc = sum(p.numel() for p in model.encoder.blocks.parameters())
    pred = sum(p.numel() for p in model.predictor.blocks.parameters())
    w, pw = model.cfg.width, model.cfg.pred_width
    d, pd = model.cfg.depth, model.cfg.pred_depth
    flops = 6 * enc * n_obs + 2 * enc * n_all + 6 * pred * (n_obs + n_tgt)
    flops += (
        3 * 4 * d * n_obs**2 * w + 4 * d * n_all**2 * w + 3 * 4 * pd * (n_obs + n_tgt) ** 2 * pw
    )
    return float(batch * flops)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels", default="16,110")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    cfg = JEPAConfig()
    print(f"EMG-JEPA at paper size on {dev} ({torch.get_num_threads()} threads), batch {a.batch}")
    for c in (int(v) for v in a.channels.split(",")):
        torch.manual_seed(0)
        model = JEPA(cfg, c, WINDOW).to(dev).train()
        sampler = mask_sampler(cfg, c, WINDOW)
        x = torch.randn(a.batch, WINDOW, c, device=dev)
        tokens = a.batch * c * (WINDOW // cfg.patch)
        fused, t_mask = step_time(model, x, sampler, autocast=False)
        with sdpa_kernel(SDPBackend.MATH):
            unfused, _ = step_time(model, x, sampler, autocast=False)
        print(
            f"  {c:3d} channels ({c * 20} tokens/window): step {fused:.2f} s, "
            f"{tokens / fused:,.0f} tokens/s; masks {t_mask * 1e3:.1f} ms "
            f"-> headroom {fused / t_mask:,.0f}x (target >= 10x); "
            f"unfused attention {unfused:.2f} s = {unfused / fused:.2f}x the fused step"
        )
        if cuda:
            bf16, _ = step_time(model, x, sampler, autocast=True)
            m = sampler(a.batch, torch.Generator().manual_seed(0))
            mfu = train_flops(model, a.batch, c, m) / bf16 / (a.peak_tflops * 1e12)
            print(
                f"      bf16 autocast: step {bf16:.3f} s, {tokens / bf16:,.0f} tokens/s, "
                f"MFU {100 * mfu:.1f}% of {a.peak_tflops:g} TFLOP/s"
            )


if __name__ == "__main__":
    main()
