"""Masked autoencoders for EMG and for pose, and PoseT (CPEP Sec. 2.2 and App. B; EMBridge A.6).

One recipe for both modalities: a window ``(B, T, C)`` is cut into ``K = T // S`` patches of ``S``
samples (EMG: S = 50, pose: S = 200 at 2 kHz), each flattened over channels and projected to
``d = 256`` (:func:`emgcore.models.transformer.patchify`); a [CLS] token is prepended; a random
``r = 0.5`` of the patch tokens is hidden; the 4-block encoder sees [CLS] and the visible tokens;
the 2-block decoder gets mask tokens at the hidden positions and reconstructs every patch; the
loss is the MSE over the hidden patches only.

PoseT (the supervised baseline) is the same encoder-decoder with nothing hidden and a head that
regresses, for every EMG patch, the pose over the same ``S`` samples: MSE against the joint angles,
counting only samples whose pose is valid (emg2pose IK failures are masked).

Choices where the papers are silent, each a config field:

* 8 heads (32 dims each), feed-forward width 4d, GELU, pre-LayerNorm, no dropout: ViT/MAE's.
* Fixed sinusoidal positions for encoder and decoder (MAE's); [CLS] takes position 0.
* The decoder is as wide as the encoder (d = 256): CPEP gives one width for "the model".
* Inputs are standardised per channel by statistics of the training set stored in the encoder
  (:meth:`TokenEncoder.set_scale`): pose in degrees otherwise dominates the MSE by its largest
  joints. EMG needs none (instance normalisation already makes it zero-mean unit-variance).
* Cosine annealing with warm restarts restarts every ``restart_epochs`` = 10 epochs (T_mult 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from emgcore.distributed import DataParallel
from emgcore.gestures import rotate_channels
from emgcore.models.nn import seeded
from emgcore.models.transformer import Block, init_weights, patchify, sincos_1d
from emgcore.training import EpochHook, Fit, channel_stats, fit


@dataclass(frozen=True)
class MAEConfig:
    """One modality's MAE; defaults are the papers' (CPEP App. B, EMBridge A.6) for EMG."""

    patch: int = 50  # S: samples per token (EMG 50, pose 200; CPEP Fig. 3's axis)
    dim: int = 256  # d: encoder and decoder width
    depth: int = 4  # encoder blocks
    decoder_depth: int = 2  # decoder blocks
    heads: int = 8  # attention heads (papers silent)
    mlp_ratio: float = 4.0  # feed-forward width / d (papers silent)
    dropout: float = 0.0  # residual branches and feed-forward (papers silent)
    mask_ratio: float = 0.5  # r: fraction of patch tokens hidden (CPEP Fig. 3's other axis)
    lr: float = 1e-4  # AdamW
    weight_decay: float = 1e-5  # AdamW
    batch_size: int = 256  # global batch over all workers
    epochs: int = 100
    restart_epochs: int = 10  # T_0 of cosine annealing with warm restarts (papers silent)
    grad_clip: float = 1.0  # max gradient norm (papers silent; a guard for the first steps)

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        for name in ("patch", "dim", "depth", "heads", "batch_size", "epochs", "restart_epochs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.dim % self.heads or self.dim % 2:
            raise ValueError(f"dim {self.dim} must be even and divisible by heads {self.heads}")


class Tokenizer(nn.Module):
    """Standardise, patchify, project, add positions: ``(B, T, C) -> (B, K, d)``."""

    def __init__(self, patch: int, channels: int, dim: int, n_tokens: int):
        super().__init__()
        self.patch, self.channels = patch, channels
        self.embed = nn.Linear(patch * channels, dim)
        self.register_buffer("pos", sincos_1d(1 + n_tokens, dim), persistent=False)  # 0: [CLS]
        self.register_buffer("mean", torch.zeros(channels))  # input standardisation
        self.register_buffer("std", torch.ones(channels))

    def standardise(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: Tensor) -> Tensor:
        return self.embed(patchify(self.standardise(x), self.patch)) + self.pos[1:]


class TokenEncoder(nn.Module):
    """Linear tokenizer + [CLS] + Transformer encoder: ``(B, T, C) -> (B, 1 + K, d)``.

    The encoder that CPEP, EMBridge and the linear probes take out of a trained MAE.
    """

    def __init__(self, cfg: MAEConfig, channels: int, length: int):
        super().__init__()
        self.patch, self.channels, self.dim = cfg.patch, channels, cfg.dim
        self.n_tokens = length // cfg.patch  # K
        if self.n_tokens < 1:
            raise ValueError(f"windows of {length} samples hold no patch of {cfg.patch}")
        self.tokenizer = Tokenizer(cfg.patch, channels, cfg.dim, self.n_tokens)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fresh random weights (MAE's initialisation); the input scale is kept."""
        init_weights(self)
        nn.init.normal_(self.cls, std=0.02)

    @torch.no_grad()
    def set_scale(self, mean: Tensor, std: Tensor) -> None:
        """Standardise inputs by these per-channel training-set statistics ``(C,)``."""
        self.tokenizer.mean.copy_(mean)
        self.tokenizer.std.copy_(std.clamp_min(1e-6))

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """Encode ``x (B, T, C)``; only the patch tokens at ``keep (B, K')`` when given.

        Returns ``(B, 1 + K', d)``, [CLS] first, after the final LayerNorm.
        """
        t = self.tokenizer(x)  # (B, K, d)
        if keep is not None:
            t = torch.gather(t, 1, keep[..., None].expand(-1, -1, t.shape[-1]))  # (B, K', d)
        cls = (self.cls + self.tokenizer.pos[:1]).expand(
            t.shape[0], -1, -1
        )  # not len(): it fixes exported batches
        h = torch.cat([cls, t], dim=1)
        for blk in self.blocks:
            h = blk(h)
        return self.norm(h)

    def summary(self, x: Tensor, pool: str = "cls") -> Tensor:
        """One vector per window, ``(B, d)``: the [CLS] token or the mean of the patch tokens."""
        h = self(x)
        return h[:, 0] if pool == "cls" else h[:, 1:].mean(dim=1)


class Decoder(nn.Module):
    """MAE decoder: tokens ``(B, 1 + K', d)`` + hidden positions -> ``(B, K, out)`` per patch."""

    def __init__(self, cfg: MAEConfig, n_tokens: int, out: int):
        super().__init__()
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.register_buffer("pos", sincos_1d(1 + n_tokens, cfg.dim), persistent=False)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.decoder_depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, out)
        init_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, h: Tensor, restore: Tensor | None = None) -> Tensor:
        """``restore (B, K)`` puts the visible tokens (then the mask tokens) back in time order."""
        h = self.proj(h)
        cls, vis = h[:, :1], h[:, 1:]
        if restore is not None:
            b, k = restore.shape
            fill = self.mask_token.expand(b, k - vis.shape[1], -1)
            vis = torch.gather(
                torch.cat([vis, fill], 1), 1, restore[..., None].expand(-1, -1, h.shape[-1])
            )
        h = torch.cat([cls, vis], dim=1) + self.pos
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.norm(h)[:, 1:])  # drop [CLS]


def random_masking(
    batch: int, n_tokens: int, ratio: float, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """MAE's per-sample random masking from an explicit generator.

    Returns ``keep (B, K_keep)``, the visible token indices (in random order), and
    ``restore (B, K)``, the permutation that puts ``[visible; hidden]`` back in time order.
    """
    n_keep = max(1, round(n_tokens * (1.0 - ratio)))
    noise = torch.rand(batch, n_tokens, generator=gen, device=gen.device)
    shuffle = noise.argsort(dim=1)  # ascending: the first n_keep are kept
    restore = shuffle.argsort(dim=1)
    return shuffle[:, :n_keep], restore


class MAE(nn.Module):
    """Masked autoencoder of one modality: ``forward(x, keep, restore) -> (loss, metrics)``."""

    def __init__(self, cfg: MAEConfig, channels: int, length: int):
        super().__init__()
        self.cfg = cfg
        self.encoder = TokenEncoder(cfg, channels, length)
        self.decoder = Decoder(cfg, self.encoder.n_tokens, cfg.patch * channels)

    def forward(self, x: Tensor, keep: Tensor, restore: Tensor) -> tuple[Tensor, dict[str, float]]:
        """MSE over the hidden patches of ``x (B, T, C)`` (in standardised units)."""
        enc = self.encoder
        target = patchify(enc.tokenizer.standardise(x), enc.patch)  # (B, K, S*C)
        pred = self.decoder(enc(x, keep), restore)  # (B, K, S*C)
        hidden = torch.ones(target.shape[:2], dtype=torch.bool, device=x.device)
        hidden.scatter_(1, keep, False)  # (B, K): True where the token was hidden
        per_patch = (pred - target).square().mean(dim=-1)  # (B, K)
        loss = per_patch[hidden].mean()
        return loss, {"loss": loss.item()}


class PoseT(nn.Module):
    """Supervised EMG -> pose regression with the MAE architecture (CPEP's PoseT baseline)."""

    def __init__(self, cfg: MAEConfig, channels: int, joints: int, length: int):
        super().__init__()
        self.cfg, self.joints = cfg, joints
        self.encoder = TokenEncoder(cfg, channels, length)
        self.decoder = Decoder(cfg, self.encoder.n_tokens, cfg.patch * joints)
        # PoseT decodes every token: the mask token never enters its graph, and DDP would wait
        # forever for its gradient ("parameters that were not used in producing loss")
        self.decoder.mask_token.requires_grad_(False)
        self.register_buffer("pose_mean", torch.zeros(joints))
        self.register_buffer("pose_std", torch.ones(joints))

    def predict(self, x: Tensor) -> Tensor:
        """Joint angles ``(B, K*S, J)`` in the data's units for EMG ``x (B, T, C)``."""
        out = self.decoder(self.encoder(x))  # (B, K, S*J)
        b, k, _ = out.shape
        return out.reshape(b, k * self.cfg.patch, self.joints) * self.pose_std + self.pose_mean

    def forward(
        self,
        x: Tensor,
        pose: Tensor,
        valid: Tensor | None = None,
        parallel: DataParallel | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """MSE of standardised joint angles over valid samples; ``pose (B, T, J)``.

        With ``parallel``, ``x`` is this worker's shard and the loss is scaled so that DDP's
        gradient average is the global batch's: the valid samples of every shard together
        divide the sum (shards with more IK failures weigh less, as in one process)."""
        out = self.decoder(self.encoder(x))
        b, k, _ = out.shape
        n = k * self.cfg.patch
        pred = out.reshape(b, n, self.joints)
        target = (pose[:, :n] - self.pose_mean) / self.pose_std
        err = (pred - target).square().mean(dim=-1)  # (B, n)
        if valid is not None:
            w = valid[:, :n].to(err.dtype)
            count = w.sum()
            if parallel is not None and parallel.active:
                count = parallel.all_reduce(count.detach()) / parallel.world_size
            loss = (err * w).sum() / count.clamp_min(1.0)
        else:
            loss = err.mean()
        return loss, {"loss": loss.item()}


def train_mae(
    cfg: MAEConfig,
    x: Tensor,
    *,
    seed: int = 0,
    rotate: bool = False,
    ring: Sequence[int] | None = None,
    hooks: Sequence[EpochHook] = (),
    parallel: DataParallel | None = None,
    name: str = "mae",
) -> tuple[MAE, Fit]:
    """Pre-train an MAE on windows ``x (N, T, C)`` (EMG or pose, on ``x``'s device).

    Inputs are standardised by ``x``'s per-channel statistics; ``rotate`` adds the ring's
    channel-rotation augmentation (EMG) to the channels ``ring`` (None: all;
    :func:`emgcore.gestures.rotate_channels`). Masks are drawn for the global batch, then
    sharded.
    """
    parallel = parallel or DataParallel()
    with seeded(seed) as gen:
        model = MAE(cfg, x.shape[2], x.shape[1]).to(x.device)
        model.encoder.set_scale(*channel_stats(x))
        net = parallel.wrap(model)

        def step(idx: Tensor, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
            keep, restore = random_masking(len(idx), model.encoder.n_tokens, cfg.mask_ratio, g)
            keep, restore = keep.to(x.device), restore.to(x.device)
            xb = x[parallel.shard(idx)]  # this worker reads its shard only
            if rotate:
                xb = rotate_channels(xb, g, ring=ring, parallel=parallel)
            shard = parallel.shard(torch.arange(len(idx), device=x.device))
            return net(xb, keep[shard], restore[shard])

        result = fit(
            model, step, len(x), cfg, name=name, gen=gen, hooks=hooks, parallel=parallel,
            streams=(x,),
        )  # fmt: skip
    return model, result


def train_poset(
    cfg: MAEConfig,
    x: Tensor,
    pose: Tensor,
    valid: Tensor,
    *,
    seed: int = 0,
    rotate: bool = True,
    ring: Sequence[int] | None = None,
    hooks: Sequence[EpochHook] = (),
    parallel: DataParallel | None = None,
) -> tuple[PoseT, Fit]:
    """Train PoseT to regress ``pose (N, T, J)`` from EMG ``x (N, T, C)`` (valid samples);
    ``rotate`` rolls the ``ring`` channels as :func:`train_mae` does."""
    parallel = parallel or DataParallel()
    with seeded(seed) as gen:
        model = PoseT(cfg, x.shape[2], pose.shape[2], x.shape[1]).to(x.device)
        model.encoder.set_scale(*channel_stats(x))
        mean, std = channel_stats(pose, valid)
        model.pose_mean.copy_(mean)
        model.pose_std.copy_(std.clamp_min(1e-6))
        net = parallel.wrap(model)

        def step(idx: Tensor, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
            local = parallel.shard(idx)  # this worker reads its shard only
            xb = x[local]
            if rotate:
                xb = rotate_channels(xb, g, ring=ring, parallel=parallel)
            return net(xb, pose[local], valid[local], parallel)

        result = fit(
            model, step, len(x), cfg, name="poset", gen=gen, hooks=hooks, parallel=parallel,
            streams=(x, pose, valid),
        )  # fmt: skip
    return model, result
