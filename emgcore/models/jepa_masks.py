"""EMG-JEPA's spatiotemporal masks (Sec. 3.2.1; Brain-JEPA's sampler, with electrode topology).

The token grid is ``C`` channels x ``K`` time patches; token ``n = c * K + k`` (the order the
embedded tokens are flattened in). A sampler draws, for a batch, index tensors of the observed
tokens and of the target tokens; the model gathers with them (:func:`apply_masks`), as the
I-JEPA / Brain-JEPA collate functions do.

``cross_block`` (the paper's): per sample an observation block, a contiguous channel block times a
contiguous span of patches, and three target blocks from the rest:

* cross-channel: channels outside the observed block, at observed times;
* cross-time: observed channels, at times outside the observed span;
* double-cross: channels outside the block, times outside the span.

A contiguous channel block is an arc of the ring, wrapping modulo ``C`` (channels 15, 0, 1 of a
16-electrode band). On a grid it is a band of neighbouring rows or of neighbouring columns
(which axis is drawn per batch): a disc-shaped block on a small grid cuts what is left into
pockets too small to hold a connected target block, a band never does. Other layouts: a run of
channel indices. Block fractions ``eta_C, eta_T``
are drawn once per batch (so the index tensors stack), from ``obs_ratio`` for the observation
block and ``target_ratio`` for the targets; positions are drawn per sample.

Choices the paper leaves open:

* Along time and along a grid axis (neither wraps) the targets outside the observed span lie on
  one side of it (drawn per sample), and the observed span is placed so that they fit; a span
  cut in two would not be contiguous.
* The cross-channel target's span is a sub-span of the observed one; the cross-time target's
  channels a sub-block of the observed ones (each clipped to what it sits inside).
* The three targets are disjoint by construction, so one predictor pass predicts them all; the
  mask tokens carry positions only, so seeing each other leaks nothing.
* ``random_token`` and ``random_block`` (Table 4's ablations) spend the same token budget:
  observed tokens anywhere / one random block; targets anywhere else / three random blocks
  minus the observed ones, truncated to the batch minimum (I-JEPA's collation rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from emgcore.recording import ChannelLayout

STRATEGIES = ("cross_block", "random_block", "random_token")
# a batch's block sizes: channel groups and patches of the observed block, then of each target
Sizes = tuple[int, int, int, int]
TARGET_KINDS = ("cross_channel", "cross_time", "double_cross")


@dataclass(frozen=True)
class MaskConfig:
    """Which masks and how big; the defaults are the paper's (A.1)."""

    strategy: str = "cross_block"  # cross_block | random_block | random_token
    obs_ratio: tuple[float, float] = (0.4, 0.6)  # eta_C, eta_T range of the observation block
    target_ratio: tuple[float, float] = (0.2, 0.4)  # eta_C, eta_T range of each target block

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        for name in ("obs_ratio", "target_ratio"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi < 1.0:
                raise ValueError(f"{name} must satisfy 0 < low <= high < 1, got {(lo, hi)}")


@dataclass
class Masks:
    """Index tensors of one batch: ``obs (B, N_obs)``, ``target (B, N_tgt)`` token indices.

    ``blocks``: for ``cross_block``, the token count of each target kind (:data:`TARGET_KINDS`)
    in the order they are concatenated in ``target``; empty otherwise.
    """

    obs: Tensor
    target: Tensor
    blocks: tuple[int, ...] = ()


def apply_masks(x: Tensor, idx: Tensor) -> Tensor:
    """Tokens ``x (B, N, d)`` at indices ``idx (B, M)``: ``(B, M, d)``."""
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


class MaskSampler:
    """Draws :class:`Masks` for ``n_channels x n_patches`` token grids laid out as ``layout``."""

    def __init__(
        self,
        cfg: MaskConfig,
        n_channels: int,
        n_patches: int,
        layout: ChannelLayout | None = None,
    ):
        if n_channels < 2 or n_patches < 2:
            raise ValueError(
                f"masks need at least 2 channels and 2 patches, got {n_channels} x {n_patches}"
            )
        if layout is not None and layout.n_channels != n_channels:
            raise ValueError(f"layout has {layout.n_channels} channels, tokens {n_channels}")
        self.cfg, self.C, self.K = cfg, n_channels, n_patches
        # channel axes: (groups (n, g) of channel ids, whether the axis wraps around)
        line = torch.arange(n_channels)[:, None]
        if layout is None or layout.kind == "ring":
            self.axes = [(line, True)]
        elif layout.grid is not None and (layout.grid >= 0).all() and min(layout.grid.shape) > 1:
            grid = torch.as_tensor(layout.grid)
            self.axes = [(grid, False), (grid.T.contiguous(), False)]  # bands of rows | columns
        else:
            self.axes = [(line, False)]

    def __call__(self, batch: int, gen: torch.Generator) -> Masks:
        axis = self.axes[int(torch.randint(len(self.axes), (1,), generator=gen, device=gen.device))]
        groups, wraps = axis
        sizes = self._sizes(len(groups), gen)
        if self.cfg.strategy == "cross_block":
            return self._cross_block(batch, gen, groups.to(gen.device), wraps, sizes)
        if self.cfg.strategy == "random_block":
            return self._random_block(batch, gen, groups.to(gen.device), wraps, sizes)
        return self._random_token(batch, gen, len(groups[0]), sizes)

    # -- sizes (once per batch) ------------------------------------------------------------------

    def _sizes(self, n_groups: int, gen: torch.Generator) -> Sizes:
        """``(m_obs, k_obs, m_tgt, k_tgt)``: channel groups and patches of the observed and
        target blocks, clipped so every block fits where it must sit."""
        lo, hi = self.cfg.obs_ratio
        tlo, thi = self.cfg.target_ratio
        u = torch.rand(4, generator=gen, device=gen.device).tolist()
        n, K = n_groups, self.K
        m_o = min(max(round((lo + (hi - lo) * u[0]) * n), 1), n - 1)
        k_o = min(max(round((lo + (hi - lo) * u[1]) * K), 1), K - 1)
        m_t = min(max(round((tlo + (thi - tlo) * u[2]) * n), 1), m_o, n - m_o)
        k_t = min(max(round((tlo + (thi - tlo) * u[3]) * K), 1), k_o, K - k_o)
        return m_o, k_o, m_t, k_t

    # -- strategies ------------------------------------------------------------------------------

    def _cross_block(
        self, b: int, gen: torch.Generator, groups: Tensor, wraps: bool, sizes: Sizes
    ) -> Masks:
        m_o, k_o, m_t, k_t = sizes
        c_obs, c_in, (c_cc, c_dc) = _spans(len(groups), m_o, m_t, wraps, b, gen)
        t_obs, t_in, (t_ct, t_dc) = _spans(self.K, k_o, k_t, False, b, gen)
        target = torch.cat(
            [
                self._tokens(_channels(groups, c_cc, m_t), t_in, k_t),  # cross-channel
                self._tokens(_channels(groups, c_in, m_t), t_ct, k_t),  # cross-time
                self._tokens(_channels(groups, c_dc, m_t), t_dc, k_t),  # double-cross
            ],
            dim=1,
        )
        n = m_t * groups.shape[1] * k_t
        return Masks(self._tokens(_channels(groups, c_obs, m_o), t_obs, k_o), target, (n, n, n))

    def _random_block(
        self, b: int, gen: torch.Generator, groups: Tensor, wraps: bool, sizes: Sizes
    ) -> Masks:
        m_o, k_o, m_t, k_t = sizes
        n = len(groups)

        def anywhere(m: int, k: int) -> Tensor:
            c = _randint(n - 1 if wraps else n - m, gen, b)
            return self._tokens(_channels(groups, c, m), _randint(self.K - k, gen, b), k)

        obs = anywhere(m_o, k_o)
        hit = torch.zeros(b, self.C * self.K, dtype=torch.bool, device=gen.device)
        for _ in TARGET_KINDS:
            hit.scatter_(1, anywhere(m_t, k_t), True)
        return Masks(obs, self._pick(hit, obs, gen))

    def _random_token(self, b: int, gen: torch.Generator, group: int, sizes: Sizes) -> Masks:
        m_o, k_o, m_t, k_t = sizes
        n_obs, n_tgt = m_o * group * k_o, len(TARGET_KINDS) * m_t * group * k_t
        order = torch.rand(b, self.C * self.K, generator=gen, device=gen.device).argsort(dim=1)
        obs = order[:, :n_obs].sort(dim=1).values
        return Masks(obs, order[:, n_obs : n_obs + n_tgt].sort(dim=1).values)

    # -- pieces ----------------------------------------------------------------------------------

    def _tokens(self, channels: Tensor, start: Tensor, k: int) -> Tensor:
        """Token indices of ``channels (B, m)`` x patches ``start .. start + k``: ``(B, m*k)``."""
        t = start[:, None, None] + torch.arange(k, device=start.device)
        return (channels[:, :, None] * self.K + t).reshape(len(start), -1)

    def _pick(self, hit: Tensor, obs: Tensor, gen: torch.Generator) -> Tensor:
        """Target tokens: those ``hit (B, N)`` outside ``obs``, as many as the poorest sample
        has (at least one: short rows are topped up with other unobserved tokens)."""
        seen = torch.zeros_like(hit).scatter_(1, obs, True)
        hit = hit & ~seen
        n = max(int(hit.sum(dim=1).min()), 1)
        score = torch.rand(hit.shape, generator=gen, device=hit.device)
        score = torch.where(hit, score + 2.0, torch.where(seen, -1.0, score))
        return score.topk(n, dim=1).indices.sort(dim=1).values


def _spans(
    n: int, o: int, t: int, wraps: bool, b: int, gen: torch.Generator
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
    """First positions ``(B,)`` of an observed span of ``o`` out of ``n``, of a ``t``-span inside
    it, and of two ``t``-spans outside it (on one side of it when the axis does not wrap)."""
    if wraps:
        start = _randint(n - 1, gen, b)
        outside = tuple((start + o + _randint(n - o - t, gen, b)) % n for _ in range(2))
    else:
        right = torch.rand(b, generator=gen, device=gen.device) < 0.5
        start = _randint(n - o - t, gen, b) + torch.where(right, 0, t)
        free_lo = torch.where(right, start + o, 0)
        free_n = torch.where(right, n - start - o, start)
        outside = tuple(free_lo + _randint(free_n - t, gen, b) for _ in range(2))
    inside = (start + _randint(o - t, gen, b)) % n
    return start, inside, outside  # type: ignore[return-value]


def _channels(groups: Tensor, start: Tensor, m: int) -> Tensor:
    """Channels of ``m`` consecutive groups from ``start (B,)``, modulo the axis: ``(B, m*g)``."""
    idx = (start[:, None] + torch.arange(m, device=start.device)) % len(groups)
    return groups[idx].reshape(len(start), -1)


def _randint(high: Tensor | int, gen: torch.Generator, b: int) -> Tensor:
    """``(B,)`` integers uniform on ``0 .. high`` inclusive (``high`` per sample, >= 0)."""
    high = torch.as_tensor(high, device=gen.device).expand(b)
    u = torch.rand(b, generator=gen, device=gen.device)
    return (u * (high + 1)).floor().long().clamp(max=high.long())


class MaskCollator:
    """``collate_fn`` for a DataLoader of windows ``(T, C)``: stacks them and draws the batch's
    masks from its own generator (seeded; each loader worker reseeds from its worker id)."""

    def __init__(self, sampler: MaskSampler, seed: int = 0):
        self.sampler, self.seed = sampler, seed
        self.gen = torch.Generator().manual_seed(seed)
        self._worker: int | None = None

    def __call__(self, windows: list[Tensor]) -> tuple[Tensor, Masks]:
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker != info.id:  # one stream per loader worker
            self._worker = info.id
            self.gen.manual_seed(int(np.random.SeedSequence([self.seed, info.id]).entropy % 2**63))
        x = torch.stack(windows)
        return x, self.sampler(len(x), self.gen)
