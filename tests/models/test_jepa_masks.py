"""EMG-JEPA's masks: the properties Sec. 3.2.1 asks for, checked on many draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emgcore.models.jepa_masks import (
    MaskCollator,
    MaskConfig,
    MaskSampler,
    apply_masks,
)
from emgcore.recording import ChannelLayout

C_RING, K = 16, 20


def _grid_of(tokens: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Channels and patches of token indices ``n = c * K + k``."""
    t = tokens.numpy()
    return t // k, t % k


def _is_arc(channels: set[int], c: int) -> bool:
    """A contiguous block modulo ``c``: exactly one channel of it has no predecessor in it."""
    return len(channels) == c or sum((ch - 1) % c not in channels for ch in channels) == 1


def _is_span(times: set[int]) -> bool:
    return max(times) - min(times) + 1 == len(times)


@pytest.fixture(scope="module")
def ring_draws():
    s = MaskSampler(MaskConfig(), C_RING, K, ChannelLayout.ring(C_RING))
    gen = torch.Generator().manual_seed(0)
    return [s(32, gen) for _ in range(25)]


def test_cross_block_targets_are_disjoint_from_the_context_and_each_other(ring_draws) -> None:
    for m in ring_draws:
        n = m.blocks[0]
        for obs, tgt in zip(m.obs, m.target, strict=True):
            o, t = set(obs.tolist()), tgt.tolist()
            assert len(o) == len(obs) and len(set(t)) == len(t)  # no token twice
            assert not o & set(t)
            assert len(t) == 3 * n


def test_cross_block_kinds_sit_where_the_paper_says(ring_draws) -> None:
    saw_wrap = False
    for m in ring_draws:
        n = m.blocks[0]
        for obs, tgt in zip(m.obs, m.target, strict=True):
            oc, ot = _grid_of(obs, K)
            obs_c, obs_t = set(oc), set(ot)
            assert _is_arc(obs_c, C_RING) and _is_span(obs_t)
            assert len(obs) == len(obs_c) * len(obs_t)  # a full block
            saw_wrap |= {0, C_RING - 1} <= obs_c and len(obs_c) < C_RING
            for kind, block in zip(("cc", "ct", "dc"), tgt.split(n), strict=True):
                bc, bt = (set(a) for a in _grid_of(block, K))
                assert _is_arc(bc, C_RING) and _is_span(bt)
                assert len(block) == len(bc) * len(bt)
                if kind == "cc":  # cross-channel: unseen channels, observed times
                    assert not bc & obs_c and bt <= obs_t
                elif kind == "ct":  # cross-time: observed channels, unseen times
                    assert bc <= obs_c and not bt & obs_t
                else:  # double-cross: neither
                    assert not bc & obs_c and not bt & obs_t
    assert saw_wrap  # the ring wraps: a block can hold channels 15 and 0


def test_block_sizes_follow_the_ratios(ring_draws) -> None:
    for m in ring_draws:
        oc, ot = _grid_of(m.obs[0], K)
        assert 0.4 * C_RING - 1 <= len(set(oc)) <= 0.6 * C_RING + 1
        assert 0.4 * K - 1 <= len(set(ot)) <= 0.6 * K + 1
        tc, tt = _grid_of(m.target[0, : m.blocks[0]], K)
        assert 0.2 * C_RING - 1 <= len(set(tc)) <= 0.4 * C_RING + 1
        assert 0.2 * K - 1 <= len(set(tt)) <= 0.4 * K + 1
    # sizes are drawn per batch (so indices stack) but vary between batches
    assert len({(m.obs.shape[1], m.target.shape[1]) for m in ring_draws}) > 3


def test_grid_blocks_are_neighbouring_electrodes() -> None:
    layout = ChannelLayout.make_grid(10, 11, pitch_mm=8.0)
    neighbours = layout.neighbours()
    s = MaskSampler(MaskConfig(), 110, K, layout)
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        m = s(8, gen)
        n = m.blocks[0]
        for obs, tgt in zip(m.obs, m.target, strict=True):
            oc = set(_grid_of(obs, K)[0])
            for block in (oc, *(set(_grid_of(b, K)[0]) for b in tgt.split(n))):
                assert _connected(block, neighbours)
            cc = set(_grid_of(tgt[:n], K)[0])
            assert not cc & oc and set(_grid_of(tgt[n : 2 * n], K)[0]) <= oc
            assert not set(obs.tolist()) & set(tgt.tolist())


def _connected(channels: set[int], neighbours: list[tuple[int, ...]]) -> bool:
    start = next(iter(channels))
    seen, todo = {start}, [start]
    while todo:
        for j in neighbours[todo.pop()]:
            if j in channels and j not in seen:
                seen.add(j)
                todo.append(j)
    return seen == channels


@pytest.mark.parametrize("strategy", ["random_block", "random_token"])
def test_ablation_masks_never_target_what_is_observed(strategy: str) -> None:
    s = MaskSampler(MaskConfig(strategy=strategy), C_RING, K)
    gen = torch.Generator().manual_seed(2)
    for _ in range(20):
        m = s(16, gen)
        assert m.target.shape[1] >= 1
        for obs, tgt in zip(m.obs, m.target, strict=True):
            assert not set(obs.tolist()) & set(tgt.tolist())
            assert len(set(tgt.tolist())) == len(tgt)


def test_masks_come_from_the_generator_alone() -> None:
    s = MaskSampler(MaskConfig(), C_RING, K)
    a = s(8, torch.Generator().manual_seed(5))
    b = s(8, torch.Generator().manual_seed(5))
    c = s(8, torch.Generator().manual_seed(6))
    assert torch.equal(a.obs, b.obs) and torch.equal(a.target, b.target)
    assert not torch.equal(a.obs, c.obs) or not torch.equal(a.target, c.target)


def test_collate_stacks_windows_and_gathers_by_index() -> None:
    s = MaskSampler(MaskConfig(), C_RING, K)
    collate = MaskCollator(s, seed=3)
    loader = torch.utils.data.DataLoader(
        [torch.randn(K * 5, C_RING) for _ in range(8)], batch_size=4, collate_fn=collate
    )
    (x, m), _ = list(loader)
    assert x.shape == (4, K * 5, C_RING) and m.obs.shape[0] == 4
    tokens = torch.arange(C_RING * K, dtype=torch.float32).expand(4, -1)[..., None]
    assert torch.equal(apply_masks(tokens, m.obs)[..., 0].long(), m.obs)


def test_bad_ratios_are_refused() -> None:
    with pytest.raises(ValueError, match="obs_ratio"):
        MaskConfig(obs_ratio=(0.6, 0.4))
    with pytest.raises(ValueError, match="strategy"):
        MaskConfig(strategy="tube")
