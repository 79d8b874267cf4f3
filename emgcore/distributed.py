"""Data-parallel training in plain torch: what a launcher (Ray Train, torchrun) hands the loop.

The launcher creates the process group; :meth:`DataParallel.current` reads it. The training loop
then needs four things, all here, so the science code never asks who launched it:

* ``shard(batch_idx)``: this worker's slice of a global batch. Every worker draws the same global
  permutation (same seed), so the workers' slices tile each global batch exactly, and
  ``batch_size`` stays the *global* batch: the number of negatives a contrastive loss sees.
* ``gather(t)``: differentiable all-gather in rank order, for losses over the global batch.
* ``wrap(model)``: DistributedDataParallel (gradient averaging) around a model whose BatchNorm
  layers were swapped for :class:`GlobalBatchNorm1d`. torch's SyncBatchNorm refuses CPU tensors,
  and per-worker statistics would make two workers x 128 differ from one worker x 256.
* ``rank``/``world_size``.

With one worker every method is the identity, so the same loop runs unchanged on a laptop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DataParallel:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> DataParallel:
        """The initialised default process group, or a single worker when there is none."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def local_batch(self, global_batch: int) -> int:
        if global_batch % self.world_size:
            raise ValueError(
                f"kinembed.batch_size {global_batch} is not divisible by {self.world_size} workers"
            )
        return global_batch // self.world_size

    def shard(self, batch_idx: Tensor) -> Tensor:
        """This worker's contiguous slice of one global batch's indices ``(B,) -> (B / W,)``."""
        n = len(batch_idx) // self.world_size
        return batch_idx[self.rank * n : (self.rank + 1) * n]

    def gather(self, t: Tensor) -> Tensor:
        """``(n, ...)`` on every worker -> ``(W n, ...)`` in rank order, gradient to the owner."""
        if not self.active:
            return t
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(t), dim=0)

    def all_reduce(self, t: Tensor) -> Tensor:
        """Differentiable sum over workers (the backward pass sums the cotangents too)."""
        if not self.active:
            return t
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(t)

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every worker: for decisions that must match (when to report)."""
        if not self.active:
            return flag
        t = torch.tensor([float(flag)])
        dist.broadcast(t, src=0)
        return bool(t.item())

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP with global-batch BatchNorm; the module itself when there is one worker."""
        if not self.active:
            return model
        _globalise_batchnorm(model, self)
        device_ids = [model_device(model)] if model_device(model).type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch, ``(n, C)`` input.

    Sums and sums of squares are all-reduced (differentiably), so forward and backward equal one
    BatchNorm over the concatenated batch; running statistics use the unbiased global variance,
    as nn.BatchNorm1d does. Evaluation uses the running statistics, no communication.
    """

    def __init__(self, num_features: int, parallel: DataParallel, **kwargs: object):
        super().__init__(num_features, **kwargs)
        self.parallel = parallel

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.parallel.active):
            return super().forward(x)
        stats = torch.cat(
            [x.sum(0), x.square().sum(0), x.new_full((1,), float(len(x)))]
        )  # (2C + 1,)
        stats = self.parallel.all_reduce(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c : 2 * c] / n - mean.square()  # biased, what normalisation uses
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / int(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach(), m)
            self.running_var.lerp_(var.detach() * n / (n - 1), m)
        y = (x - mean) / torch.sqrt(var + self.eps)
        return y * self.weight + self.bias if self.affine else y


def _globalise_batchnorm(module: nn.Module, parallel: DataParallel) -> None:
    """Swap every BatchNorm1d under ``module`` for a GlobalBatchNorm1d with the same state."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            bn = GlobalBatchNorm1d(
                child.num_features,
                parallel,
                eps=child.eps,
                momentum=child.momentum,
                affine=child.affine,
            ).to(child.running_mean.device)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        else:
            _globalise_batchnorm(child, parallel)
