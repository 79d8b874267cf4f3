"""CPEP: contrastive alignment of EMG to a frozen pose encoder (papers/cpep.txt Sec. 2.3, App. B).

The EMG encoder (initialised from the EMG-MAE) and a one-layer projection head ``h`` map a window
to ``u = l2(h(E_x(x)[CLS]))``; the frozen pose-MAE encoder gives the anchor ``v = l2(E_p(p)[CLS])``;
the loss is CLIP's symmetric InfoNCE with a learnable temperature initialised at 0.02. Only the
EMG side trains: the pose encoder is the fixed anchor.

Table 2's ablations are config switches: ``freeze_emg`` (only the head trains), ``emg_init =
"random"``, ``pool = "mean"`` (average of the patch tokens instead of [CLS]); EMBridge's CPEP-LS is
``label_smoothing = 0.1`` and its "EMBridge w/o Q-Former" is ``cascle_alpha > 0`` (CPEP + CASCLe).

CPEP trains 100 epochs, batch 256 (CPEP App. B: "Batch size is 256 and training runs for 100
epochs"); EMBridge A.6 retrains it for 40 as a baseline, which a config can ask for
(``cpep.epochs: 40``). Choices where the papers are silent: the projection head is one
``Linear(d, d)`` ("1-layer, hidden size 256"), with the MAE's optimiser (AdamW lr 1e-4, weight
decay 1e-5). The downstream EMG embedding (linear probe and zero-shot) is ``u``, the space the
pose anchor lives in.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emgcore.distributed import DataParallel
from emgcore.gestures import rotate_channels
from emgcore.models.losses import Gather, cascle_targets, clip_loss, soft_cross_entropy
from emgcore.models.mae import TokenEncoder
from emgcore.models.nn import seeded
from emgcore.training import EpochHook, Fit, batched, fit

POOLS = ("cls", "mean")
INITS = ("mae", "random")


@dataclass(frozen=True)
class CascleConfig:
    """CASCLe's soft targets (EMBridge Sec. 2.2.3); shared by EMBridge and CPEP + CASCLe."""

    n_clusters: int = 138  # N_c: k-means centres of the frozen pose embeddings
    top_k: int = 5  # k_c: clusters kept per pose (the paper: 10 and 20 degrade)
    tau: float = 0.1  # tau_s: soft-target temperature (papers silent on the value)
    similarity: str = "cosine"  # cosine | l1 | l2 (EMBridge Fig. 4)

    def __post_init__(self) -> None:
        if self.similarity not in ("cosine", "l1", "l2"):
            raise ValueError(f"cascle.similarity: {self.similarity!r} is not cosine, l1 or l2")
        if self.n_clusters < 1 or self.top_k < 1 or not self.tau > 0:
            raise ValueError("cascle.n_clusters, top_k and tau must be positive")


@dataclass(frozen=True)
class CPEPConfig:
    """CPEP training; defaults are the paper's (App. B)."""

    temperature: float = 0.02  # initial tau (learnable)
    learn_temperature: bool = True
    pool: str = "cls"  # cls | mean (CPEP-AvgPool)
    emg_init: str = "mae"  # mae | random (CPEP-E_x RandInit)
    freeze_emg: bool = False  # CPEP-E_x Frozen: only the projection head trains
    label_smoothing: float = 0.0  # CPEP-LS: 0.1
    cascle_alpha: float = 0.0  # > 0: CPEP + alpha CASCLe ("EMBridge w/o Q-Former")
    cascle: CascleConfig = field(default_factory=CascleConfig)
    lr: float = 1e-4
    weight_decay: float = 1e-5
    batch_size: int = 256  # global batch: the negatives
    epochs: int = 100  # CPEP App. B (EMBridge A.6 retrains the baseline for 40)
    restart_epochs: int = 10  # cosine annealing with warm restarts, T_0 in epochs
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"cpep.pool: {self.pool!r} is not one of {POOLS}")
        if self.emg_init not in INITS:
            raise ValueError(f"cpep.emg_init: {self.emg_init!r} is not one of {INITS}")
        if not self.temperature > 0:
            raise ValueError(f"cpep.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"cpep.label_smoothing must be in [0, 1), got {self.label_smoothing}")


def frozen(encoder: TokenEncoder) -> TokenEncoder:
    """A detached, gradient-free copy of ``encoder`` (the pose anchor)."""
    enc = copy.deepcopy(encoder).requires_grad_(False)
    return enc.eval()


class CPEP(nn.Module):
    """EMG encoder + projection head aligned to a frozen pose encoder."""

    def __init__(self, cfg: CPEPConfig, emg_encoder: TokenEncoder, pose_encoder: TokenEncoder):
        super().__init__()
        self.cfg = cfg
        self.emg = copy.deepcopy(emg_encoder)
        if cfg.emg_init == "random":
            self.emg.reset_parameters()
        self.emg.requires_grad_(not cfg.freeze_emg)
        self.pose = frozen(pose_encoder)
        self.head = nn.Linear(emg_encoder.dim, pose_encoder.dim)
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / cfg.temperature)), requires_grad=cfg.learn_temperature
        )
        self.register_buffer("centroids", torch.zeros(0, pose_encoder.dim))

    def train(self, mode: bool = True) -> CPEP:
        super().train(mode)
        self.pose.eval()  # the anchor never changes mode
        return self

    def embed_emg(self, x: Tensor) -> Tensor:
        """``u = l2(h(E_x(x)))``: EMG windows ``(B, T, C) -> (B, d)`` unit vectors."""
        return F.normalize(self.head(self.emg.summary(x, self.cfg.pool)), dim=-1)

    @torch.no_grad()
    def embed_pose(self, p: Tensor) -> Tensor:
        """``v = l2(E_p(p)[CLS])``: pose windows ``(B, T, J) -> (B, d)`` unit vectors."""
        return F.normalize(self.pose.summary(p), dim=-1)

    def forward(
        self, x: Tensor, pose: Tensor, *, gather: Gather | None = None, rank: int = 0
    ) -> tuple[Tensor, dict[str, float]]:
        """Symmetric InfoNCE (+ alpha CASCLe) of a batch of paired windows."""
        u, v = self.embed_emg(x), self.embed_pose(pose)
        cfg = self.cfg
        loss = clip_loss(
            u, v, self.logit_scale, label_smoothing=cfg.label_smoothing, gather=gather, rank=rank
        )
        metrics = {"infonce": loss.item()}
        if cfg.cascle_alpha > 0:
            all_v = gather(v) if gather else v
            c = cfg.cascle
            t = cascle_targets(
                v, all_v, self.centroids, c.top_k, c.tau, rank=rank, metric=c.similarity
            )
            scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
            cascle = soft_cross_entropy(scale * u @ all_v.T, t)
            loss = loss + cfg.cascle_alpha * cascle
            metrics["cascle"] = cascle.item()
        metrics["loss"] = loss.item()
        metrics["temperature"] = float(1.0 / self.logit_scale.detach().exp())
        return loss, metrics


def pose_centroids(v: Tensor, n_clusters: int, seed: int = 0) -> Tensor:
    """CASCLe's communities: k-means centres of unit pose embeddings ``v (N, d)``, L2-normalised.

    ``N_c`` is capped at the number of distinct embeddings (a small corpus cannot have 138).
    """
    from sklearn.cluster import KMeans

    z = F.normalize(v.detach().double().cpu(), dim=1).numpy()
    k = min(n_clusters, len(np.unique(z.round(6), axis=0)))
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(z)
    c = torch.as_tensor(km.cluster_centers_, dtype=v.dtype, device=v.device)
    return F.normalize(c, dim=1)


def train_cpep(
    cfg: CPEPConfig,
    emg_encoder: TokenEncoder,
    pose_encoder: TokenEncoder,
    x: Tensor,
    pose: Tensor,
    *,
    seed: int = 0,
    rotate: bool = True,
    ring: Sequence[int] | None = None,
    hooks: Sequence[EpochHook] = (),
    parallel: DataParallel | None = None,
) -> tuple[CPEP, Fit]:
    """Align EMG windows ``x (N, T, C)`` to their poses ``(N, T, J)`` (on ``x``'s device);
    ``rotate`` rolls the ``ring`` channels (None: all; :func:`emgcore.gestures.rotate_channels`)."""
    parallel = parallel or DataParallel()
    with seeded(seed) as gen:
        model = CPEP(cfg, emg_encoder, pose_encoder).to(x.device)
        if cfg.cascle_alpha > 0:
            v = batched(model.embed_pose, pose)
            model.centroids = pose_centroids(v, cfg.cascle.n_clusters, seed).to(x.device)
        net = parallel.wrap(model)

        def step(idx: Tensor, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
            local = parallel.shard(idx)  # this worker reads its shard only
            xb = x[local]
            if rotate:
                xb = rotate_channels(xb, g, ring=ring, parallel=parallel)
            return net(xb, pose[local], gather=parallel.gather, rank=parallel.rank)

        result = fit(
            model, step, len(x), cfg, name="cpep", gen=gen, hooks=hooks, parallel=parallel,
            streams=(x, pose),
        )  # fmt: skip
    return model, result
