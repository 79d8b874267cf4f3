"""Cross-modal losses: symmetric NT-Xent, Soft-NT-Xent and VICReg.

Every loss takes the local batch plus an optional ``gather`` function and ``rank``. ``gather(t)``
must return the concatenation of ``t`` over all workers in rank order and be differentiable, its
backward returning each slice's gradient to the worker that owns it (as
``torch.distributed.nn.functional.all_gather`` does). With the default (identity, rank 0) the
losses are the single-process ones; under data-parallel training the negatives are the global
batch, and the mean of the workers' losses (what DDP's gradient averaging differentiates) equals
the single-process loss on that batch, value and gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Gather = Callable[[Tensor], Tensor]


def _identity(t: Tensor) -> Tensor:
    return t


def nt_xent(
    z_a: Tensor,
    z_b: Tensor,
    temperature: float,
    *,
    gather: Gather | None = None,
    rank: int = 0,
) -> Tensor:
    """Symmetric NT-Xent (KinEMbed eq. 3) of L2-normalised ``z_a, z_b (N, E)``; row i pairs with i.

    ``L = -1/(2N) sum_i [log softmax_j(a_i . b_j / tau)_i + log softmax_j(b_i . a_j / tau)_i]``.
    """
    gather = gather or _identity
    n = z_a.shape[0]
    all_a, all_b = gather(z_a), gather(z_b)  # (N_global, E)
    target = torch.arange(n, device=z_a.device) + rank * n
    logits_ab = z_a @ all_b.T / temperature  # (N, N_global): local anchors vs global candidates
    logits_ba = z_b @ all_a.T / temperature
    return 0.5 * (F.cross_entropy(logits_ab, target) + F.cross_entropy(logits_ba, target))


def soft_targets(y_local: Tensor, y_all: Tensor) -> Tensor:
    """Gaussian-kernel soft targets over DoA distances: ``(N, N_global)``, rows sum to 1.

    ``w_ij = exp(-|y_i - y_j|^2 / (2 s^2))`` with ``s`` the median pairwise distance over the global
    batch (i != j), KinEMbed's parameter-free bandwidth.
    """
    d_all = torch.cdist(y_all, y_all)  # (N_global, N_global)
    off = ~torch.eye(len(y_all), dtype=torch.bool, device=y_all.device)
    s = d_all[off].median().clamp_min(1e-6) if len(y_all) > 1 else y_all.new_tensor(1.0)
    w = torch.exp(-torch.cdist(y_local, y_all).square() / (2 * s * s))
    return w / w.sum(dim=1, keepdim=True)


def soft_nt_xent(
    z_a: Tensor,
    z_b: Tensor,
    y: Tensor,
    temperature: float,
    *,
    gather: Gather | None = None,
    rank: int = 0,
) -> Tensor:
    """NT-Xent with the one-hot target replaced by :func:`soft_targets` of the DoA ``y (N, J)``.

    Windows with nearly the same kinematics are no longer pushed apart as hard negatives. The
    kernel is symmetric, so both directions share the target. ``rank`` is unused (the targets
    locate the positives) and kept for a uniform signature.
    """
    del rank
    gather = gather or _identity
    all_a, all_b = gather(z_a), gather(z_b)
    with torch.no_grad():
        target = soft_targets(y, gather(y))
    logits_ab = z_a @ all_b.T / temperature
    logits_ba = z_b @ all_a.T / temperature
    ce_ab = -(target * F.log_softmax(logits_ab, dim=1)).sum(dim=1).mean()
    ce_ba = -(target * F.log_softmax(logits_ba, dim=1)).sum(dim=1).mean()
    return 0.5 * (ce_ab + ce_ba)


def vicreg(
    h_a: Tensor,
    h_b: Tensor,
    *,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
    gather: Gather | None = None,
) -> Tensor:
    """VICReg (Bardes et al., 2022) between un-normalised ``h_a, h_b (N, E)``.

    invariance MSE + variance hinge ``mean relu(1 - sqrt(var + eps))`` + off-diagonal covariance
    squared / E, each branch separately. Statistics are over the global batch.
    """
    gather = gather or _identity
    a, b = gather(h_a), gather(h_b)
    invariance = F.mse_loss(a, b)
    variance = a.new_zeros(())
    covariance = a.new_zeros(())
    for h in (a, b):
        n, e = h.shape
        h = h - h.mean(dim=0)
        std = torch.sqrt(h.var(dim=0) + eps)
        variance = variance + F.relu(1.0 - std).mean() / 2
        cov = (h.T @ h) / (n - 1)  # (E, E)
        off = cov - torch.diag(torch.diag(cov))
        covariance = covariance + off.square().sum() / e
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance
