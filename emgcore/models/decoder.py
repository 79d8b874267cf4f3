"""Phase II: the shared TCN decoder from frozen embeddings to DoA (KinEMbed Section 3, App. B.1).

Every method, KinEMbed and each baseline, is scored through this one decoder, so embedding quality
is the only variable. Inputs and targets are standardised with training statistics; the model sees
sequences of consecutive windows of one session and predicts the DoA at every step, causally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from emgcore.errors import ShapeError
from emgcore.features import Standardizer
from emgcore.models.nn import TCN, seeded


@dataclass(frozen=True)
class DecoderConfig:
    """TCN decoder and its training; defaults are the paper's (64 ch, k 3, dilations 1-2-4)."""

    channels: int = 64  # convolution channels
    kernel: int = 3  # convolution kernel size
    dilations: tuple[int, ...] = (1, 2, 4)  # one temporal block per dilation
    dropout: float = 0.1  # not given in the paper; Bai et al. use 0.0-0.2
    lr: float = 1e-3  # Adam
    epochs: int = 100  # passes over the training windows
    seq_len: int = 128  # windows per training chunk (6.7 s at a 52 ms stride)
    batch_size: int = 16  # chunks per step


def receptive_field(cfg: DecoderConfig) -> int:
    """Windows of context one TCN output step sees (its own included), from ``cfg``."""
    return TCN(1, 1, 1, cfg.kernel, cfg.dilations, 0.0).receptive_field


def _require_windows(sessions: Sequence[np.ndarray], what: str) -> None:
    if empty := [i for i, z in enumerate(sessions) if len(z) == 0]:
        raise ShapeError(
            f"{what} {empty} has no windows (a recording shorter than one feature window?)",
            field="decoder input",
        )


@dataclass
class Decoder:
    """A fitted TCN with its input/target scalers."""

    net: TCN
    x_scale: Standardizer
    y_scale: Standardizer

    @torch.no_grad()
    def predict(self, z: np.ndarray) -> np.ndarray:
        """One session's embeddings ``(N, d)`` in time order -> DoA ``(N, J)`` in target units."""
        _require_windows([z], "session")
        self.net.eval()
        zt = torch.as_tensor(self.x_scale(z))[None]  # (1, N, d): the whole session, causal
        return self.y_scale.inverse(self.net(zt)[0].numpy())


def fit_decoder(
    train: Sequence[tuple[np.ndarray, np.ndarray]], cfg: DecoderConfig, *, seed: int = 0
) -> Decoder:
    """Train on sessions ``[(z (N_i, d), y (N_i, J)), ...]``; chunks never cross sessions.

    Each chunk carries ``receptive_field - 1`` extra windows of warm-up context in front; the loss
    skips them (except at a session's true start, where evaluation also starts from zero padding),
    so training sees the same full context the session-long evaluation pass does. A session
    without windows raises :class:`~emgcore.errors.ShapeError` (field ``decoder input``).
    """
    _require_windows([z for z, _ in train], "training session")
    with seeded(seed) as gen:
        return _fit(train, cfg, gen)


def _fit(
    train: Sequence[tuple[np.ndarray, np.ndarray]], cfg: DecoderConfig, gen: torch.Generator
) -> Decoder:
    x_scale = Standardizer.fit(np.concatenate([z for z, _ in train]))
    y_scale = Standardizer.fit(np.concatenate([y for _, y in train]))
    seqs = [(torch.as_tensor(x_scale(z)), torch.as_tensor(y_scale(y))) for z, y in train]
    n_in, n_out = seqs[0][0].shape[1], seqs[0][1].shape[1]
    net = TCN(n_in, n_out, cfg.channels, cfg.kernel, cfg.dilations, cfg.dropout)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    warm = net.receptive_field - 1
    seq_len = max(1, min(cfg.seq_len, min(len(z) for z, _ in seqs)))
    span = seq_len + warm
    for _ in range(cfg.epochs):
        # chunk grid with a random phase per session and epoch, so boundaries move
        chunks = []
        for si, (z, _) in enumerate(seqs):
            phase = int(torch.randint(seq_len, (1,), generator=gen))
            ends = np.arange(min(phase, len(z) - seq_len) + seq_len, len(z) + 1, seq_len)
            chunks += [(si, e) for e in ends]
        perm = torch.randperm(len(chunks), generator=gen).tolist()
        net.train()
        for b in range(0, len(perm), cfg.batch_size):
            xb, yb, mb = [], [], []
            for ci in perm[b : b + cfg.batch_size]:
                si, end = chunks[ci]
                z, y = seqs[si]
                start = end - span
                pad = max(0, -start)
                xs = z[max(0, start) : end]
                if pad:  # the session's start: zero context, scored like evaluation
                    xs = nn.functional.pad(xs, (0, 0, pad, 0))
                mask = torch.zeros(span, dtype=torch.bool)
                mask[warm:] = True
                if pad:
                    mask[pad:] = True
                xb.append(xs)
                yb.append(nn.functional.pad(y[max(0, start) : end], (0, 0, pad, 0)))
                mb.append(mask)
            x, y, m = torch.stack(xb), torch.stack(yb), torch.stack(mb)  # (B, span, .)
            pred = net(x)
            loss = ((pred - y).square().mean(dim=2) * m).sum() / m.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    return Decoder(net, x_scale, y_scale)


def r2_per_output(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column ``(N, J) -> (J,)`` (sklearn's ``r2_score``)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    ss_res = np.square(y_true - y_pred).sum(axis=0)
    ss_tot = np.square(y_true - y_true.mean(axis=0)).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, 0.0)
