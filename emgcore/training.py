"""The training loop shared by the MAE, PoseT, CPEP and EMBridge (one process or data-parallel).

A method supplies ``step(idx, gen) -> (loss, metrics)`` for a batch of sample indices; the loop
owns the rest: AdamW over the trainable parameters, cosine annealing with warm restarts (stepped
per epoch), gradient clipping, shuffles and random draws from one explicit generator, a
NaN/inf guard that names where it happened, and per-epoch hooks.

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
from emgcore.kinembed import EpochHook, NonFiniteLossError

Step = Callable[[Tensor, torch.Generator], tuple[Tensor, dict[str, float]]]


class Schedule(Protocol):
    """The optimisation fields every method's config has."""

    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    restart_epochs: int
    grad_clip: float


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
) -> Fit:
    """Train ``model`` for ``cfg.epochs`` over ``n`` samples; ``name`` labels errors.

    ``step(idx, gen)`` gets the *global* batch's sample indices (``(B,)``, the same on every
    worker) and the generator; it shards with ``parallel.shard`` and returns the local loss.
    """
    parallel = parallel or DataParallel()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=cfg.restart_epochs)
    batch = min(cfg.batch_size, n - n % parallel.world_size)
    if batch < 2:
        raise ValueError(f"{name}: {n} training samples cannot make a batch of 2")
    parallel.local_batch(batch)  # fails early, naming the field, if it does not divide
    per_epoch = max(1, n // batch)  # drop the ragged tail: negatives and statistics per batch
    out = Fit()
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=gen, device=gen.device)
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
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
        sched.step()
        if parallel.active:  # each worker's losses are its shard's: report the global batch's
            keys = sorted(sums)
            dev = params[0].device  # NCCL reduces on the GPU
            vals = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=dev)
            total = parallel.all_reduce(vals).cpu()
            sums = dict(zip(keys, (total / parallel.world_size).tolist(), strict=True))
        epoch_metrics = {f"train_{k}": v / per_epoch for k, v in sums.items()}
        epoch_metrics["lr"] = sched.get_last_lr()[0]
        out.epochs.append(epoch_metrics)
        for hook in hooks:
            hook(epoch, epoch_metrics, model)
    model.eval()
    return out


@torch.no_grad()
def batched(fn: Callable[[Tensor], Tensor], x: Tensor, batch: int = 512) -> Tensor:
    """``fn`` over ``x`` in eval-sized chunks, concatenated (on the CPU)."""
    return torch.cat([fn(x[a : a + batch]).cpu() for a in range(0, len(x), batch)])


def channel_stats(x: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of ``x (N, T, C)`` over valid samples ``(N, T)``."""
    flat = x.reshape(-1, x.shape[-1]).double()
    if valid is not None:
        flat = flat[valid.reshape(-1)]
    return flat.mean(0).float(), flat.std(0).float()
