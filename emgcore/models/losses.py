"""Cross-modal losses: KinEMbed's NT-Xent, Soft-NT-Xent and VICReg; CPEP's CLIP loss; EMBridge's
InfoNCE with soft targets (label smoothing, SoftCLIP-style instance targets, CASCLe).

Every loss takes the local batch plus an optional ``gather`` function and ``rank``. ``gather(t)``
must return the concatenation of ``t`` over all workers in rank order and be differentiable, its
backward returning each slice's gradient to the worker that owns it (as
``torch.distributed.nn.functional.all_gather`` does). With the default (identity, rank 0) the
losses are the single-process ones; under data-parallel training the negatives are the global
batch, and the mean of the workers' losses (what DDP's gradient averaging differentiates) equals
the single-process loss on that batch, value and gradient.
"""

from __future__ import annotations

import math
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


# -- CPEP and EMBridge ---------------------------------------------------------------------------

SIMILARITIES = ("cosine", "l1", "l2")


def clip_loss(
    u: Tensor,
    v: Tensor,
    logit_scale: Tensor,
    *,
    label_smoothing: float = 0.0,
    gather: Gather | None = None,
    rank: int = 0,
) -> Tensor:
    """CPEP's symmetric InfoNCE of L2-normalised ``u, v (N, d)`` with a learnable temperature.

    ``logits = exp(logit_scale) u v^T`` (``logit_scale = log(1/tau)``, clamped at ``log 100`` as
    in CLIP); the mean of the EMG->pose and pose->EMG cross-entropies against the diagonal.
    ``label_smoothing`` spreads that much of each target uniformly over the global batch (CPEP-LS).
    """
    gather = gather or _identity
    n = u.shape[0]
    scale = logit_scale.clamp(max=math.log(100.0)).exp()
    all_u, all_v = gather(u), gather(v)
    target = torch.arange(n, device=u.device) + rank * n
    ls = label_smoothing
    return 0.5 * (
        F.cross_entropy(scale * u @ all_v.T, target, label_smoothing=ls)
        + F.cross_entropy(scale * v @ all_u.T, target, label_smoothing=ls)
    )


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``-1/N sum_ij t_ij log softmax(logits)_ij`` for target rows ``t (N, M)`` summing to 1."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def one_hot_targets(
    n: int, n_global: int, rank: int, smoothing: float, device: torch.device
) -> Tensor:
    """``(n, n_global)`` diagonal targets of this rank's rows, with label smoothing."""
    t = torch.full((n, n_global), smoothing / n_global, device=device)
    t[torch.arange(n, device=device), torch.arange(n, device=device) + rank * n] += 1.0 - smoothing
    return t


def _affinity(v: Tensor, centroids: Tensor, metric: str) -> Tensor:
    """Pose-cluster affinities ``(N, N_c)``, larger = closer.

    ``cosine``: ``v C^T`` (EMBridge's default, unit vectors). The paper's L1/L2 alternatives
    need an affinity that is positive and falls with distance for eq. 3's sparsify-then-multiply
    to keep its meaning; we use ``1 / (1 + distance)`` (the paper does not say which).
    """
    if metric == "cosine":
        return v @ centroids.T
    p = 1.0 if metric == "l1" else 2.0
    return 1.0 / (1.0 + torch.cdist(v, centroids, p=p))


def cascle_targets(
    v: Tensor,
    v_all: Tensor,
    centroids: Tensor,
    top_k: int,
    tau: float,
    *,
    rank: int = 0,
    metric: str = "cosine",
) -> Tensor:
    """CASCLe soft targets (EMBridge eqs. 3-4): ``(n, N_global)``, rows sum to 1, own pair 0.

    ``v (n, d)``: this worker's pose embeddings; ``v_all (N_global, d)`` the global batch;
    ``centroids (N_c, d)``: k-means centres of the frozen pose embeddings (L2-normalised).
    Affinities to the centres keep each row's ``top_k`` largest (eq. 3); ``S = A_local A_all^T``;
    the own pair is removed and the rest soft-maxed at ``tau`` (eq. 4).
    """
    if metric not in SIMILARITIES:
        raise ValueError(f"similarity {metric!r} is not one of {SIMILARITIES}")
    k = min(top_k, centroids.shape[0])

    def sparse(a: Tensor) -> Tensor:
        top = a.topk(k, dim=1)
        return torch.zeros_like(a).scatter_(1, top.indices, top.values)

    s = sparse(_affinity(v, centroids, metric)) @ sparse(_affinity(v_all, centroids, metric)).T
    n = v.shape[0]
    own = torch.arange(n, device=v.device)
    s[own, own + rank * n] = -math.inf  # k != i in eq. 4's sum
    return torch.softmax(s / tau, dim=1)


def softclip_targets(v: Tensor, v_all: Tensor, tau: float) -> Tensor:
    """SoftCLIP-style instance-level soft targets: ``softmax_j(v_i . v_j / tau)``, own pair kept.

    Our adaptation of Gao et al. (2023) to frozen pose embeddings (EMBridge Table 3): targets from
    pose-pose cosine similarity of instances, where CASCLe uses community affinities.
    """
    return torch.softmax(v @ v_all.T / tau, dim=1)
