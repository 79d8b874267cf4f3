"""EMBridge: a Q-Former between the EMG encoder and a frozen pose encoder (papers/embridge.txt).

Sec. 2.2.1: ``M = 16`` learnable queries pass through 4 self-attention blocks (each with its
feed-forward layer) initialised from the pose-MAE encoder, with a randomly initialised
cross-attention layer over the EMG encoder's tokens after the self-attention of every other block
(blocks 0 and 2: 2 layers). Output ``Q' (B, M, d)``.

Losses, ``L = InfoNCE + alpha CASCLe + lambda MPRL``:

* InfoNCE EMG -> pose (eq. 1, one direction: the pose side is frozen): for sample ``i`` the query
  most similar to its own pose embedding ``v_i`` is ``u_i``; ``q_ij = softmax_j(u_i . v_j / tau)``
  over the (global) batch, cosine similarities, learnable ``tau`` (initialised at 0.02 as CPEP's;
  the paper does not give EMBridge's).
* CASCLe (eqs. 3-5): the same ``q_ij`` against soft targets from pose-community affinities
  (:func:`emgcore.models.losses.cascle_targets`); centres from k-means of frozen pose embeddings.
* MPRL (eq. 2): a second pass of ``[Q'; P~]`` through the same self-attention blocks with no
  cross-attention, where ``P~`` are the pose tokens with a ratio ``r`` replaced by a mask token;
  queries attend only to queries, pose tokens to everything; a linear ``g`` maps the pose
  outputs back to pose patches; the loss is the squared L2 norm of each hidden token's error
  (all ``S * J`` values of its patch), averaged over the hidden tokens. We feed ``Q'`` (the
  first pass's output, as eq. 2's text says) rather than BLIP-2's re-run of the raw queries, so
  the pose can only be rebuilt from what the queries extracted from EMG. The pose tokens use a
  trainable copy of the pose-MAE's tokenizer (the pose encoder itself stays frozen).

Variants (Table 3; config ``soft``): ``cascle`` (EMBridge), ``none`` (InfoNCE only: with
``lam = 0`` the plain Q-Former), ``label_smoothing`` (targets smoothed by 0.1, replacing
InfoNCE + alpha CASCLe), ``softclip`` (instance-level soft targets from pose-pose similarity).

Downstream embeddings: linear probes take the mean of the L2-normalised queries (the paper's
"query averaging", which avoids choosing a query with the label's pose); zero-shot retrieval
scores an EMG window against a pose by the best query's cosine (BLIP-2's ITC max over queries).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emgcore.distributed import DataParallel
from emgcore.gestures import rotate_channels
from emgcore.models.cpep import CascleConfig, frozen, pose_centroids
from emgcore.models.losses import (
    Gather,
    cascle_targets,
    one_hot_targets,
    soft_cross_entropy,
    softclip_targets,
)
from emgcore.models.mae import TokenEncoder
from emgcore.models.nn import seeded
from emgcore.models.transformer import Attention, patchify
from emgcore.training import EpochHook, Fit, batched, fit

SOFT = ("cascle", "none", "label_smoothing", "softclip")


@dataclass(frozen=True)
class EMBridgeConfig:
    """EMBridge training; defaults are the paper's best setting where it gives one (A.6, Fig. 4)."""

    n_queries: int = 16  # M (Fig. 4: 8 / 16 / 32)
    cross_every: int = 2  # a cross-attention layer every other block
    temperature: float = 0.02  # initial InfoNCE tau (learnable)
    soft: str = "cascle"  # cascle | none | label_smoothing | softclip
    alpha: float = 1.0  # CASCLe weight
    # MPRL weight; 0 turns MPRL off. The paper gives no value ("robust to variations in lambda").
    # Ours, measured: MPRL is eq. 2, a squared norm over a token's S*J standardised values (~5000
    # at init for S 200, J 20, against InfoNCE ~15), and at lambda = 1 it drew 86% of the
    # gradient on the weights it shares with the alignment at init and EMBridge did not align at
    # all: zero-shot exactly chance (0.250 in and unseen, posealign-sim). Measured there (one
    # seed): lambda 0 -> ZS in 0.413 / unseen 0.253, 0.001 -> 0.375 / 0.241, 0.01 -> 0.369 /
    # 0.294 (the best unseen, MPRL's point in Table 3), 0.1 -> 0.209 / 0.250, 1 -> 0.250 /
    # 0.250. So 0.01, where MPRL's gradient is ~6% of the alignment's at init
    # (tests/models/test_pose_losses.py).
    lam: float = 0.01
    mask_ratio: float = 0.5  # r: pose tokens hidden in MPRL
    label_smoothing: float = 0.1  # for soft = label_smoothing (Q-Former-LS)
    softclip_tau: float = 0.1  # instance soft-target temperature for soft = softclip
    cascle: CascleConfig = field(default_factory=CascleConfig)
    lr: float = 1e-4
    weight_decay: float = 1e-5
    batch_size: int = 256  # global batch: the negatives
    epochs: int = 40  # EMBridge A.6: "CPEP, Q-Former, and EMBridge are all trained for 40 epochs"
    restart_epochs: int = 10
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.soft not in SOFT:
            raise ValueError(f"embridge.soft: {self.soft!r} is not one of {SOFT}")
        if self.n_queries < 1 or self.cross_every < 1:
            raise ValueError("embridge.n_queries and cross_every must be >= 1")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"embridge.mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.alpha < 0 or self.lam < 0:
            raise ValueError("embridge.alpha and lam must be >= 0")


class CrossAttention(nn.Module):
    """Pre-LN residual cross-attention: queries ``(B, M, d)`` read EMG tokens ``(B, L, d)``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)

    def forward(self, q: Tensor, context: Tensor) -> Tensor:
        return q + self.attn(self.ln(q), context)


def query_mask(m: int, n: int, device: torch.device) -> Tensor:
    """MPRL's attention mask over ``[queries (m); pose tokens (n)]``: True = may attend.

    Queries see only queries; pose tokens see every query and every pose token.
    """
    allowed = torch.ones(m + n, m + n, dtype=torch.bool, device=device)
    allowed[:m, m:] = False
    return allowed


class QFormer(nn.Module):
    """Learnable queries through pose-initialised blocks with cross-attention to EMG tokens."""

    def __init__(self, cfg: EMBridgeConfig, pose_encoder: TokenEncoder, heads: int):
        super().__init__()
        d = pose_encoder.dim
        self.queries = nn.Parameter(torch.randn(1, cfg.n_queries, d) * 0.02)
        self.blocks = copy.deepcopy(pose_encoder.blocks).requires_grad_(True)
        self.norm = copy.deepcopy(pose_encoder.norm).requires_grad_(True)
        self.cross = nn.ModuleDict(
            {str(i): CrossAttention(d, heads) for i in range(0, len(self.blocks), cfg.cross_every)}
        )
        # MPRL: a trainable copy of the pose tokenizer, a mask token and the decoding layer g
        # (only built when used: DDP requires every trainable parameter to get a gradient)
        self.mprl = cfg.lam > 0
        if self.mprl:
            self.pose_tokens = copy.deepcopy(pose_encoder.tokenizer).requires_grad_(True)
            self.pose_mask = nn.Parameter(torch.randn(1, 1, d) * 0.02)
            self.g = nn.Linear(d, pose_encoder.patch * pose_encoder.channels)

    def forward(self, emg_tokens: Tensor) -> Tensor:
        """``Q' (B, M, d)`` from EMG encoder tokens ``(B, L, d)``."""
        h = self.queries.expand(emg_tokens.shape[0], -1, -1)  # not len(): see MAE encoder
        for i, blk in enumerate(self.blocks):
            h = h + blk.drop(blk.attn(blk.ln1(h)))
            if str(i) in self.cross:
                h = self.cross[str(i)](h, emg_tokens)
            h = h + blk.mlp(blk.ln2(h))
        return self.norm(h)

    def reconstruct(self, q_out: Tensor, pose: Tensor, hidden: Tensor) -> Tensor:
        """MPRL (EMBridge eq. 2): ``1/|M| sum_{m in M} ||g(H_P[m]) - P[m]||_2^2`` over the
        hidden pose tokens ``M``, rebuilt from ``Q'`` and the visible pose tokens; a scalar.

        A token's error is summed over its ``S * J`` values (standardised pose units), not
        averaged: a per-element mean would be ``1 / (S J)`` of eq. 2 (1/4000 at S = 200, J =
        20), a scale no lambda in Fig. 4's range makes up. ``pose (B, T, J)``; ``hidden (B, L)``
        bool, True where a pose token is masked, the same number in every row
        (:func:`pose_token_mask`), so the mean over all hidden tokens of the batch is the batch
        mean of each sample's eq. 2. As in MAE's decoder a hidden token is the
        mask token plus its position. Only visible patches are embedded and only hidden ones
        decoded (the loss reads nothing else): the 4000-wide pose tokenizer and ``g`` are the
        pass's largest matrices.
        """
        tok = self.pose_tokens
        n = hidden.shape[1]
        n_hid = int(hidden[0].sum())
        if not torch.all(hidden.sum(dim=1) == n_hid):
            raise ValueError("MPRL masks must hide the same number of tokens in every sample")
        order = hidden.to(torch.int8).argsort(dim=1, stable=True)  # (B, L): visible, then hidden
        vis, hid = order[:, : n - n_hid], order[:, n - n_hid :]
        patches = patchify(tok.standardise(pose), tok.patch)  # (B, L, S*J)
        pos = tok.pos[1:]  # (L, d)
        visible = tok.embed(_take(patches, vis)) + pos[vis]  # (B, L_vis, d)
        masked = self.pose_mask + pos[hid]  # (B, L_hid, d)
        m = q_out.shape[1]
        h = torch.cat([q_out, visible, masked], dim=1)  # (B, M + L, d)
        mask = query_mask(m, n, h.device)
        *body, last = self.blocks
        for blk in body:
            h = blk(h, mask)
        h = last(h, mask, first=m + n - n_hid)  # only the hidden tokens' outputs are read
        pred = self.g(self.norm(h))  # (B, L_hid, S*J)
        return (pred - _take(patches, hid)).square().sum(dim=-1).mean()


def _take(t: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx (B, K)`` of ``t (B, L, F)`` -> ``(B, K, F)``."""
    return torch.gather(t, 1, idx[..., None].expand(-1, -1, t.shape[-1]))


class EMBridge(nn.Module):
    """EMG encoder + Q-Former aligned to a frozen pose encoder."""

    def __init__(
        self, cfg: EMBridgeConfig, emg_encoder: TokenEncoder, pose_encoder: TokenEncoder, heads: int
    ):
        super().__init__()
        if emg_encoder.dim != pose_encoder.dim:
            raise ValueError(
                f"EMG encoder width {emg_encoder.dim} != pose encoder width {pose_encoder.dim}"
            )
        self.cfg = cfg
        self.emg = copy.deepcopy(emg_encoder).requires_grad_(True)
        self.pose = frozen(pose_encoder)
        self.qformer = QFormer(cfg, pose_encoder, heads)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))
        self.register_buffer("centroids", torch.zeros(0, pose_encoder.dim))

    def train(self, mode: bool = True) -> EMBridge:
        super().train(mode)
        self.pose.eval()
        return self

    def queries(self, x: Tensor) -> Tensor:
        """L2-normalised query outputs ``(B, M, d)`` of EMG windows ``x (B, T, C)``."""
        return F.normalize(self.qformer(self.emg(x)), dim=-1)

    def embed_emg(self, x: Tensor) -> Tensor:
        """Linear-probe embedding: the mean of the normalised queries, ``(B, d)``."""
        return self.queries(x).mean(dim=1)

    @torch.no_grad()
    def embed_pose(self, p: Tensor) -> Tensor:
        """``v = l2(E_p(p)[CLS])``, ``(B, T, J) -> (B, d)``."""
        return F.normalize(self.pose.summary(p), dim=-1)

    def forward(
        self,
        x: Tensor,
        pose: Tensor,
        hidden: Tensor | None = None,
        *,
        gather: Gather | None = None,
        rank: int = 0,
    ) -> tuple[Tensor, dict[str, float]]:
        """``L = InfoNCE + alpha CASCLe + lambda MPRL`` of paired windows.

        ``hidden (B, L_pose)``: the MPRL mask (True = hidden), drawn by the caller from an
        explicit generator; required when ``lam > 0``.
        """
        cfg = self.cfg
        q_raw = self.qformer(self.emg(x))  # (B, M, d)
        q = F.normalize(q_raw, dim=-1)
        v = self.embed_pose(pose)  # (B, d)
        all_v = gather(v) if gather else v  # (N, d)
        best = (q @ v[:, :, None]).squeeze(-1).argmax(dim=1)  # (B,): m*(i)
        u = q[torch.arange(len(q), device=q.device), best]  # (B, d)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * u @ all_v.T  # (B, N)
        n, n_all = len(u), len(all_v)
        smooth = cfg.label_smoothing if cfg.soft == "label_smoothing" else 0.0
        hard = one_hot_targets(n, n_all, rank, smooth, u.device)
        metrics: dict[str, float] = {}
        if cfg.soft == "softclip":
            loss = soft_cross_entropy(logits, softclip_targets(v, all_v, cfg.softclip_tau))
            metrics["softclip"] = loss.item()
        else:
            loss = soft_cross_entropy(logits, hard)
            metrics["infonce"] = loss.item()
            if cfg.soft == "cascle" and cfg.alpha > 0:
                c = cfg.cascle
                t = cascle_targets(
                    v, all_v, self.centroids, c.top_k, c.tau, rank=rank, metric=c.similarity
                )
                cascle = soft_cross_entropy(logits, t)
                loss = loss + cfg.alpha * cascle
                metrics["cascle"] = cascle.item()
        if cfg.lam > 0:
            if hidden is None:
                raise ValueError("EMBridge with lam > 0 needs the MPRL mask `hidden`")
            mprl = self.qformer.reconstruct(q_raw, pose, hidden)
            loss = loss + cfg.lam * mprl
            metrics["mprl"] = mprl.item()
        metrics["loss"] = loss.item()
        metrics["temperature"] = float(1.0 / self.logit_scale.detach().exp())
        return loss, metrics


def pose_token_mask(batch: int, n_tokens: int, ratio: float, gen: torch.Generator) -> Tensor:
    """MPRL's hidden pose tokens ``(B, L)`` bool: ``round(r L)`` per sample (at least one)."""
    n_hide = max(1, round(n_tokens * ratio))
    order = torch.rand(batch, n_tokens, generator=gen, device=gen.device).argsort(dim=1)
    hidden = torch.zeros(batch, n_tokens, dtype=torch.bool, device=gen.device)
    return hidden.scatter_(1, order[:, :n_hide], True)


def train_embridge(
    cfg: EMBridgeConfig,
    emg_encoder: TokenEncoder,
    pose_encoder: TokenEncoder,
    x: Tensor,
    pose: Tensor,
    *,
    heads: int = 8,
    seed: int = 0,
    rotate: bool = True,
    ring: Sequence[int] | None = None,
    hooks: Sequence[EpochHook] = (),
    parallel: DataParallel | None = None,
) -> tuple[EMBridge, Fit]:
    """Train EMBridge on paired windows ``x (N, T, C)``, ``pose (N, T, J)`` (``x``'s device).

    CASCLe's centres are k-means of the frozen pose embeddings of this training set, computed
    once before training (the paper: "offline"). ``rotate`` rolls the ``ring`` channels (None:
    all; :func:`emgcore.gestures.rotate_channels`).
    """
    parallel = parallel or DataParallel()
    with seeded(seed) as gen:
        model = EMBridge(cfg, emg_encoder, pose_encoder, heads).to(x.device)
        if cfg.soft == "cascle" and cfg.alpha > 0:
            v = batched(model.embed_pose, pose)
            model.centroids = pose_centroids(v, cfg.cascle.n_clusters, seed).to(x.device)
        net = parallel.wrap(model)
        n_pose_tokens = pose_encoder.n_tokens

        def step(idx: Tensor, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
            local = parallel.shard(idx)  # this worker reads its shard only
            xb = x[local]
            if rotate:  # shifts drawn for the global batch, before the mask, as in one process
                xb = rotate_channels(xb, g, ring=ring, parallel=parallel)
            hidden = pose_token_mask(len(idx), n_pose_tokens, cfg.mask_ratio, g).to(x.device)
            shard = parallel.shard(torch.arange(len(idx), device=x.device))
            return net(
                xb,
                pose[local],
                hidden[shard] if cfg.lam > 0 else None,
                gather=parallel.gather,
                rank=parallel.rank,
            )

        result = fit(
            model, step, len(x), cfg, name="embridge", gen=gen, hooks=hooks, parallel=parallel,
            streams=(x, pose),
        )  # fmt: skip
    return model, result
