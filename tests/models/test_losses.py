"""Losses against slow references written here, on values and gradients, across shapes and
temperatures; and the data-parallel contract (gathered negatives equal one big batch)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from emgcore.models.losses import nt_xent, soft_nt_xent, soft_targets, vicreg

D = torch.float64  # references and gradients are compared at 1e-10


def ref_nt_xent(a, b, tau):
    """Eq. 3 with explicit loops: -1/(2N) sum_i [log e^{a_i b_i/t}/sum_j e^{a_i b_j/t} + sym]."""
    n = len(a)
    total = 0.0
    for i in range(n):
        num_ab = torch.exp(a[i] @ b[i] / tau)
        den_ab = sum(torch.exp(a[i] @ b[j] / tau) for j in range(n))
        num_ba = torch.exp(b[i] @ a[i] / tau)
        den_ba = sum(torch.exp(b[i] @ a[j] / tau) for j in range(n))
        total = total + torch.log(num_ab / den_ab) + torch.log(num_ba / den_ba)
    return -total / (2 * n)


def ref_soft_nt_xent(a, b, y, tau):
    n = len(a)
    dists = [float(torch.dist(y[i], y[j])) for i in range(n) for j in range(n) if i != j]
    s = sorted(dists)
    m = len(s)
    med = s[(m - 1) // 2]  # torch.median: the lower middle value
    total = 0.0
    for i in range(n):
        w = [math.exp(-(float(torch.dist(y[i], y[j])) ** 2) / (2 * med * med)) for j in range(n)]
        q = [wj / sum(w) for wj in w]
        den_ab = sum(torch.exp(a[i] @ b[j] / tau) for j in range(n))
        den_ba = sum(torch.exp(b[i] @ a[j] / tau) for j in range(n))
        for j in range(n):
            total = total - q[j] * torch.log(torch.exp(a[i] @ b[j] / tau) / den_ab)
            total = total - q[j] * torch.log(torch.exp(b[i] @ a[j] / tau) / den_ba)
    return total / (2 * n)


def ref_vicreg(a, b, lam=25.0, mu=25.0, nu=1.0, eps=1e-4):
    """Bardes et al.: invariance MSE, per-branch variance hinge (mean over dims) and off-diagonal
    covariance squares / E; the two branches' regularisers are averaged (var) and summed (cov)."""
    n, e = a.shape
    inv = sum(((a[i] - b[i]) ** 2).sum() for i in range(n)) / (n * e)
    var, cov = 0.0, 0.0
    for h in (a, b):
        mean = sum(h[i] for i in range(n)) / n
        c = sum(torch.outer(h[i] - mean, h[i] - mean) for i in range(n)) / (n - 1)
        var = var + sum(torch.relu(1.0 - torch.sqrt(c[k, k] + eps)) for k in range(e)) / e / 2
        cov = cov + sum(c[k, m] ** 2 for k in range(e) for m in range(e) if k != m) / e
    return lam * inv + mu * var + nu * cov


def unit(n, e, seed, grad=True):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, e, generator=g, dtype=D), dim=1).requires_grad_(grad)


def grads(fn, *tensors):
    for t in tensors:
        t.grad = None
    fn().backward()
    return [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("n,e", [(2, 3), (7, 16), (24, 5)])
@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0])
def test_nt_xent_matches_reference(n, e, tau) -> None:
    a, b = unit(n, e, 0), unit(n, e, 1)
    assert torch.allclose(nt_xent(a, b, tau), ref_nt_xent(a, b, tau), atol=1e-10)
    g_ours = grads(lambda: nt_xent(a, b, tau), a, b)
    g_ref = grads(lambda: ref_nt_xent(a, b, tau), a, b)
    for x, y in zip(g_ours, g_ref, strict=True):
        assert torch.allclose(x, y, atol=1e-10)


@pytest.mark.parametrize("n,e,j", [(3, 4, 1), (9, 16, 5), (20, 8, 3)])
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_soft_nt_xent_matches_reference(n, e, j, tau) -> None:
    a, b = unit(n, e, 2), unit(n, e, 3)
    y = torch.randn(n, j, generator=torch.Generator().manual_seed(4), dtype=D)
    assert torch.allclose(soft_nt_xent(a, b, y, tau), ref_soft_nt_xent(a, b, y, tau), atol=1e-10)
    g_ours = grads(lambda: soft_nt_xent(a, b, y, tau), a, b)
    g_ref = grads(lambda: ref_soft_nt_xent(a, b, y, tau), a, b)
    for x, r in zip(g_ours, g_ref, strict=True):
        assert torch.allclose(x, r, atol=1e-10)


def test_soft_targets_are_scale_free_and_favour_near_kinematics() -> None:
    """The median-distance bandwidth makes targets independent of the DoA unit; duplicates share
    their mass; a nearer window always gets more target mass than a farther one."""
    y = torch.tensor([[0.0], [1.0], [3.0], [7.0], [7.0], [15.0]], dtype=D)
    t = soft_targets(y, y)
    assert torch.allclose(t.sum(dim=1), torch.ones(6, dtype=D))
    assert torch.allclose(soft_targets(y * 1e3, y * 1e3), t)
    assert torch.allclose(t[3, 3], t[3, 4]) and torch.allclose(t[:, 3], t[:, 4])
    assert t[0, 0] > t[0, 1] > t[0, 2] > t[0, 3] > t[0, 5]
    assert t[0, 5] > 0  # soft: a far window is a weak negative, not excluded


@pytest.mark.parametrize("n,e", [(4, 3), (16, 8), (33, 16)])
def test_vicreg_matches_reference(n, e) -> None:
    g = torch.Generator().manual_seed(5)
    a = (torch.randn(n, e, generator=g, dtype=D) * 0.7).requires_grad_(True)
    b = (a.detach() + 0.3 * torch.randn(n, e, generator=g, dtype=D)).requires_grad_(True)
    assert torch.allclose(vicreg(a, b), ref_vicreg(a, b), atol=1e-10)
    g_ours = grads(lambda: vicreg(a, b), a, b)
    g_ref = grads(lambda: ref_vicreg(a, b), a, b)
    for x, r in zip(g_ours, g_ref, strict=True):
        assert torch.allclose(x, r, atol=1e-9)


@pytest.mark.parametrize("loss", ["nt_xent", "soft_nt_xent"])
def test_gathered_negatives_equal_one_big_batch(loss) -> None:
    """Two simulated workers, each with half the batch: the mean of their losses and its gradient
    (what DDP's gradient averaging computes) equal single-process training on the whole batch."""
    world, n, e = 2, 6, 8
    a, b = unit(world * n, e, 6), unit(world * n, e, 7)
    y = torch.randn(world * n, 5, generator=torch.Generator().manual_seed(8), dtype=D)

    def call(za, zb, yy, **kw):
        if loss == "nt_xent":
            return nt_xent(za, zb, 0.2, **kw)
        return soft_nt_xent(za, zb, yy, 0.2, **kw)

    full = call(a, b, y)
    g_full = grads(lambda: call(a, b, y), a, b)
    a.grad = b.grad = None
    per_rank = []
    for rank in range(world):
        sl = slice(rank * n, (rank + 1) * n)
        local = {"a": a[sl], "b": b[sl], "y": y[sl]}
        full_of = {id(local[k]): full_t for k, full_t in (("a", a), ("b", b), ("y", y))}

        def gather(t, rank=rank, full_of=full_of):
            # differentiable all_gather: the backward pass returns each slice's gradient to its
            # owner (torch.distributed.nn.functional.all_gather sums them across ranks)
            whole = full_of[id(t)]
            parts = [t if r == rank else whole[r * n : (r + 1) * n] for r in range(world)]
            return torch.cat(parts)

        per_rank.append(call(local["a"], local["b"], local["y"], gather=gather, rank=rank))
    mean = sum(per_rank) / world
    assert torch.allclose(mean, full, atol=1e-12)
    mean.backward()
    assert torch.allclose(a.grad, g_full[0], atol=1e-12)
    assert torch.allclose(b.grad, g_full[1], atol=1e-12)
