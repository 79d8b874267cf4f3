"""Shared network blocks: MLP encoders and the causal TCN decoder."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


@contextmanager
def seeded(seed: int) -> Iterator[torch.Generator]:
    """Reproducible training without touching the caller's random state.

    Layer initialisation and dropout draw from torch's global CPU generator; inside this block it
    is seeded with ``seed`` and restored on exit. Shuffling uses the yielded explicit generator.
    (CUDA generators are seeded by ``manual_seed`` too but not restored.)
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)


class MLP(nn.Module):
    """``in -> hidden... -> out``; hidden layers are Linear, BatchNorm, ReLU, Dropout.

    ``residual=True`` adds a skip around every hidden layer (a bias-free linear projection where
    the width changes), KinEMbed's "residual" architecture variant.
    """

    def __init__(
        self,
        n_in: int,
        hidden: Sequence[int],
        n_out: int,
        *,
        batchnorm: bool = True,
        dropout: float = 0.0,
        residual: bool = False,
    ):
        super().__init__()
        self.layers = nn.ModuleList()
        self.skips = nn.ModuleList()
        width = n_in
        for h in hidden:
            # no bias in front of BatchNorm: BN removes it, so its gradient is rounding noise
            # that Adam would normalise into real, worker-count-dependent updates
            block: list[nn.Module] = [nn.Linear(width, h, bias=not batchnorm)]
            if batchnorm:
                block.append(nn.BatchNorm1d(h))
            block += [nn.ReLU(), nn.Dropout(dropout)]
            self.layers.append(nn.Sequential(*block))
            if residual:
                self.skips.append(nn.Identity() if h == width else nn.Linear(width, h, bias=False))
            width = h
        self.out = nn.Linear(width, n_out)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in) -> (N, out)``."""
        for i, layer in enumerate(self.layers):
            x = layer(x) + self.skips[i](x) if self.residual else layer(x)
        return self.out(x)


class TemporalBlock(nn.Module):
    """Two weight-normed causal dilated convolutions with ReLU and dropout, plus a residual."""

    def __init__(self, n_in: int, n_out: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.pad = (kernel - 1) * dilation  # left padding only: output t sees inputs <= t
        self.conv1 = weight_norm(nn.Conv1d(n_in, n_out, kernel, dilation=dilation))
        self.conv2 = weight_norm(nn.Conv1d(n_out, n_out, kernel, dilation=dilation))
        self.drop = nn.Dropout(dropout)
        self.down = nn.Conv1d(n_in, n_out, 1) if n_in != n_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """``(B, n_in, T) -> (B, n_out, T)``."""
        h = self.drop(torch.relu(self.conv1(nn.functional.pad(x, (self.pad, 0)))))
        h = self.drop(torch.relu(self.conv2(nn.functional.pad(h, (self.pad, 0)))))
        return torch.relu(h + self.down(x))


class TCN(nn.Module):
    """Causal temporal convolutional network (Bai et al., 2018): ``(B, T, in) -> (B, T, out)``."""

    def __init__(
        self,
        n_in: int,
        n_out: int,
        channels: int = 64,
        kernel: int = 3,
        dilations: Sequence[int] = (1, 2, 4),
        dropout: float = 0.1,
    ):
        super().__init__()
        blocks, width = [], n_in
        for d in dilations:
            blocks.append(TemporalBlock(width, channels, kernel, d, dropout))
            width = channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv1d(channels, n_out, 1)
        # left context of one output step, in input steps: each block has two convolutions
        self.receptive_field = 1 + 2 * (kernel - 1) * sum(dilations)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(x.transpose(1, 2))).transpose(1, 2)
