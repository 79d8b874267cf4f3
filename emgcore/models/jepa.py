"""EMG-JEPA (papers/emg-jepa.txt Sec. 3, App. A): masked latent prediction, then pose fine-tuning.

Tokens (Sec. 3.1.2-3.1.3): a window ``(B, T, C)`` is cut per channel into ``K = T // t``
patches of ``t`` samples, ``(B, C, K, t)``; a featurizer maps each patch to ``feat_dim`` on its
own (no convolution across patches: that would leak masked content), a linear map takes it to the
encoder ``width``, and fixed sinusoidal temporal (shared by all channels) and channel (shared by
all patches) embeddings are added, each on its own half of the features (:func:`token_positions`);
tokens are flattened channel-major to ``N = C * K``, token ``c * K + k`` (the order
:mod:`emgcore.models.jepa_masks` indexes).

Pre-training (Sec. 3.2, A.1): the context encoder sees the observed tokens only; the target
encoder (an EMA of the context encoder) sees all tokens, and its layer-normed outputs at the
target positions are what the predictor must produce from the context plus mask tokens. L1 loss.

Choices where the paper is silent or contradicts itself (each also a config value):

* Widths: A.1's featurizer outputs 384 while the encoder is 768 wide (and Sec. 3.1.2 says the
  featurizer outputs "the model's feature dimension"). We keep both numbers: the featurizer's
  ``feat_dim`` = 384, then a linear projection to ``width`` = 768 (set them equal to drop it).
* Joint count: Sec. 3.3 says J = 22, A.2 says 20 outputs; the pose head has as many outputs as
  the data has joint angles (emg2pose: 20), so both are a matter of the dataset.
* Patch size ``t`` is not given: 100 samples (50 ms at 2 kHz; K = 20 per 1-s window); it is
  one of the sweep's axes.
* Predictor: I-JEPA's (project to 384, sinusoidal positions added to context and mask tokens,
  blocks, project back); 8 heads and an MLP of 4 x 384 = 1536, "mirroring" the encoder. All
  three target blocks in one pass (they are disjoint; mask tokens carry positions only).
* Positions (Sec. 3.1.3 gives E_temp (K x d) and E_chan (C x d), both sinusoidal, added): the
  channel code fills the first d / 2 features and the time code the last d / 2 (MAE / I-JEPA's
  2-D sincos). Both over all d features at the same frequencies, their sum is symmetric in
  (channel, patch): token (c, k) got the position of (k, c). The channel code is the channel's
  index ("the channel identity"), on rings and grids alike.
* Targets are ``layer_norm`` of the target encoder's output (I-JEPA); the EMA momentum is
  A.1's 0.996 at every step (``ema_schedule="ramp"``: I-JEPA's linear 0.996 -> 1.0 over
  training instead, a pure function of the step).
* After the 1000-step linear warm-up the learning rate stays constant; weight decay 0.05 and
  batch 64 (not given).
* Pose head (Sec. 3.3, A.2): encoder tokens projected to 256; one learned query attends over
  them (8 heads) in a pre-LN cross-attention block with a 1536-wide feed-forward and dropout
  0.1; then Sec. 3.3's two-layer ReLU MLP to the joint angles.
* Dropout (A.1, A.2: "a dropout rate of 0.1", place not given): on the residual branches and
  the feed-forward, not on the attention probabilities (timm ViT / I-JEPA); see
  :class:`emgcore.models.transformer.Attention` for the measured cost of the other choice.
* The convolutional decoder of Table 5: tokens averaged over channels, two 1-D convolutions
  (kernel 3) over the K time patches, the last patch's features to the joint angles.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emgcore.distributed import DataParallel
from emgcore.models.jepa_masks import MaskConfig, Masks, MaskSampler, apply_masks
from emgcore.models.nn import seeded
from emgcore.models.transformer import Attention, Block, init_weights, sincos_1d
from emgcore.recording import ChannelLayout
from emgcore.training import EpochHook, Fit, batched, batches, fit

FEATURIZERS = ("mlp", "conv", "raw")
DECODERS = ("cross_attention", "conv")
EMA_SCHEDULES = ("constant", "ramp")


@dataclass(frozen=True)
class JEPAConfig:
    """The encoder, predictor and pre-training recipe; defaults are the paper's (A.1)."""

    patch: int = 100  # t: samples per token (not given; a sweep axis)
    featurizer: str = "mlp"  # mlp | conv | raw (Table 3)
    feat_hidden: int = 256  # A.1: featurizer's intermediate layer
    feat_dim: int = 384  # A.1: featurizer output, projected to ``width``
    width: int = 768  # encoder feature dimension
    depth: int = 6
    heads: int = 8
    mlp_dim: int = 1536
    dropout: float = 0.1
    pred_width: int = 384
    pred_depth: int = 4
    pred_heads: int = 8
    pred_mlp_dim: int = 1536
    # A.1: "EMA with a decay factor of 0.996": constant by default; "ramp" goes linearly from
    # ema[0] to ema[1] over training (I-JEPA's schedule, this code's default before issue 14)
    ema: tuple[float, float] = (0.996, 1.0)  # constant: ema[0]; ramp: ema[0] -> ema[1]
    ema_schedule: str = "constant"  # constant | ramp
    masks: MaskConfig = field(default_factory=MaskConfig)
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05
    warmup_steps: int = 1000
    grad_clip: float = 5.0
    batch_size: int = 64  # global batch over all workers
    epochs: int = 10
    restart_epochs: int = 10  # unused with a warm-up (training.fit's other schedule)

    def __post_init__(self) -> None:
        if self.featurizer not in FEATURIZERS:
            raise ValueError(f"featurizer must be one of {FEATURIZERS}, got {self.featurizer!r}")
        for name in ("patch", "width", "depth", "heads", "pred_width", "pred_depth", "epochs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for w, h in ((self.width, self.heads), (self.pred_width, self.pred_heads)):
            if w % h or w % 4:  # 4: two sinusoidal halves of sin / cos pairs (token_positions)
                raise ValueError(f"width {w} must be divisible by 4 and by {h} heads")
        if not 0.0 <= self.ema[0] <= self.ema[1] <= 1.0:
            raise ValueError(f"ema must be 0 <= start <= end <= 1, got {self.ema}")
        if self.ema_schedule not in EMA_SCHEDULES:
            raise ValueError(
                f"ema_schedule must be one of {EMA_SCHEDULES}, got {self.ema_schedule!r}"
            )


@dataclass(frozen=True)
class PoseHeadConfig:
    """The pose decoder and its fine-tuning (A.2); defaults are the paper's."""

    decoder: str = "cross_attention"  # cross_attention | conv (Table 5)
    hidden: int = 256
    heads: int = 8
    mlp_dim: int = 1536
    dropout: float = 0.1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05
    warmup_steps: int = 1000
    grad_clip: float = 5.0
    batch_size: int = 64
    epochs: int = 25  # at most: early stopping on validation JA-MAE
    patience: int = 5  # epochs without a better validation JA-MAE before stopping
    restart_epochs: int = 25  # unused with a warm-up
    freeze_encoder: bool = False  # the paper fine-tunes the whole encoder

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by {self.heads} heads")


def ema_momentum(
    step: int, total: int, ema: tuple[float, float], schedule: str = "constant"
) -> float:
    """EMA momentum after ``step`` of ``total`` optimiser steps (A.1).

    ``constant``: ``ema[0]`` at every step (the paper's 0.996). ``ramp``: linear from ``ema[0]``
    to ``ema[1]``, clamped after ``total``. A pure function of the step either way, so a resumed
    run continues the same schedule."""
    if schedule == "constant":
        return ema[0]
    if schedule != "ramp":
        raise ValueError(f"ema schedule must be one of {EMA_SCHEDULES}, got {schedule!r}")
    start, end = ema
    return start + (end - start) * min(1.0, step / max(1, total))


class Featurizer(nn.Module):
    """``(B, T, C)`` -> ``(B, C, K, feat_dim)``: each channel's patches featurized.

    ``mlp``: ``t -> hidden -> feat_dim`` with GELU, per patch (A.1). ``raw``: one linear map of
    the patch, no featurization beyond what reaching the width needs (Table 3's raw row). ``conv``:
    a strided convolution of each channel whose kernel spans two patches (half a patch into each
    neighbour), then GELU and a linear map; it leaks masked content into neighbours, as Sec.
    3.1.2 warns, and is kept as Table 3's ablation.
    """

    def __init__(self, kind: str, patch: int, hidden: int, out: int):
        super().__init__()
        self.kind, self.patch = kind, patch
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(patch, hidden), nn.GELU(), nn.Linear(hidden, out))
        elif kind == "raw":
            self.net = nn.Linear(patch, out)
        else:
            pad = patch // 2
            self.conv = nn.Conv1d(1, hidden, kernel_size=2 * patch, stride=patch, padding=pad)
            self.net = nn.Sequential(nn.GELU(), nn.Linear(hidden, out))

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        k = t // self.patch
        if k == 0:
            raise ValueError(f"window of {t} samples is shorter than one patch of {self.patch}")
        x = x[:, : k * self.patch].transpose(1, 2)  # (B, C, K*t)
        if self.kind == "conv":
            h = self.conv(x.reshape(b * c, 1, k * self.patch))[..., :k]  # (B*C, hidden, K)
            return self.net(h.transpose(1, 2)).reshape(b, c, k, -1)
        return self.net(x.reshape(b, c, k, self.patch))


class Tokens(nn.Module):
    """Featurize, project to ``width``, add the temporal and channel embeddings, flatten:
    ``(B, T, C) -> (B, N = C * K, width)``."""

    def __init__(self, cfg: JEPAConfig, channels: int, n_patches: int):
        super().__init__()
        self.featurizer = Featurizer(cfg.featurizer, cfg.patch, cfg.feat_hidden, cfg.feat_dim)
        self.proj = (
            nn.Linear(cfg.feat_dim, cfg.width) if cfg.feat_dim != cfg.width else nn.Identity()
        )
        pos = token_positions(channels, n_patches, cfg.width)
        self.register_buffer("pos", pos, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        z = self.proj(self.featurizer(x))  # (B, C, K, d)
        return z.flatten(1, 2) + self.pos


def token_positions(channels: int, n_patches: int, dim: int) -> Tensor:
    """``(C * K, dim)`` fixed positions, row ``c * K + k`` for channel ``c``, patch ``k``.

    Sec. 3.1.3's channel embedding (channel index, shared by every patch) fills features
    ``[0, dim / 2)`` and its temporal embedding (patch index, shared by every channel) features
    ``[dim / 2, dim)``; each is zero on the other's half, so adding them (as the paper does) is
    concatenating them. Why not both over all ``dim``: at the same frequencies
    ``E_chan[c] + E_temp[k]`` equals ``E_chan[k] + E_temp[c]``, and (channel c, patch k) was
    indistinguishable from (channel k, patch c) (75% of tokens at 16 channels x 20 patches).
    On a grid the channel code is still the channel's index, as the paper's "channel identity";
    electrode coordinates are not used. ``dim`` must be divisible by 4.
    """
    if dim % 4:
        raise ValueError(f"positions need a width divisible by 4, got {dim}")
    half = dim // 2
    c = sincos_1d(channels, half)[:, None, :].expand(channels, n_patches, half)
    t = sincos_1d(n_patches, half)[None, :, :].expand(channels, n_patches, half)
    return torch.cat([c, t], dim=-1).reshape(channels * n_patches, dim)


class Encoder(nn.Module):
    """Tokens then Transformer blocks: ``(B, T, C) -> (B, N, width)``, or only the tokens at
    ``keep (B, M)`` (the context encoder's observed block) -> ``(B, M, width)``."""

    def __init__(self, cfg: JEPAConfig, channels: int, n_patches: int):
        super().__init__()
        self.channels, self.n_patches, self.patch = channels, n_patches, cfg.patch
        self.tokens = Tokens(cfg, channels, n_patches)
        ratio = cfg.mlp_dim / cfg.width
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, ratio, cfg.dropout) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width)
        self.width = cfg.width
        init_weights(self)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        z = self.tokens(x)
        if keep is not None:
            z = apply_masks(z, keep)
        for blk in self.blocks:
            z = blk(z)
        return self.norm(z)


class Predictor(nn.Module):
    """Context tokens ``(B, M, width)`` at ``obs (B, M)`` -> predictions ``(B, P, width)`` for
    the tokens at ``target (B, P)``."""

    def __init__(self, cfg: JEPAConfig, channels: int, n_patches: int):
        super().__init__()
        w = cfg.pred_width
        self.inp, self.out = nn.Linear(cfg.width, w), nn.Linear(w, cfg.width)
        self.mask_token = nn.Parameter(torch.zeros(w))
        self.register_buffer("pos", token_positions(channels, n_patches, w), persistent=False)
        ratio = cfg.pred_mlp_dim / w
        self.blocks = nn.ModuleList(
            Block(w, cfg.pred_heads, ratio, cfg.dropout) for _ in range(cfg.pred_depth)
        )
        self.norm = nn.LayerNorm(w)
        init_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, ctx: Tensor, obs: Tensor, target: Tensor) -> Tensor:
        pos = self.pos.expand(len(ctx), -1, -1)
        h = self.inp(ctx) + apply_masks(pos, obs)
        q = self.mask_token + apply_masks(pos, target)  # (B, P, w)
        z = torch.cat([h, q], dim=1)
        for blk in self.blocks[:-1]:
            z = blk(z)
        z = self.blocks[-1](z, first=h.shape[1])  # outputs for the mask tokens only
        return self.out(self.norm(z))


class JEPA(nn.Module):
    """Context encoder, EMA target encoder and predictor for ``channels x window`` inputs."""

    def __init__(self, cfg: JEPAConfig, channels: int, window: int):
        super().__init__()
        self.cfg = cfg
        k = window // cfg.patch
        self.encoder = Encoder(cfg, channels, k)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.predictor = Predictor(cfg, channels, k)

    def train(self, mode: bool = True) -> JEPA:
        super().train(mode)
        self.target_encoder.eval()  # targets without dropout: the EMA model is only read
        return self

    def forward(
        self, x: Tensor, masks: Masks, shuffle: Tensor | None = None, per_window: bool = False
    ) -> Tensor:
        """L1 between predicted and target latents at the target tokens (Sec. 3.2.3).

        ``shuffle`` (a permutation of the batch) takes each window's targets from another
        window: the control of the real-signal check, whose loss a model that reads its context
        must beat clearly. ``per_window``: one loss per window ``(B,)`` instead of the mean."""
        with torch.no_grad():
            h = self.target_encoder(x)
            h = F.layer_norm(h, h.shape[-1:])
            want = apply_masks(h, masks.target)
            if shuffle is not None:
                want = want[shuffle]
        ctx = self.encoder(x, masks.obs)
        pred = self.predictor(ctx, masks.obs, masks.target)
        if per_window:
            return (pred - want).abs().mean(dim=(1, 2))
        return F.l1_loss(pred, want)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """``target = m target + (1 - m) context``, parameter by parameter."""
        for t, c in zip(self.target_encoder.parameters(), self.encoder.parameters(), strict=True):
            t.lerp_(c.detach(), 1.0 - momentum)


class CrossAttentionHead(nn.Module):
    """A learned query attends over the encoder tokens; then a two-layer ReLU MLP:
    ``(B, N, width) -> (B, J)``."""

    def __init__(self, cfg: PoseHeadConfig, width: int, joints: int):
        super().__init__()
        d = cfg.hidden
        self.proj = nn.Linear(width, d)
        self.query = nn.Parameter(torch.zeros(1, 1, d))
        self.ln_q, self.ln_kv, self.ln_ff = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, cfg.heads)
        self.ff = nn.Sequential(
            nn.Linear(d, cfg.mlp_dim),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.mlp_dim, d),
            nn.Dropout(cfg.dropout),
        )
        self.mlp = nn.Sequential(
            nn.Linear(d, d), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(d, joints)
        )
        init_weights(self)
        nn.init.normal_(self.query, std=0.02)

    def forward(self, z: Tensor, channels: int) -> Tensor:
        kv = self.ln_kv(self.proj(z))
        q = self.query.expand(z.shape[0], -1, -1)  # not len(z): export keeps B dynamic
        q = q + self.attn(self.ln_q(q), kv)
        q = q + self.ff(self.ln_ff(q))
        return self.mlp(q[:, 0])


class ConvHead(nn.Module):
    """Table 5's convolutional decoder: tokens averaged over channels, 1-D convolutions over the
    K time patches, the last patch to the joint angles: ``(B, C*K, width) -> (B, J)``."""

    def __init__(self, cfg: PoseHeadConfig, width: int, joints: int):
        super().__init__()
        d = cfg.hidden
        self.net = nn.Sequential(
            nn.Conv1d(width, d, 3, padding=1),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Conv1d(d, d, 3, padding=1),
            nn.GELU(),
        )
        self.out = nn.Linear(d, joints)

    def forward(self, z: Tensor, channels: int) -> Tensor:
        b, n, w = z.shape
        per_time = z.reshape(b, channels, n // channels, w).mean(dim=1)  # (B, K, width)
        return self.out(self.net(per_time.transpose(1, 2))[..., -1])


class PoseModel(nn.Module):
    """Encoder + pose head: ``(B, T, C) -> (B, J)`` joint angles at the window's last sample.

    The head regresses standardised angles (per-joint mean and std of the training targets, so
    MSE weighs joints alike and the first steps are well scaled); ``forward`` returns angles in
    the data's unit.
    """

    def __init__(self, encoder: Encoder, head_cfg: PoseHeadConfig, joints: int):
        super().__init__()
        self.encoder = encoder
        head = CrossAttentionHead if head_cfg.decoder == "cross_attention" else ConvHead
        self.head = head(head_cfg, encoder.width, joints)
        self.register_buffer("y_mean", torch.zeros(joints))
        self.register_buffer("y_std", torch.ones(joints))

    def forward(self, x: Tensor, standardised: bool = False) -> Tensor:
        z = self.head(self.encoder(x), self.encoder.channels)
        return z if standardised else z * self.y_std + self.y_mean


def mask_sampler(
    cfg: JEPAConfig, channels: int, window: int, layout: ChannelLayout | None = None
) -> MaskSampler:
    """The sampler for this model's token grid (``layout`` None: channels on a ring)."""
    return MaskSampler(cfg.masks, channels, window // cfg.patch, layout)


def pretrain(
    cfg: JEPAConfig,
    x: Tensor,
    *,
    layout: ChannelLayout | None = None,
    seed: int = 0,
    hooks: Sequence[EpochHook] = (),
    parallel: DataParallel | None = None,
    name: str = "jepa",
    shuffled_targets: bool = False,
) -> tuple[JEPA, Fit]:
    """Self-supervised pre-training on windows ``x (N, T, C)`` (on ``x``'s device).

    Each step draws the global batch's masks from the run's generator (what the collate function
    does for a loader), so every data-parallel worker holds the same masks and trains on its
    shard; the target encoder follows by EMA after every optimiser step. ``shuffled_targets``
    trains the control model whose targets come from other windows of the batch.
    """
    parallel = parallel or DataParallel()
    n, window, channels = x.shape
    _, per_epoch = batches(n, cfg.batch_size, parallel, name)
    total = per_epoch * cfg.epochs
    with seeded(seed) as gen:
        model = JEPA(cfg, channels, window).to(x.device)
        sampler = mask_sampler(cfg, channels, window, layout)
        net = parallel.wrap(model)

        def step(idx: Tensor, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
            m = sampler(len(idx), g)
            shard = parallel.shard(torch.arange(len(idx)))
            local = Masks(m.obs[shard].to(x.device), m.target[shard].to(x.device), m.blocks)
            perm = None
            if shuffled_targets:  # a derangement: no window keeps its own targets
                perm = (
                    torch.arange(len(shard)) + 1 + torch.randint(len(shard) - 1, (1,), generator=g)
                ) % len(shard)
            loss = net(x[parallel.shard(idx)], local, perm)
            return loss, {"loss": float(loss.detach())}

        def follow(steps: int) -> None:
            model.update_target(ema_momentum(steps, total, cfg.ema, cfg.ema_schedule))

        result = fit(
            model,
            step,
            n,
            cfg,
            name=name,
            gen=gen,
            hooks=hooks,
            parallel=parallel,
            after_step=follow,
            streams=(x,),
        )
    return model, result


@torch.no_grad()
def masked_losses(
    model: JEPA,
    x: Tensor,
    sampler: MaskSampler,
    *,
    shuffled: bool = False,
    seed: int = 0,
    batch: int = 64,
) -> Tensor:
    """Masked-latent L1 of ``model`` on each window of ``x (N, T, C)`` under fixed mask draws
    (the same draws for the same ``seed``): ``(N,)`` in a seeded random order of the windows.
    ``shuffled`` scores each window's predictions against another, random, window's targets."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    out = []
    for a in range(0, len(x) - 1, batch):
        xb = x[order[a : a + batch]]
        if len(xb) < 2:
            break
        m = sampler(len(xb), gen)
        masks = Masks(m.obs.to(x.device), m.target.to(x.device), m.blocks)
        perm = torch.roll(torch.arange(len(xb)), 1) if shuffled else None
        out.append(model(xb, masks, perm, per_window=True).cpu())
    return torch.cat(out)


def ja_mae(pred: Tensor | np.ndarray, true: Tensor | np.ndarray, unit: str = "rad") -> float:
    """Joint-angle mean absolute error in degrees (Sec. 4.2): the mean over joints (and
    windows) of ``|y - y_hat|``; ``unit`` is the angles' unit, ``rad`` or ``deg``."""
    err = np.abs(np.asarray(pred, np.float64) - np.asarray(true, np.float64)).mean()
    if unit in ("rad", "radian", "radians"):
        return float(np.degrees(err))
    if unit in ("deg", "degree", "degrees"):
        return float(err)
    raise ValueError(f"joint angles in {unit!r}: JA-MAE needs 'rad' or 'deg'")


class EarlyStopping:
    """Epoch hook: validation JA-MAE after every epoch (added to the epoch's metrics as
    ``val_ja_mae``), the best weights kept, ``stop`` once ``patience`` epochs brought no
    improvement. :meth:`restore` puts the best weights back."""

    def __init__(self, x: Tensor, y: Tensor, unit: str, patience: int):
        self.x, self.y, self.unit, self.patience = x, y, unit, patience
        self.best, self.best_epoch, self.stop = float("inf"), -1, False
        self.state: dict[str, Tensor] | None = None

    def __call__(self, epoch: int, metrics: Mapping[str, float], model: Any) -> None:
        model.eval()
        score = ja_mae(batched(model, self.x), self.y.cpu(), self.unit)
        if isinstance(metrics, dict):
            metrics["val_ja_mae"] = score
        if score < self.best:
            self.best, self.best_epoch = score, epoch
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.stop = epoch - self.best_epoch >= self.patience

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


def finetune(
    cfg: PoseHeadConfig,
    encoder: Encoder,
    x: Tensor,
    y: Tensor,
    val: tuple[Tensor, Tensor],
    *,
    unit: str = "rad",
    seed: int = 0,
    hooks: Sequence[EpochHook] = (),
    parallel: DataParallel | None = None,
    name: str = "pose",
) -> tuple[PoseModel, Fit, float]:
    """Fine-tune ``encoder`` with a pose head on windows ``x (N, T, C)`` -> angles ``y (N, J)``
    (MSE), early-stopped on validation JA-MAE; returns the best model, the fit and its score.

    A randomly initialised ``encoder`` makes this the fully supervised baseline (Sec. 4.2).
    """
    parallel = parallel or DataParallel()
    with seeded(seed) as gen:
        model = PoseModel(encoder, cfg, y.shape[1]).to(x.device)
        model.y_mean.copy_(y.mean(dim=0))
        model.y_std.copy_(y.std(dim=0).clamp_min(1e-6))
        encoder.requires_grad_(not cfg.freeze_encoder)
        net = parallel.wrap(model)
        stopper = EarlyStopping(*val, unit=unit, patience=cfg.patience)

        def step(idx: Tensor, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
            local = parallel.shard(idx)
            want = (y[local] - model.y_mean) / model.y_std
            loss = F.mse_loss(net(x[local], standardised=True), want)
            return loss, {"loss": float(loss.detach())}

        hooks = (stopper, *hooks)
        result = fit(
            model, step, len(x), cfg, name=name, gen=gen, hooks=hooks, parallel=parallel,
            streams=(x,),
        )  # fmt: skip
        stopper.restore(model)
    model.eval()
    return model, result, stopper.best
