"""The training loop shared by the MAE, PoseT, CPEP, EMBridge and EMG-JEPA (one process or
data-parallel).

A method supplies ``step(idx, gen) -> (loss, metrics)`` for a batch of sample indices; the loop
owns the rest: AdamW over the trainable parameters, the learning-rate schedule (cosine annealing
with warm restarts stepped per epoch, or, when the config has ``warmup_steps > 0``, EMG-JEPA's
linear warm-up stepped per optimiser step), gradient clipping, shuffles and random draws from
one explicit generator, a NaN/inf guard that names where it happened, a callback after every
optimiser step (EMG-JEPA's EMA update), per-epoch hooks, and early stopping: a hook with a true
``stop`` attribute ends training after that epoch.

Under :class:`emgcore.distributed.DataParallel` with several workers every worker draws the
same shuffles and the same random draws for the *global* batch (``cfg.batch_size``) and trains
on its shard (``parallel.shard``), so the run is the single-process run with the global batch,
and contrastive negatives come from all workers through the step's ``gather``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from emgcore.distributed import DataParallel
from emgcore.streaming import Windows

Step = Callable[[Tensor, torch.Generator], tuple[Tensor, dict[str, float]]]
# called after every epoch of every method's training as hook(epoch, metrics, model); the
# metrics include ``samples``: the training samples the epoch stepped over, all workers
# together (the orchestration turns it into samples/s)
EpochHook = Callable[[int, dict[str, float], nn.Module], None]


class NonFiniteLossError(FloatingPointError):
    """Training diverged: the loss became NaN or infinite (the message says where)."""


class Schedule(Protocol):
    """The optimisation fields every method's config has."""

    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    restart_epochs: int
    grad_clip: float
    # optional: warmup_steps (int, > 0 selects the warm-up schedule), betas (tuple of 2 floats)


@dataclass
class Fit:
    """What :func:`fit` returns: per-epoch metrics (global-batch means) and the step count."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0


def fit(
    model: nn.Module,
    step: Step,
    n: int,
    cfg: Schedule,
    *,
    name: str,
    gen: torch.Generator,
    hooks: Sequence[EpochHook] = (),
    parallel: DataParallel | None = None,
    after_step: Callable[[int], None] | None = None,
    param_groups: Sequence[dict] | None = None,
    streams: Sequence[object] = (),
) -> Fit:
    """Train ``model`` for ``cfg.epochs`` over ``n`` samples; ``name`` labels errors.

    ``step(idx, gen)`` gets the *global* batch's sample indices (``(B,)``, the same on every
    worker) and the generator; it shards with ``parallel.shard`` and returns the local loss.
    ``after_step(n)`` runs after the n-th optimiser step (1-based). ``param_groups`` (AdamW's
    ``{"params": ..., "lr": ...}``) trains those parameters at their own rates instead of every
    trainable parameter at ``cfg.lr``. ``streams``: the windows the step reads as
    ``x[parallel.shard(idx)]``; those streamed from disk
    (:class:`~emgcore.streaming.WindowArray`) are told each epoch's shards up front, so their
    loaders read ahead.
    """
    parallel = parallel or DataParallel()
    betas = tuple(getattr(cfg, "betas", (0.9, 0.999)))
    groups = list(param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}])
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=betas)
    warmup = int(getattr(cfg, "warmup_steps", 0))
    per_step: torch.optim.lr_scheduler.LRScheduler | None = None
    per_epoch_sched: torch.optim.lr_scheduler.LRScheduler | None = None
    if warmup > 0:  # linear from lr / warmup to lr, then constant
        per_step = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup))
    else:
        per_epoch_sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            opt, T_0=cfg.restart_epochs
        )
    batch, per_epoch = batches(n, cfg.batch_size, parallel, name)
    out = Fit()
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=gen, device=gen.device)
        for x in streams:
            if hasattr(x, "plan"):
                x.plan(
                    [parallel.shard(order[b * batch : (b + 1) * batch]) for b in range(per_epoch)]
                )
        sums: dict[str, float] = {}
        for b in range(per_epoch):
            loss, metrics = step(order[b * batch : (b + 1) * batch], gen)
            if not math.isfinite(metrics["loss"]):
                raise NonFiniteLossError(
                    f"{name} loss is {metrics['loss']} at epoch {epoch}, step {b} (lr {cfg.lr})"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            out.steps += 1
            if per_step is not None:
                per_step.step()
            if after_step is not None:
                after_step(out.steps)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
        if per_epoch_sched is not None:
            per_epoch_sched.step()
        if parallel.active:  # each worker's losses are its shard's: report the global batch's
            keys = sorted(sums)
            dev = params[0].device  # NCCL reduces on the GPU
            vals = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=dev)
            total = parallel.all_reduce(vals).cpu()
            sums = dict(zip(keys, (total / parallel.world_size).tolist(), strict=True))
        epoch_metrics = {f"train_{k}": v / per_epoch for k, v in sums.items()}
        epoch_metrics["lr"] = opt.param_groups[0]["lr"]
        epoch_metrics["samples"] = float(batch * per_epoch)  # the epoch's, all workers
        out.epochs.append(epoch_metrics)
        for hook in hooks:
            hook(epoch, epoch_metrics, model)
        if any(getattr(hook, "stop", False) for hook in hooks):
            break
    model.eval()
    return out


def batches(n: int, batch_size: int, parallel: DataParallel, name: str) -> tuple[int, int]:
    """``(batch, steps per epoch)`` for ``n`` samples: the global batch, shrunk to what ``n``
    allows and divisible by the workers; the ragged tail is dropped (negatives and statistics
    per batch)."""
    batch = min(batch_size, n - n % parallel.world_size)
    if batch < 2:
        raise ValueError(f"{name}: {n} training samples cannot make a batch of 2")
    parallel.local_batch(batch)  # fails early, naming the field, if it does not divide
    return batch, max(1, n // batch)


@torch.no_grad()
def batched(fn: Callable[[Tensor], Tensor], x: Tensor | Windows, batch: int = 512) -> Tensor:
    """``fn`` over ``x`` in eval-sized chunks, concatenated (on the CPU); windows streamed
    from disk are read one chunk at a time."""
    return torch.cat([fn(x[a : a + batch]).cpu() for a in range(0, len(x), batch)])


def channel_stats(
    x: Tensor | Windows, valid: Tensor | Windows | None = None, chunk: int | None = None
) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (unbiased) std of ``x (N, T, C)`` over valid samples ``(N, T)``.

    One pass in chunks of ``chunk`` windows (default: ~4M values, 32 MB in float64), merged in
    float64 (Chan et al.'s parallel variance), so windows streamed from disk are read once and
    never held together."""
    if chunk is None:
        chunk = max(1, 2**22 // max(1, math.prod(x.shape[1:])))
    n, mean, m2 = 0, None, None
    for a in range(0, len(x), chunk):
        flat = x[a : a + chunk].reshape(-1, x.shape[-1]).double()
        if valid is not None:
            flat = flat[valid[a : a + chunk].reshape(-1).to(flat.device)]
        k = len(flat)
        if k == 0:
            continue
        mu = flat.mean(0)
        sq = (flat - mu).square().sum(0)
        if mean is None:
            n, mean, m2 = k, mu, sq
            continue
        delta = mu - mean
        total = n + k
        mean = mean + delta * (k / total)
        m2 = m2 + sq + delta.square() * (n * k / total)
        n = total
    if mean is None:
        raise ValueError("channel statistics of no samples")
    return mean.float(), (m2 / max(n - 1, 1)).sqrt().float()
