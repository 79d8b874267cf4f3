"""KinEMbed: contrastive EMG-kinematics dual encoders (papers/kinembed.txt, Sec. 3, App. B.2).

Phase I (here): an EMG-feature encoder and a kinematic encoder map a window's 256 features ``x`` and
its DoA ``y`` onto a shared unit hypersphere, trained with a cross-modal contrastive loss. Phase II
(:mod:`emgcore.models.decoder`): the frozen EMG encoder feeds a causal TCN that regresses the DoA.

Architecture variants (stage 2 of the paper's search; the paper names them only, these are our
readings, chosen to each change one thing):

* ``standard``: the loss sees the L2-normalised encoder outputs directly.
* ``projection_head``: SimCLR's two-layer head (E -> E -> E, ReLU) on the EMG side during
  training; the loss sees ``l2(head(f_emg(x)))``, downstream uses ``l2(f_emg(x))``. (Paper winner.)
* ``residual``: skip connections around every hidden layer of both encoders.
* ``asymmetric``: the kinematic encoder is a single linear map (no hidden layers), so the shared
  space is a rotation-and-scale of DoA space and all capacity sits on the EMG side.
* ``momentum_ema``: the EMG embeddings are contrasted with an exponential-moving-average copy of
  the kinematic encoder (stable targets, as in MoCo/BYOL); the online kinematic encoder is trained
  against the EMG side. The momentum rises linearly from ``ema_momentum`` to 1 over training, a pure
  function of the step so a resumed run continues exactly. This holds under every loss, VICReg
  included (see :meth:`KinEmbed.forward`).

Also unstated in the paper: the kinematic encoder uses the EMG encoder's layer recipe (BatchNorm,
ReLU, dropout; the paper says "the same activations"), and VICReg, which needs unconstrained
variances, acts on the un-normalised encoder outputs.
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
from emgcore.models.losses import Gather, nt_xent, soft_nt_xent, vicreg
from emgcore.models.nn import MLP, seeded
from emgcore.training import EpochHook, NonFiniteLossError

LOSSES = ("nt_xent", "soft_nt_xent", "vicreg")
VARIANTS = ("standard", "projection_head", "residual", "asymmetric", "momentum_ema")


@dataclass(frozen=True)
class KinEmbedConfig:
    """Phase I hyper-parameters; defaults are the paper's winners (Appendix B.2)."""

    loss: str = "nt_xent"  # nt_xent | soft_nt_xent | vicreg (stage 1)
    temperature: float = 0.2  # tau of the NT-Xent losses (stage 1)
    embed_dim: int = 16  # E, the shared embedding size (stage 1)
    variant: str = "projection_head"  # one of VARIANTS (stage 2)
    emg_hidden: tuple[int, ...] = (256, 128)  # EMG encoder hidden widths (stage 3)
    kin_hidden: tuple[int, ...] = (64, 32)  # kinematic encoder hidden widths (stage 3)
    lr: float = 3e-3  # AdamW learning rate (stage 4)
    batch_size: int = 256  # contrastive batch: the negatives (stage 4)
    dropout: float = 0.1  # dropout in both encoders (stage 4)
    weight_decay: float = 1e-4  # AdamW weight decay
    epochs: int = 200  # upper bound on contrastive epochs
    t_max: int = 200  # cosine annealing period, epochs
    patience: int = 20  # early stopping on validation loss, epochs
    val_fraction: float = 0.1  # last fraction of every training session, fixed validation set
    grad_clip: float = 1.0  # max gradient norm
    ema_momentum: float = 0.99  # starting EMA momentum (momentum_ema variant only)

    def inert_fields(self) -> dict[str, tuple[str, ...]]:
        """Fields training does not read given the others -> the fields deciding it
        (:func:`emgcore.config.effective`; read off :class:`KinEmbed` and :func:`train_kinembed`).
        """
        out: dict[str, tuple[str, ...]] = {}
        if self.loss == "vicreg":  # VICReg has no temperature
            out["temperature"] = ("loss",)
        if self.variant != "momentum_ema":  # no EMA copy to update
            out["ema_momentum"] = ("variant",)
        if self.variant == "asymmetric":  # the kinematic encoder is one linear map
            out["kin_hidden"] = ("variant",)
        if self.patience >= self.epochs:  # early stopping cannot trigger before the last epoch
            out["patience"] = ("epochs",)
        return out

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"kinembed.loss: {self.loss!r} is not one of {LOSSES}")
        if self.variant not in VARIANTS:
            raise ValueError(f"kinembed.variant: {self.variant!r} is not one of {VARIANTS}")
        for name in ("temperature", "lr", "batch_size", "embed_dim", "epochs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"kinembed.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"kinembed.dropout must be in [0, 1), got {self.dropout}")


class KinEmbed(nn.Module):
    """Dual encoders. ``embed(x (N, F)) -> (N, E)`` unit vectors; ``loss(x, y)`` for training."""

    def __init__(self, cfg: KinEmbedConfig, n_features: int, n_dof: int):
        super().__init__()
        self.cfg = cfg
        residual = cfg.variant == "residual"
        self.f_emg = MLP(
            n_features, cfg.emg_hidden, cfg.embed_dim, dropout=cfg.dropout, residual=residual
        )
        kin_hidden = () if cfg.variant == "asymmetric" else cfg.kin_hidden
        self.f_kin = MLP(n_dof, kin_hidden, cfg.embed_dim, dropout=cfg.dropout, residual=residual)
        e = cfg.embed_dim
        self.head = (
            nn.Sequential(nn.Linear(e, e), nn.ReLU(), nn.Linear(e, e))
            if cfg.variant == "projection_head"
            else None
        )
        self.f_kin_ema: MLP | None = None
        if cfg.variant == "momentum_ema":
            self.f_kin_ema = copy.deepcopy(self.f_kin).requires_grad_(False)

    def embed(self, x: Tensor) -> Tensor:
        """The downstream representation: ``l2(f_emg(x))``, ``(N, F) -> (N, E)``."""
        return F.normalize(self.f_emg(x), dim=1)

    def forward(
        self, x: Tensor, y: Tensor, *, gather: Gather | None = None, rank: int = 0
    ) -> tuple[Tensor, dict[str, float]]:
        """Contrastive loss of a batch ``x (N, F)``, ``y (N, J)`` -> ``(loss, metrics)``.

        ``forward`` (not a ``loss`` method) so DistributedDataParallel's hooks see the call.
        """
        h_emg = self.f_emg(x)  # (N, E)
        h_emg_loss = self.head(h_emg) if self.head is not None else h_emg
        h_kin = self.f_kin(y)  # (N, E)
        if self.f_kin_ema is not None:
            # EMG learns against the stable EMA targets; the online kinematic encoder learns
            # against (detached) EMG embeddings. The same under every loss: App. B.2 crosses the
            # variants with stage 1's winning loss, whichever it is, and BYOL uses a momentum
            # target with a non-contrastive loss; VICReg skipping the EMA branch made this
            # variant train exactly like `standard` (issue 14).
            with torch.no_grad():
                h_kin_ema = self.f_kin_ema(y)
            loss = 0.5 * (
                self._loss(h_emg_loss, h_kin_ema, y, gather, rank)
                + self._loss(h_emg_loss.detach(), h_kin, y, gather, rank)
            )
        else:
            loss = self._loss(h_emg_loss, h_kin, y, gather, rank)
        with torch.no_grad():
            align = F.cosine_similarity(h_emg, h_kin, dim=1).mean().item()
        return loss, {"loss": loss.item(), "alignment": align}

    def _loss(
        self, h_a: Tensor, h_b: Tensor, y: Tensor, gather: Gather | None, rank: int
    ) -> Tensor:
        """The configured loss between encoder outputs ``h_a, h_b (N, E)``."""
        if self.cfg.loss == "vicreg":
            return vicreg(h_a, h_b, gather=gather)
        z_a, z_b = F.normalize(h_a, dim=1), F.normalize(h_b, dim=1)
        tau = self.cfg.temperature
        if self.cfg.loss == "soft_nt_xent":
            return soft_nt_xent(z_a, z_b, y, tau, gather=gather, rank=rank)
        return nt_xent(z_a, z_b, tau, gather=gather, rank=rank)

    @torch.no_grad()
    def update_ema(self, step: int, total_steps: int) -> None:
        """``p_ema = m p_ema + (1 - m) p`` with ``m`` rising linearly to 1 (pure in ``step``)."""
        if self.f_kin_ema is None:
            return
        m0 = self.cfg.ema_momentum
        m = m0 + (1.0 - m0) * min(step / max(total_steps, 1), 1.0)
        for p_ema, p in zip(self.f_kin_ema.parameters(), self.f_kin.parameters(), strict=True):
            p_ema.mul_(m).add_(p.detach(), alpha=1 - m)
        for b_ema, b in zip(self.f_kin_ema.buffers(), self.f_kin.buffers(), strict=True):
            b_ema.copy_(b)


@dataclass
class History:
    """Per-epoch metrics of one training run, and the epoch whose weights were kept."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val: float = math.inf


def split_validation(
    segments: Sequence[tuple[np.ndarray, np.ndarray]], fraction: float
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Fixed validation split: the last ``fraction`` of every training session.

    Contiguous tails rather than random windows: overlapping neighbours of a random validation
    window would sit in the training set and make the validation loss optimistic.
    """
    tr_x, tr_y, va_x, va_y = [], [], [], []
    for x, y in segments:
        cut = len(x) - max(1, round(fraction * len(x))) if fraction > 0 else len(x)
        tr_x.append(x[:cut])
        tr_y.append(y[:cut])
        va_x.append(x[cut:])
        va_y.append(y[cut:])
    cat = np.concatenate
    return (cat(tr_x), cat(tr_y)), (cat(va_x), cat(va_y))


def train_kinembed(
    cfg: KinEmbedConfig,
    segments: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    seed: int = 0,
    hooks: Sequence[EpochHook] = (),
    parallel: DataParallel | None = None,
    device: str | torch.device = "cpu",
) -> tuple[KinEmbed, History]:
    """Phase I on training sessions ``segments = [(x (N_i, F), y (N_i, J)), ...]``.

    AdamW, cosine annealing over ``t_max`` epochs, gradient clipping, early stopping on the fixed
    validation split with the best weights restored. ``y`` should be standardised (Soft-NT-Xent's
    kernel is isotropic). Each hook is called as ``hook(epoch, metrics, model)`` after every epoch.
    Under ``parallel`` (several workers) every worker holds the data, draws the same shuffles and
    trains on its shard of each global batch of ``cfg.batch_size``; losses see the global batch.
    A NaN or infinite loss raises :class:`NonFiniteLossError`.
    """
    with seeded(seed) as gen:
        return _train(cfg, segments, gen, hooks, parallel or DataParallel(), device)


def _train(
    cfg: KinEmbedConfig,
    segments: Sequence[tuple[np.ndarray, np.ndarray]],
    gen: torch.Generator,
    hooks: Sequence[EpochHook],
    parallel: DataParallel,
    device: str | torch.device,
) -> tuple[KinEmbed, History]:
    (x_tr, y_tr), (x_va, y_va) = split_validation(segments, cfg.val_fraction)
    model = KinEmbed(cfg, x_tr.shape[1], y_tr.shape[1]).to(device)
    net = parallel.wrap(model)  # DDP + global-batch BatchNorm with several workers
    xt = torch.as_tensor(x_tr, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y_tr, dtype=torch.float32, device=device)
    xv = torch.as_tensor(x_va, dtype=torch.float32, device=device)
    yv = torch.as_tensor(y_va, dtype=torch.float32, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.t_max)
    n = len(xt)
    batch = min(cfg.batch_size, n - n % parallel.world_size)
    parallel.local_batch(batch)  # fails early, naming the field, if it does not divide
    steps_per_epoch = max(1, n // batch)  # drop the ragged last batch: BatchNorm and negatives
    total_steps = steps_per_epoch * cfg.epochs
    history, best_state, stale, step = History(), None, 0, 0
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=gen).to(device)
        losses = []
        for b in range(steps_per_epoch):
            idx = parallel.shard(order[b * batch : (b + 1) * batch])
            loss, step_metrics = net(xt[idx], yt[idx], gather=parallel.gather, rank=parallel.rank)
            if not math.isfinite(step_metrics["loss"]):
                raise NonFiniteLossError(
                    f"kinembed loss is {step_metrics['loss']} at epoch {epoch}, step {b} "
                    f"(lr {cfg.lr}, loss {cfg.loss}, temperature {cfg.temperature})"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            model.update_ema(step, total_steps)
            losses.append(step_metrics["loss"])  # already a float: no second device sync
        sched.step()
        val = evaluate_loss(model, xv, yv, batch) if len(xv) else float(np.mean(losses))
        metrics = {
            "train_loss": float(np.mean(losses)),
            "val_loss": val,
            "lr": sched.get_last_lr()[0],
            "samples": float(batch * steps_per_epoch),  # the epoch's, all workers
        }
        history.epochs.append(metrics)
        for hook in hooks:
            hook(epoch, metrics, model)
        if val < history.best_val - 1e-6:
            history.best_val, history.best_epoch, stale = val, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history


@torch.no_grad()
def evaluate_loss(model: KinEmbed, x: Tensor, y: Tensor, batch: int) -> float:
    """Mean contrastive loss over fixed consecutive batches of the validation set (eval mode)."""
    model.eval()
    losses, weights = [], []
    for b in range(0, len(x), batch):
        xb, yb = x[b : b + batch], y[b : b + batch]
        if len(xb) < 2:
            continue
        losses.append(model(xb, yb)[0].item())
        weights.append(len(xb))
    return float(np.average(losses, weights=weights)) if losses else math.nan


@torch.no_grad()
def embed(model: KinEmbed, x: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Frozen EMG embeddings ``(N, F) -> (N, E)`` float32 (eval mode, no projection head)."""
    model.eval()
    dev = next(model.parameters()).device
    out = [
        model.embed(torch.as_tensor(x[b : b + batch], dtype=torch.float32, device=dev)).cpu()
        for b in range(0, len(x), batch)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, model.cfg.embed_dim), np.float32)
