"""AEMG pre-training steps at the paper's Base size (notes/aemg.md: width 256, depth 6, 8 heads,
8192 codes of width 256), sentences of 16 one-second tokens of 16 channels at 200 Hz.

* VQ tokenizer step (stage 4: NST, codebook with EMA, decoder, reconstruction + commitment) and
  masked-token step (stage 5: NST with 50% of tokens masked, cross-entropy over 8192 codes,
  targets from the frozen tokenizer), each forward + backward + AdamW: sentences/s and
  tokens/s, median of the timed steps, against the smaller configuration
  (``AEMGConfig.small``) as the named baseline.
* With a CUDA device, the same steps under bf16 autocast.

    python bench/bench_aemg.py [--batch 32] [--threads 2] [--gpu-only]
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

from emgcore.models.aemg import AEMGConfig, MaskedTokenModel, VQTokenizer

STEPS, WARMUP = 5, 2


def batch(cfg: AEMGConfig, b: int, device: str) -> dict[str, torch.Tensor]:
    """Sentences with a realistic share of padding: 1-16 real tokens, 100-200 real samples."""
    g = torch.Generator().manual_seed(0)
    n_real = torch.randint(1, cfg.sentence + 1, (b, 1), generator=g)
    length = torch.randint(100, cfg.token_len + 1, (b, cfg.sentence), generator=g)
    length = torch.where(torch.arange(cfg.sentence) < n_real, length, 0)
    return {
        "values": torch.randn(b, cfg.sentence, cfg.channels, cfg.token_len, generator=g).to(device),
        "length": length.to(device),
        "phase": torch.randint(0, 4, (b, cfg.sentence), generator=g).to(device),
        "position": torch.randn(b, cfg.channels, cfg.position_features, generator=g).to(device),
    }


def step_seconds(cfg: AEMGConfig, b: int, device: str, bf16: bool) -> tuple[float, float, int]:
    """Median seconds of a VQ step and of an MTM step, and the batch's real tokens."""
    torch.manual_seed(0)
    vq, mtm = VQTokenizer(cfg).to(device), MaskedTokenModel(cfg).to(device)
    data = batch(cfg, b, device)
    amp = (
        torch.autocast(device_type=device, dtype=torch.bfloat16)
        if bf16
        else contextlib.nullcontext()
    )

    def timed(model: torch.nn.Module, loss_fn) -> float:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        times = []
        for i in range(STEPS + WARMUP):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            with amp:
                loss, _ = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= WARMUP:
                times.append(time.perf_counter() - t)
        return statistics.median(times)

    t_vq = timed(vq, lambda: vq(data))
    vq.eval()
    targets = vq.codes(data)
    g = torch.Generator().manual_seed(1)
    t_mtm = timed(mtm, lambda: mtm(data, targets, g))
    return t_vq, t_mtm, int((data["length"] > 0).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gpu-only", action="store_true", help="skip the CPU runs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = [("Base", AEMGConfig(), "cpu", False), ("small", AEMGConfig.small(), "cpu", False)]
    if args.gpu_only:
        runs = []
    if torch.cuda.is_available():
        runs += [
            ("Base bf16", AEMGConfig(), "cuda", True),
            ("Base fp32", AEMGConfig(), "cuda", False),
        ]
    rate = {}
    for name, cfg, device, bf16 in runs:
        t_vq, t_mtm, tokens = step_seconds(cfg, args.batch, device, bf16)
        rate[name] = args.batch / t_vq, args.batch / t_mtm
        where = f"{device}, {args.threads} threads" if device == "cpu" else device
        print(
            f"{name:>9} ({where}), batch {args.batch} sentences ({tokens} real tokens): "
            f"VQ step {t_vq * 1e3:7.0f} ms = {args.batch / t_vq:7.1f} sentences/s "
            f"({tokens / t_vq:7.0f} tokens/s); MTM step {t_mtm * 1e3:7.0f} ms = "
            f"{args.batch / t_mtm:7.1f} sentences/s ({tokens / t_mtm:7.0f} tokens/s)"
        )
    if "small" in rate:
        base, small = rate["Base"], rate["small"]
        print(
            f"small / Base samples/s: VQ {small[0] / base[0]:.1f}x, MTM {small[1] / base[1]:.1f}x"
        )
    if "Base bf16" in rate:
        bf, fp = rate["Base bf16"], rate["Base fp32"]
        print(f"GPU bf16 / fp32 samples/s: VQ {bf[0] / fp[0]:.2f}x, MTM {bf[1] / fp[1]:.2f}x")


if __name__ == "__main__":
    main()
