"""What KinEMbed's 75-point first stage costs on 4 nodes x 8 A100, from figures measured here.

No GPU here, so the A100 side is worked out on paper from what is measured on this machine's CPU,
one core:

1. A DB8-sized session (16 channels, 2 kHz, 25/3 min: a third of ``bench_kinembed.py``'s 25-min
   subject) preprocessed into features; one contrastive step (batch 256, the paper's
   configuration) and one TCN decoder step (16 chunks of 128 windows): seconds per step here,
   floating-point operations per step (``torch.utils.flop_counter``, forward + backward) and ATen
   operators dispatched per step, each of which is at least one CUDA kernel launch on a GPU.
2. A trial of the first stage: 5 subjects x 2-fold session CV = 10 units, each at most 200
   contrastive epochs (early stopping, patience 20: the bound is used, so a trial's time is an
   upper bound worked out from the step, not a trial run end to end) and 100 decoder epochs,
   plus Ray's start-up of a trial (~15 s, ``bench_sweep.py``).
3. On an A100 a step takes ``max(FLOPs / (156 TFLOP/s TF32 x 40%), operators x 10 us)``: the
   compute at a modest efficiency, or the time to launch its kernels one after another from
   eager PyTorch, whichever is longer. KinEMbed's networks are small, so it is the launches: the
   GPU idles most of a step, and several trials can share one (``--gpus-per-worker`` below 1) as
   long as their combined kernels leave it idle some of the time, and each has a CPU core for its
   Python loop (a p4d.24xlarge has 96 vCPUs for 8 GPUs).

Prints the figures and, for 1, 2, 4 and 8 trials per GPU, the stage's waves, wall time and GPU
hours. The baseline in the same run: the stage on this machine (2 trials at once on 2 cores, 1.6x
the trials per hour of one, ``bench_sweep.py``).

4. Which methods pack how many trials per GPU: every method's training step at paper size (its
   paper's batch; measured on a batch of 8 and scaled, FLOPs and stored activations grow with
   the batch, operators do not), its A100 step by the rule of 3, the share of it the GPU computes,
   and its memory (fp32 weights, gradients and AdamW's two moments, plus the activations autograd
   keeps for backward, counted with ``saved_tensors_hooks``, plus ~0.5 GB of CUDA context).
   Trials per GPU: as many as leave the GPU idle some of the time and fit 40 GB, at most 8 (a
   p4d's 12 vCPUs per GPU).
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np
import torch
from _common import median_time, pin_one_core
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from emgcore.data import preset, simulate_recording
from emgcore.features import FeatureConfig, Standardizer, fit_thresholds, recording_features
from emgcore.models.decoder import DecoderConfig
from emgcore.models.kinembed import KinEmbed, KinEmbedConfig
from emgcore.models.nn import TCN
from emgcore.preprocessing import DEFAULT_EMG, Pipeline

SESSION_MIN = 25.0 / 3
STAGE_POINTS, NODES, GPUS_PER_NODE, VCPUS_PER_NODE = 75, 4, 8, 96
UNITS = 10  # 5 subjects x 2 folds
CONTRASTIVE_EPOCHS, DECODER_EPOCHS = 200, 100
STARTUP_S = 15.0  # Ray's start-up of a trial, bench_sweep.py
TWO_TRIALS_SPEEDUP = 1.6  # 2 concurrent trials vs 1 on 2 cores, bench_sweep.py
A100_TF32, EFFICIENCY, LAUNCH_S = 156e12, 0.40, 10e-6


class _Ops(TorchDispatchMode):
    """Counts the ATen operators dispatched (on CUDA each is one kernel launch or more)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _profile(step) -> tuple[float, int]:
    """FLOPs and ATen operators of one call of ``step``."""
    with FlopCounterMode(display=False) as flops:
        step()
    with _Ops() as ops:
        step()
    return float(flops.get_total_flops()), sum(ops.n.values())


def _a100_step(flops: float, ops: int) -> float:
    return max(flops / (A100_TF32 * EFFICIENCY), ops * LAUNCH_S)


A100_BYTES, PROBE_BATCH = 40e9, 8
CUDA_CONTEXT = 0.5e9  # what each process holding a GPU keeps for its CUDA context (~0.3-0.5 GB)


def _memory(model: torch.nn.Module, loss_fn) -> float:
    """Bytes of one training step: fp32 weights + gradients + AdamW's two moments, and the
    activations autograd saves for backward."""
    saved = 0

    def pack(x: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += x.numel() * x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss_fn()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 16.0 * params + saved


def _method_steps() -> dict[str, tuple[int, int, torch.nn.Module, object]]:
    """Each method's training step at paper size on a small batch: ``name -> (paper batch,
    probe batch, model, loss function)`` (bench_pose_models.py, bench_jepa.py)."""
    import torch.nn.functional as F

    from emgcore.models.cpep import CPEP, CPEPConfig
    from emgcore.models.embridge import EMBridge, EMBridgeConfig, pose_token_mask
    from emgcore.models.jepa import JEPA, JEPAConfig, mask_sampler
    from emgcore.models.mae import MAE, MAEConfig, random_masking

    b, T, C, J = PROBE_BATCH, 4000, 16, 20
    gen = torch.Generator().manual_seed(0)
    x, pose = torch.randn(b, T, C), torch.randn(b, T, J)
    emg_mae, pose_mae = MAE(MAEConfig(patch=50), C, T), MAE(MAEConfig(patch=200), J, T)

    def mae() -> torch.Tensor:
        keep, restore = random_masking(b, emg_mae.encoder.n_tokens, 0.5, gen)
        return emg_mae(x, keep, restore)[0]

    cpep = CPEP(CPEPConfig(), emg_mae.encoder, pose_mae.encoder)
    bridge = EMBridge(EMBridgeConfig(), emg_mae.encoder, pose_mae.encoder, heads=8)
    bridge.centroids = F.normalize(torch.randn(138, 256), dim=1)
    jcfg = JEPAConfig()
    jepa = JEPA(jcfg, C, 2000).train()
    sampler, xj = mask_sampler(jcfg, C, 2000), torch.randn(b, 2000, C)
    kcfg = KinEmbedConfig()
    kin = KinEmbed(kcfg, 256, 5)
    xk, yk = torch.randn(kcfg.batch_size, 256), torch.randn(kcfg.batch_size, 5)  # tiny: whole
    return {
        "KinEMbed": (kcfg.batch_size, kcfg.batch_size, kin, lambda: kin(xk, yk)[0]),
        "MAE (EMG)": (256, b, emg_mae, mae),
        "CPEP": (256, b, cpep, lambda: cpep(x, pose)[0]),
        "EMBridge": (256, b, bridge, lambda: bridge(x, pose, pose_token_mask(b, J, 0.5, gen))[0]),
        "EMG-JEPA": (jcfg.batch_size, b, jepa, lambda: jepa(xj, sampler(b, gen))),
    }


def packing() -> None:
    """Trials per A100 for every method at paper size (module doc, 4)."""
    print(f"\nper method at paper size (A100: {A100_TF32 / 1e12:g} TFLOP/s TF32 x {EFFICIENCY:g},")
    print(f"{LAUNCH_S * 1e6:g} us per operator; {A100_BYTES / 1e9:g} GB):")
    print(f"{'method':10s} {'batch':>5s} {'GFLOP':>8s} {'ops':>5s} {'A100 ms':>8s} "
          f"{'GPU busy':>8s} {'GB':>6s} {'per GPU':>7s}")  # fmt: skip
    for name, (batch, probe, model, loss_fn) in _method_steps().items():
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(loss_fn=loss_fn, opt=opt) -> None:
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # warm up (AdamW's state exists from here)
        flops, ops = _profile(step)
        scale = batch / probe
        flops *= scale
        mem = _memory(model, loss_fn)
        params = 16.0 * sum(p.numel() for p in model.parameters() if p.requires_grad)
        mem = params + (mem - params) * scale + CUDA_CONTEXT
        a100 = _a100_step(flops, ops)
        busy = flops / (A100_TF32 * EFFICIENCY) / a100
        fit = min(8, int(1 / busy) if busy < 1 else 1, int(A100_BYTES // mem))
        print(
            f"{name:10s} {batch:5d} {flops / 1e9:8.1f} {ops:5d} {a100 * 1e3:8.2f} "
            f"{100 * busy:7.0f}% {mem / 1e9:6.2f} {fit:7d}"
        )


def main() -> None:
    pin_one_core()
    rec = simulate_recording(preset("db8-like", duration_s=SESSION_MIN * 60), 0, 0)
    t0 = time.perf_counter()
    rec = Pipeline.from_config(DEFAULT_EMG).apply(rec)
    emg = np.asarray(rec.emg)
    cfg_f = FeatureConfig()
    x, last = recording_features(emg, rec.fs, cfg_f, fit_thresholds([emg], cfg_f))
    t_feat = time.perf_counter() - t0
    x = Standardizer.fit(x)(x).astype(np.float32)
    y = Standardizer.fit(np.asarray(rec.kinematics)[last])(np.asarray(rec.kinematics)[last])
    y = y.astype(np.float32)
    n = len(x)

    # one contrastive step, the paper's configuration (Appendix B)
    kcfg = KinEmbedConfig()
    torch.manual_seed(0)
    model = KinEmbed(kcfg, x.shape[1], y.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=kcfg.lr, weight_decay=kcfg.weight_decay)
    xb = torch.as_tensor(x[: kcfg.batch_size])
    yb = torch.as_tensor(y[: kcfg.batch_size])

    def contrastive() -> None:
        loss, _ = model(xb, yb)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), kcfg.grad_clip)
        opt.step()

    # one decoder step: 16 chunks of 128 windows (+ the receptive field's warm-up) of embeddings
    dcfg = DecoderConfig()
    dec = TCN(kcfg.embed_dim, y.shape[1], dcfg.channels, dcfg.kernel, dcfg.dilations, dcfg.dropout)
    dopt = torch.optim.Adam(dec.parameters(), lr=dcfg.lr)
    span = dcfg.seq_len + dec.receptive_field - 1
    zb = torch.randn(dcfg.batch_size, span, kcfg.embed_dim)
    tb = torch.randn(dcfg.batch_size, span, y.shape[1])

    def decoder() -> None:
        loss = (dec(zb) - tb).square().mean()
        dopt.zero_grad(set_to_none=True)
        loss.backward()
        dopt.step()

    for f in (contrastive, decoder):  # warm up
        f()
    steps = {
        "contrastive": n // kcfg.batch_size,
        "decoder": math.ceil(n / dcfg.seq_len / dcfg.batch_size),
    }
    epochs = {"contrastive": CONTRASTIVE_EPOCHS, "decoder": DECODER_EPOCHS}
    cpu_unit = gpu_unit = gpu_busy = 0.0
    print(
        f"DB8-sized session: {SESSION_MIN:.1f} min x {emg.shape[1]} ch @ {rec.fs:g} Hz -> {n} "
        f"windows x {x.shape[1]} features ({t_feat:.1f} s to preprocess and featurise, one core)"
    )
    print(
        f"{'step':12s} {'CPU s':>8s} {'MFLOP':>8s} {'ops':>5s} {'A100 s':>9s} {'steps/unit':>10s}"
    )
    for name, fn in (("contrastive", contrastive), ("decoder", decoder)):
        t = median_time(lambda fn=fn: [fn() for _ in range(10)], 3) / 10
        flops, ops = _profile(fn)
        a100 = _a100_step(flops, ops)
        per_unit = steps[name] * epochs[name]
        cpu_unit += t * per_unit
        gpu_unit += a100 * per_unit
        gpu_busy += flops / (A100_TF32 * EFFICIENCY) * per_unit
        print(f"{name:12s} {t:8.4f} {flops / 1e6:8.1f} {ops:5d} {a100:9.6f} {per_unit:10d}")
    cpu_trial = UNITS * (cpu_unit + t_feat) + STARTUP_S
    gpu_trial = UNITS * (gpu_unit + t_feat) + STARTUP_S
    # the GPU's own busy share of a trial: the compute alone, of the launch-bound step time
    busy = UNITS * gpu_busy / gpu_trial
    print(f"trial (10 units + {STARTUP_S:g} s start-up): CPU core here {cpu_trial / 60:.1f} min, ")
    print(
        f"  one A100 {gpu_trial / 60:.1f} min ({cpu_trial / gpu_trial:.1f}x), the GPU busy "
        f"{100 * busy:.1f}% of it"
    )
    # two trials at once on 2 cores give 1.6x the trials per hour of one (bench_sweep.py)
    here = STAGE_POINTS * cpu_trial / TWO_TRIALS_SPEEDUP
    print(f"baseline: the stage on this 2-core machine, 2 trials at once: {here / 3600:.1f} h")
    gpus = NODES * GPUS_PER_NODE
    print(f"\n{STAGE_POINTS} trials on {NODES} x {GPUS_PER_NODE} A100 ({gpus} GPUs):")
    print(f"{'per GPU':>8s} {'--gpus-per-worker':>18s} {'vCPU/trial':>10s} {'waves':>6s} "
          f"{'wall min':>9s} {'GPU h':>7s} {'vs here':>8s}")  # fmt: skip
    for k in (1, 2, 4, 8):
        waves = math.ceil(STAGE_POINTS / (gpus * k))
        # k trials time-share one GPU: slower only once their kernels would fill it
        wall = waves * gpu_trial * max(1.0, k * busy)
        print(
            f"{k:8d} {1 / k:18g} {VCPUS_PER_NODE // (GPUS_PER_NODE * k):10d} {waves:6d} "
            f"{wall / 60:9.1f} {gpus * wall / 3600:7.1f} {here / wall:7.0f}x"
        )


if __name__ == "__main__":
    main()
    packing()
