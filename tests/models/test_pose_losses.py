"""CPEP's and EMBridge's losses against slow loop references (values and gradients), and the
data-parallel contract: gathered negatives equal one big batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from emgcore.models.losses import (
    cascle_targets,
    clip_loss,
    one_hot_targets,
    soft_cross_entropy,
    softclip_targets,
)
from tests.models.test_losses import D, grads, unit


def ref_clip(u, v, logit_scale, eps):
    """CPEP's symmetric InfoNCE, loops; smoothing eps puts eps/N on every column."""
    n = len(u)
    s = torch.exp(torch.clamp(logit_scale, max=math.log(100.0)))
    total = 0.0
    for i in range(n):
        den_uv = sum(torch.exp(s * u[i] @ v[j]) for j in range(n))
        den_vu = sum(torch.exp(s * v[i] @ u[j]) for j in range(n))
        for j in range(n):
            t = (1 - eps) * (i == j) + eps / n
            total = total - t * torch.log(torch.exp(s * u[i] @ v[j]) / den_uv)
            total = total - t * torch.log(torch.exp(s * v[i] @ u[j]) / den_vu)
    return total / (2 * n)


def ref_cascle_targets(v, c, k, tau):
    """EMBridge eqs. 3-4 written out: sparsified affinities, S = A A^T, no self, softmax."""
    n = len(v)
    a = []
    for i in range(n):
        row = [float(v[i] @ c[m]) for m in range(len(c))]
        keep = sorted(range(len(c)), key=lambda m: -row[m])[:k]
        a.append([row[m] if m in keep else 0.0 for m in range(len(c))])
    s = [[sum(a[i][m] * a[j][m] for m in range(len(c))) for j in range(n)] for i in range(n)]
    out = torch.zeros(n, n, dtype=D)
    for i in range(n):
        z = sum(math.exp(s[i][kk] / tau) for kk in range(n) if kk != i)
        for j in range(n):
            if j != i:
                out[i, j] = math.exp(s[i][j] / tau) / z
    return out


@pytest.mark.parametrize("n,e", [(2, 3), (9, 16), (20, 8)])
@pytest.mark.parametrize("tau", [0.02, 0.3])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_clip_loss_matches_reference(n, e, tau, eps) -> None:
    u, v = unit(n, e, 0), unit(n, e, 1)
    ls = torch.tensor(math.log(1 / tau), dtype=D, requires_grad=True)
    ours = clip_loss(u, v, ls, label_smoothing=eps)
    assert torch.allclose(ours, ref_clip(u, v, ls, eps), atol=1e-10)
    g_ours = grads(lambda: clip_loss(u, v, ls, label_smoothing=eps), u, v, ls)
    g_ref = grads(lambda: ref_clip(u, v, ls, eps), u, v, ls)
    for x, r in zip(g_ours, g_ref, strict=True):
        assert torch.allclose(x, r, atol=1e-9)


def test_clip_temperature_is_clamped_at_one_hundredth() -> None:
    u, v = unit(6, 4, 2), unit(6, 4, 3)
    big = torch.tensor(math.log(1e4), dtype=D)
    assert torch.allclose(clip_loss(u, v, big), clip_loss(u, v, torch.tensor(math.log(100.0))))


@pytest.mark.parametrize("n,nc,k", [(5, 4, 1), (12, 9, 3), (16, 20, 20)])
@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_cascle_targets_match_reference(n, nc, k, tau) -> None:
    v, c = unit(n, 8, 4, grad=False), unit(nc, 8, 5, grad=False)
    t = cascle_targets(v, v, c, k, tau)
    assert torch.allclose(t, ref_cascle_targets(v, c, k, tau), atol=1e-10)
    assert torch.allclose(t.sum(1), torch.ones(n, dtype=D))
    assert torch.all(t.diagonal() == 0)


def test_cascle_targets_favour_poses_of_the_same_community() -> None:
    """Two tight pose communities: each pose's target mass goes to its own community."""
    g = torch.Generator().manual_seed(6)
    centres = unit(2, 16, 7, grad=False)
    v = F.normalize(
        torch.cat(
            [
                centres[0] + 0.05 * torch.randn(4, 16, generator=g, dtype=D),
                centres[1] + 0.05 * torch.randn(4, 16, generator=g, dtype=D),
            ]
        ),
        dim=1,
    )
    t = cascle_targets(v, v, centres, 1, 0.1)
    assert torch.all(t[:4, :4].sum(1) > 0.99) and torch.all(t[4:, 4:].sum(1) > 0.99)


@pytest.mark.parametrize("metric", ["l1", "l2"])
def test_distance_affinities_keep_nearer_poses_more_similar(metric) -> None:
    v = torch.tensor([[0.0, 0.0], [0.1, 0.0], [3.0, 0.0]], dtype=D)
    t = cascle_targets(v, v, v.clone(), 3, 0.05, metric=metric)
    assert t[0, 1] > t[0, 2]


def test_unknown_similarity_is_refused() -> None:
    v = unit(3, 2, 8, grad=False)
    with pytest.raises(ValueError, match="similarity 'dot'"):
        cascle_targets(v, v, v, 1, 0.1, metric="dot")


def test_softclip_targets_keep_the_pair_and_rank_by_similarity() -> None:
    v = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=D)
    t = softclip_targets(v, v, 0.1)
    assert torch.allclose(t.sum(1), torch.ones(3, dtype=D))
    assert t[0, 0] > t[0, 1] > t[0, 2]


def test_one_hot_targets_smooth_over_the_global_batch() -> None:
    t = one_hot_targets(2, 6, rank=1, smoothing=0.3, device=torch.device("cpu"))
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert t[0, 2] == pytest.approx(0.7 + 0.05) and t[1, 3] == pytest.approx(0.75)
    assert t[0, 0] == pytest.approx(0.05)


def fake_gather(full, local, rank, n, world):
    """A differentiable all_gather stand-in: this rank's slice is ``local`` (keeps its graph)."""

    def gather(t):
        assert t is local
        return torch.cat([t if r == rank else full[r * n : (r + 1) * n] for r in range(world)])

    return gather


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_clip_loss_gathered_negatives_equal_one_big_batch(eps) -> None:
    world, n, e = 2, 5, 8
    u, v = unit(world * n, e, 9), unit(world * n, e, 10)
    ls = torch.tensor(math.log(1 / 0.05), dtype=D)
    full = clip_loss(u, v, ls, label_smoothing=eps)
    g_full = grads(lambda: clip_loss(u, v, ls, label_smoothing=eps), u, v)
    u.grad = v.grad = None
    losses = []
    for rank in range(world):
        sl = slice(rank * n, (rank + 1) * n)
        lu, lv = u[sl], v[sl]
        gathered = {
            id(lu): fake_gather(u, lu, rank, n, world),
            id(lv): fake_gather(v, lv, rank, n, world),
        }
        losses.append(
            clip_loss(
                lu, lv, ls, label_smoothing=eps, gather=lambda t, g=gathered: g[id(t)](t), rank=rank
            )
        )
    mean = sum(losses) / world
    assert torch.allclose(mean, full, atol=1e-12)
    mean.backward()
    assert torch.allclose(u.grad, g_full[0], atol=1e-12)
    assert torch.allclose(v.grad, g_full[1], atol=1e-12)


def test_cascle_gathered_targets_equal_one_big_batch() -> None:
    """Each rank's rows of the targets (own pair at its global column) equal the full batch's."""
    world, n = 3, 4
    v, c = unit(world * n, 6, 11, grad=False), unit(5, 6, 12, grad=False)
    full = cascle_targets(v, v, c, 2, 0.2)
    for rank in range(world):
        rows = cascle_targets(v[rank * n : (rank + 1) * n], v, c, 2, 0.2, rank=rank)
        assert torch.allclose(rows, full[rank * n : (rank + 1) * n], atol=1e-14)


def test_soft_cross_entropy_with_one_hot_targets_is_cross_entropy() -> None:
    logits = torch.randn(7, 7, generator=torch.Generator().manual_seed(13), dtype=D)
    hard = one_hot_targets(7, 7, 0, 0.0, torch.device("cpu")).to(D)
    assert torch.allclose(
        soft_cross_entropy(logits, hard), F.cross_entropy(logits, torch.arange(7))
    )


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_mprl_is_eq2_a_squared_norm_per_hidden_token(ratio) -> None:
    """EMBridge eq. 2 against its float64 loop: a hidden token's error summed over its S*J values,
    averaged over the hidden tokens (a per-element mean would be 1/(S J) of it). The decoded
    tokens come from the plain full-sequence pass (every token embedded and decoded)."""
    from emgcore.models.embridge import pose_token_mask, query_mask
    from emgcore.models.transformer import patchify
    from tests.models.test_pose_models import batch, embridge, gen
    from tests.reference import mprl_eq2

    model, _ = embridge()
    model = model.double().eval()
    qf = model.qformer
    x, p = (t.double() for t in batch())
    hidden = pose_token_mask(len(x), 4, ratio, gen(7))
    with torch.no_grad():
        q = qf(model.emg(x))
        tok = qf.pose_tokens
        tokens = torch.where(hidden[..., None], qf.pose_mask + tok.pos[1:], tok(p))
        h = torch.cat([q, tokens], 1)
        for blk in qf.blocks:
            h = blk(h, query_mask(4, 4, h.device))
        pred = qf.g(qf.norm(h[:, 4:]))  # (B, L, S*J)
        target = patchify(tok.standardise(p), tok.patch)
        got = qf.reconstruct(q, p, hidden)
    want = mprl_eq2(pred.tolist(), target.tolist(), hidden.tolist())
    assert got.dtype == torch.float64 and got.item() == pytest.approx(want, rel=1e-10)


def test_mprl_at_the_default_weight_leaves_the_alignment_most_of_the_gradient() -> None:
    """Eq. 2 sums a hidden token's error over its S*J standardised values (4000 at S 200, J 20):
    at lambda = 1 MPRL drew most of the gradient on the weights it shares with the alignment (the
    EMG encoder and the Q-Former), and EMBridge's zero-shot on posealign-sim was exactly chance.
    At posealign-sim's sizes and the default lambda, MPRL's gradient there at initialisation is
    a small fraction of InfoNCE's (measured 0.06), and was the larger one at lambda = 1 (6.1)."""
    from emgcore.models.embridge import EMBridge, EMBridgeConfig, pose_token_mask
    from emgcore.models.mae import MAE, MAEConfig

    torch.manual_seed(0)
    c, j, t, b = 16, 20, 4000, 32  # emg2pose: 16 electrodes, 20 joint angles, 2 s at 2 kHz
    emg = MAE(MAEConfig(patch=50, dim=64, depth=4, heads=4), c, t).encoder
    pose = MAE(MAEConfig(patch=200, dim=64, depth=4, heads=4), j, t).encoder
    x, p = torch.randn(b, t, c), torch.randn(b, t, j).cumsum(1)
    p = (p - p.mean(dim=(0, 1))) / p.std(dim=(0, 1))  # standardised joint angles
    hidden = pose_token_mask(b, t // 200, 0.5, torch.Generator().manual_seed(0))

    def mprl_over_alignment(lam: float) -> float:
        torch.manual_seed(0)
        model = EMBridge(EMBridgeConfig(n_queries=8, soft="none", lam=lam), emg, pose, heads=4)
        own = ("qformer.pose_tokens.", "qformer.pose_mask", "qformer.g.")  # MPRL's alone
        shared = [
            w
            for n, w in model.train().named_parameters()
            if w.requires_grad and n.startswith(("emg.", "qformer.")) and not n.startswith(own)
        ]
        q = model.qformer(model.emg(x))
        loss, _ = model(x, p, hidden)
        mprl = lam * model.qformer.reconstruct(q, p, hidden)

        def norm(value: torch.Tensor) -> float:
            g = torch.autograd.grad(value, shared, retain_graph=True, allow_unused=True)
            return math.sqrt(sum(float((d**2).sum()) for d in g if d is not None))

        return norm(mprl) / norm(loss - mprl)

    assert mprl_over_alignment(EMBridgeConfig().lam) < 0.2
    assert mprl_over_alignment(1.0) > 2.0
