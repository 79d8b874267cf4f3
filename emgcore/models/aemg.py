"""AEMG's networks: the Neuro-Syntax Transformer (NST), the vector-quantised neural codebook and
masked token modelling (MTM).

Source: AEMG (papers/aemg.txt; notes/aemg.md, stages 3-5). Input is a batch of *sentences*:
``values (B, S, C, L)`` (``S`` contraction tokens of ``C`` channels of the common topology and at
most ``L`` samples, :mod:`emgcore.contractions`), ``length (B, S)`` each token's valid samples
(0 for a padding token), ``phase (B, S)`` (:data:`~emgcore.contractions.PHASES`) and
``position (B, C, P)`` the source electrodes' position features of each channel
(:mod:`emgcore.topology`; the spatial condition).

* **NST** (stage 3): per token a 1-D convolution over time (channels in, ``dim`` out) and GELU,
  averaged over the token's valid time steps; plus a spatial condition (a linear map of the
  sentence's electrode-position features), a phase embedding and a sinusoidal order embedding;
  then pre-LN Transformer blocks (:mod:`emgcore.models.transformer`).
* **VQ** (stage 4): the NST's outputs, projected to ``code_dim`` and L2-normalised, are matched to
  the nearest L2-normalised code (cosine); a decoder reconstructs the token sentence from the
  codes. Loss = reconstruction MSE + ``beta * ||l2(z) - sg(code)||^2`` (commitment); the codebook
  term ``||sg(l2(z)) - code||^2`` is minimised by its exponential-moving-average solution (the
  paper's "codebook updated by EMA"), not by gradient.
* **MTM** (stage 5): a fresh NST whose input embeddings of masked tokens are replaced by a learned
  mask embedding (the conditions stay: the model knows where and which phase the hidden token
  is) predicts each masked token's code index from the frozen VQ tokenizer; cross-entropy.

Choices the paper leaves open, and the released code's defects we do not repeat:

* *Padding is masked everywhere* (the released code attends to it, reconstructs it, masks it and
  pools it): padded samples are zeroed before the convolution and excluded from its average;
  padding tokens are never attended to (each token may always attend to itself, so a
  sentence of padding stays finite), never enter a loss, are never mask targets, are not
  counted in the codebook's EMA statistics, and are not pooled.
* *Straight-through gradient* ``z_q = z + sg(code - z)`` (the released code has none, so the
  reconstruction never reached the encoder).
* *EMA* with decay ``ema_decay`` (0.99, LaBraM's) on the sums of assigned unit latents; a code
  is its sum's direction. *Initialisation*: the first training batch's latents, sampled (the
  paper is silent; random unit vectors collapsed onto one code in our tests, and k-means, as
  SoundStream does, costs a pass for little more). *Dead codes*: a code whose EMA assignment
  count falls below ``dead_code_threshold`` (5%) of the mean is re-seeded with a random real
  latent of the batch. Under data parallelism the batch statistics are summed over workers
  first, so every worker's codebook stays identical.
* *Commitment weight* ``beta = 0.25`` (VQ-VAE's), not the 1 the paper's unweighted sum implies:
  at 1 the commitment pulled every latent onto the first code they shared before the
  reconstruction could separate them (our pre-training test collapsed to one code).
* *Convolution*: kernel 7, stride 1, ``same`` padding (the paper: "1-D convolution + GELU"; the
  token's time axis then pools by the masked average).
* *Mask ratio* 0.5 of each sentence's real tokens (the released code's 50%), at least one.
* Own VQ, not ``vector-quantize-pytorch``: the EMA statistics must skip padding and be summed over
  Train workers, and per-epoch usage (perplexity, dead codes) is read from the same counts; the
  quantiser is 60 lines tested here, the library would add ``einops``/``einx`` and its own
  distributed and masking conventions for the same few operations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emgcore.contractions import PHASES, SentenceSet
from emgcore.distributed import DataParallel
from emgcore.errors import InvalidValueError
from emgcore.models.transformer import Block, init_weights, sincos_1d
from emgcore.training import EpochHook


@dataclass(frozen=True)
class AEMGConfig:
    """Sizes of the NST, codebook and MTM. Defaults: the paper's Base (width 256, depth 6, 8
    heads; 8192 codes of width 256); :meth:`small` is this machine's."""

    channels: int = 16  # C: the common topology's channels (the released code's 16)
    token_len: int = 200  # L: samples of the longest token (1 s at 200 Hz)
    sentence: int = 16  # S: tokens per sentence
    position_features: int = 4  # P: per-channel electrode-position features (emgcore.topology)
    dim: int = 256
    depth: int = 6
    heads: int = 8
    decoder_depth: int = 2  # the VQ's sentence decoder (paper silent)
    kernel: int = 7  # token embedding convolution (paper silent)
    codebook_size: int = 8192
    code_dim: int = 256
    ema_decay: float = 0.99
    dead_code_threshold: float = 0.05  # re-seed a code below this share of the mean EMA count
    beta: float = 0.25  # commitment weight
    # what the VQ decoder reconstructs: the token's z-scored samples (the paper) or its
    # per-channel log-amplitude spectrum (LaBraM's kind of target; see VQTokenizer)
    target: Literal["samples", "spectrum"] = "samples"
    mask_ratio: float = 0.5

    def __post_init__(self) -> None:
        for name in (
            "channels", "token_len", "sentence", "position_features", "dim", "depth", "heads",
            "kernel", "codebook_size", "code_dim",
        ):  # fmt: skip
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidValueError(f"{name} must be an integer >= 1, got {v!r}", field=name)
        if self.dim % self.heads or self.dim % 2:
            raise InvalidValueError(
                f"dim {self.dim} must be even and divisible by heads {self.heads}", field="dim"
            )
        for name in ("mask_ratio", "ema_decay"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise InvalidValueError(
                    f"{name} must be in (0, 1), got {getattr(self, name)!r}", field=name
                )
        if self.target not in ("samples", "spectrum"):
            raise InvalidValueError(
                f"target must be 'samples' or 'spectrum', got {self.target!r}", field="target"
            )
        if self.decoder_depth < 0 or self.beta < 0 or self.dead_code_threshold < 0:
            raise InvalidValueError(
                "decoder_depth, beta and dead_code_threshold must be >= 0", field="decoder_depth"
            )

    @classmethod
    def small(cls, **overrides) -> AEMGConfig:
        """Width 64, depth 2, 4 heads, 512 codes of width 32: a CPU-sized AEMG."""
        base = dict(dim=64, depth=2, heads=4, decoder_depth=1, codebook_size=512, code_dim=32)
        return cls(**(base | overrides))


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def valid_tokens(length: Tensor) -> Tensor:
    """``(B, S)`` bool: the real (non-padding) tokens of a batch of sentences."""
    return length > 0


def _attention_mask(valid: Tensor) -> Tensor:
    """``(B, 1, S, S)`` bool, True = may attend: every real key, and each token itself."""
    s = valid.shape[1]
    eye = torch.eye(s, dtype=torch.bool, device=valid.device)
    return valid[:, None, None, :] | eye


def in_token(length: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """``(B, S, L)`` 1 at each token's real samples (the first ``length``), 0 at padding."""
    return (torch.arange(n, device=length.device) < length[..., None]).to(dtype)


def masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``x (B, S, d)`` over the ``valid (B, S)`` positions: ``(B, d)`` (zeros where a
    row has none)."""
    w = valid.to(x.dtype)[..., None]
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


class TokenEmbedding(nn.Module):
    """``values (B, S, C, L)``, ``length (B, S)`` -> ``(B, S, dim)``: Conv1d over time, GELU,
    average over the token's valid time steps (padded samples zeroed first, so they reach
    nothing)."""

    def __init__(self, cfg: AEMGConfig):
        super().__init__()
        self.conv = nn.Conv1d(cfg.channels, cfg.dim, cfg.kernel, padding="same")

    def forward(self, values: Tensor, length: Tensor) -> Tensor:
        b, s, c, n = values.shape
        w = in_token(length, n, values.dtype)[:, :, None, :]  # (B, S, 1, L)
        x = (values * w).reshape(b * s, c, n)
        h = F.gelu(self.conv(x)).reshape(b, s, -1, n)  # (B, S, dim, L)
        return (h * w).sum(-1) / w.sum(-1).clamp_min(1.0)


class NST(nn.Module):
    """Neuro-Syntax Transformer: token embedding + spatial, phase and order conditions, then
    Transformer blocks. ``forward(batch, mask=None) -> (B, S, dim)`` (``batch``: ``values``,
    ``length``, ``phase``, ``position``, as :func:`as_batch` makes them);
    ``mask (B, S)`` bool replaces those tokens' embeddings by the learned mask embedding (MTM).
    Outputs at padding positions are defined (finite) but meaningless."""

    def __init__(self, cfg: AEMGConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = TokenEmbedding(cfg)
        self.spatial = nn.Linear(cfg.channels * cfg.position_features, cfg.dim)
        self.phase = nn.Embedding(len(PHASES), cfg.dim)
        self.register_buffer("order", sincos_1d(cfg.sentence, cfg.dim), persistent=False)
        self.mask_token = nn.Parameter(torch.zeros(cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        init_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, batch: dict[str, Tensor], mask: Tensor | None = None) -> Tensor:
        values, length = batch["values"], batch["length"]
        b = values.shape[0]  # not len(): it fixes an exported graph's batch size
        want = (self.cfg.sentence, self.cfg.channels, self.cfg.token_len)
        pos = (b, self.cfg.channels, self.cfg.position_features)
        if tuple(values.shape[1:]) != want or tuple(batch["position"].shape) != pos:
            raise InvalidValueError(
                f"sentences of shape {tuple(values.shape[1:])} (tokens, channels, samples) with "
                f"positions {tuple(batch['position'].shape[1:])} do not fit this model's {want} "
                f"and {pos[1:]}: set AEMGConfig sentence / channels / token_len / "
                "position_features from the tokenizer's",
                field="values",
            )
        valid = valid_tokens(length)
        x = self.embed(values, length)
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
        cond = self.spatial(batch["position"].flatten(1))[:, None, :]
        x = x + cond + self.phase(batch["phase"].long()) + self.order[: values.shape[1]]
        attn = _attention_mask(valid)
        for blk in self.blocks:
            x = blk(x, attn)
        return self.norm(x)

    def pool(self, batch: dict[str, Tensor]) -> Tensor:
        """``(B, dim)``: the mean output over each sentence's real tokens (the downstream
        embedding)."""
        return masked_mean(self(batch), valid_tokens(batch["length"]))


class NormEMACodebook(nn.Module):
    """L2-normalised codebook ``(K, D)`` updated by EMA, with dead-code re-seeding.

    ``forward(z (N, D)) -> (z_q, index, commit)``: ``z`` is L2-normalised, matched to the code of
    largest cosine, ``z_q`` is the straight-through ``l2(z) + sg(code - l2(z))``, ``commit`` the
    mean ``||l2(z) - sg(code)||^2``. :meth:`update` (training only) folds a batch's assignments
    into the EMA statistics; usage counts since :meth:`reset_usage` give :meth:`usage`.
    """

    def __init__(self, size: int, dim: int, decay: float, dead_threshold: float):
        super().__init__()
        self.decay, self.dead_threshold = decay, dead_threshold
        codes = F.normalize(torch.randn(size, dim), dim=-1)
        self.register_buffer("codes", codes)
        self.register_buffer("ema_count", torch.ones(size))
        self.register_buffer("ema_sum", codes.clone())
        self.register_buffer("used", torch.zeros(size))  # assignments since reset_usage()
        self.register_buffer("initialised", torch.tensor(False))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z = F.normalize(z.float(), dim=-1)
        index = (z @ self.codes.T).argmax(-1)
        code = self.codes[index]
        commit = (z - code).pow(2).sum(-1)
        return z + (code - z).detach(), index, commit

    @torch.no_grad()
    def update(self, z: Tensor, index: Tensor) -> None:
        """EMA step on the batch's latents ``z (N, D)`` (real tokens only) and their
        ``index (N,)``; statistics summed over data-parallel workers when there are several.

        The first call instead initialises every code to a random latent of the batch (random
        unit vectors collapse: the first batch's latents all fall nearest one of them), each
        with an equal share of the batch's count."""
        z = F.normalize(z.detach().float(), dim=-1)
        count = torch.bincount(index, minlength=len(self.codes)).float()
        total = torch.zeros_like(self.ema_sum).index_add_(0, index, z)
        if _distributed():
            torch.distributed.all_reduce(count)
            torch.distributed.all_reduce(total)
        if not self.initialised:
            share = max(float(count.sum()), 1.0) / len(self.codes)
            self._reseed(z, torch.ones_like(self.ema_count, dtype=torch.bool), share)
            self.initialised.fill_(True)
            return
        self.used += count
        self.ema_count.mul_(self.decay).add_(count, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(total, alpha=1 - self.decay)
        self.codes.copy_(F.normalize(self.ema_sum, dim=-1))
        # dead: fewer assignments (EMA) than dead_threshold x the uniform share
        dead = self.ema_count < self.dead_threshold * self.ema_count.mean()
        if dead.any():  # the same on every worker: the statistics are shared
            self._reseed(z, dead, float(self.ema_count.mean()))

    def _reseed(self, z: Tensor, which: Tensor, count: float) -> None:
        """Codes ``which`` become random batch latents (random unit vectors if this worker has
        none) with EMA count ``count``; rank 0's draw is broadcast, so every worker's codebook
        stays identical under data parallelism."""
        n = int(which.sum())
        g = torch.Generator(device="cpu").manual_seed(int(self.used.sum().item()) % 2**31)
        if len(z):
            seed = z[torch.randint(len(z), (n,), generator=g).to(z.device)]
        else:
            seed = F.normalize(torch.randn(n, self.codes.shape[1], generator=g), dim=-1)
            seed = seed.to(self.codes.device)
        if _distributed():
            torch.distributed.broadcast(seed, 0)
        self.codes[which] = seed
        self.ema_count[which] = count
        self.ema_sum[which] = seed * count

    def reset_usage(self) -> None:
        self.used.zero_()

    def usage(self) -> dict[str, float]:
        """:func:`codebook_usage` of the assignments since :meth:`reset_usage`."""
        return codebook_usage(self.used)


def codebook_usage(counts: Tensor) -> dict[str, float]:
    """Usage of a codebook from its per-code assignment ``counts (K,)``: ``perplexity`` (exp of
    the entropy of the assignment distribution; ``K`` when uniform, 1 when one code takes all;
    0 with no assignment) and ``dead_codes`` (codes never assigned)."""
    counts = counts.float()
    total = counts.sum()
    if total == 0:
        return {"perplexity": 0.0, "dead_codes": float(len(counts))}
    p = counts[counts > 0] / total
    return {
        "perplexity": float((-(p * p.log()).sum()).exp()),
        "dead_codes": float((counts == 0).sum()),
    }


class VQTokenizer(nn.Module):
    """Stage 4: NST encoder, normalised EMA codebook and a sentence decoder that reconstructs
    every real token's ``(C, L)`` values from the codes. :meth:`forward` returns the training loss
    and its parts; :meth:`codes` the code index of every token (``-1`` at padding)."""

    def __init__(self, cfg: AEMGConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = NST(cfg)
        self.to_code = nn.Linear(cfg.dim, cfg.code_dim)
        self.codebook = NormEMACodebook(
            cfg.codebook_size, cfg.code_dim, cfg.ema_decay, cfg.dead_code_threshold
        )
        self.from_code = nn.Linear(cfg.code_dim, cfg.dim)
        self.decoder = nn.ModuleList(Block(cfg.dim, cfg.heads) for _ in range(cfg.decoder_depth))
        self.out = nn.Linear(cfg.dim, cfg.channels * self.target_len)
        init_weights(self.to_code)
        init_weights(self.decoder)

    @property
    def target_len(self) -> int:
        """Values reconstructed per channel and token: samples, or rfft bins."""
        n = self.cfg.token_len
        return n if self.cfg.target == "samples" else n // 2 + 1

    def _target(self, values: Tensor, length: Tensor) -> tuple[Tensor, Tensor]:
        """What the decoder reconstructs, ``(B, S, C, target_len)``, and its weights (real
        samples of real tokens; every bin of a real token's spectrum).

        ``"spectrum"``: ``log1p |rfft|`` of the token's real samples (padding zeroed), scaled by
        ``1/sqrt(length)``: a stochastic signal's sample values are not a code's to carry (the
        samples target stays near MSE 1 on real EMG), its spectrum is. Not the paper's target:
        an option, compared in the README."""
        w = in_token(length, values.shape[-1], values.dtype)[:, :, None, :]  # (B, S, 1, L)
        if self.cfg.target == "samples":
            return values, w.expand_as(values)
        x = values * w
        amp = torch.fft.rfft(x.float(), dim=-1).abs() / length[..., None, None].clamp_min(1).sqrt()
        w = (length > 0).to(values.dtype)[:, :, None, None].expand_as(amp)
        return torch.log1p(amp), w

    def _quantise(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        z = self.to_code(self.encoder(batch))
        zq, index, commit = self.codebook(z)
        return z, zq, index, commit

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """The training loss (``forward``, so DistributedDataParallel sees the call):
        reconstruction MSE (of ``cfg.target``, real tokens only) + ``beta`` x commitment
        (real tokens); in training mode also the codebook's EMA step."""
        values, length = batch["values"], batch["length"]
        valid = valid_tokens(length)
        z, zq, index, commit = self._quantise(batch)
        if self.training:
            self.codebook.update(z[valid], index[valid])
        h = self.from_code(zq)
        attn = _attention_mask(valid)
        for blk in self.decoder:
            h = blk(h, attn)
        b, s, c, _ = values.shape
        rec = self.out(h).view(b, s, c, self.target_len)
        target, w = self._target(values, length)
        mse = ((rec - target).pow(2) * w).sum() / w.sum().clamp_min(1.0)
        commit = (commit * valid).sum() / valid.sum().clamp_min(1)
        loss = mse + self.cfg.beta * commit
        return loss, {"reconstruction": mse.item(), "commitment": commit.item()}

    @torch.no_grad()
    def codes(self, batch: dict[str, Tensor]) -> Tensor:
        """``(B, S)`` int64 code index of every token, ``-1`` at padding."""
        _, _, index, _ = self._quantise(batch)
        return torch.where(valid_tokens(batch["length"]), index, -1)


def mask_tokens(length: Tensor, ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """``(B, S)`` bool: ``ceil(ratio * n)`` of each sentence's ``n`` real tokens (at least one
    where ``n > 0``), uniformly at random; never a padding token."""
    valid = valid_tokens(length)
    score = torch.rand(length.shape, generator=generator).to(length.device)
    score = torch.where(valid, score, torch.inf)
    rank = score.argsort(1).argsort(1)  # each token's rank among its sentence's
    n_mask = (valid.sum(1, keepdim=True) * ratio).ceil().clamp_min(1)
    return (rank < n_mask) & valid


class MaskedTokenModel(nn.Module):
    """Stage 5: an NST and a head over the codebook; :meth:`forward` hides tokens and predicts their
    codes from the frozen tokenizer's ``targets (B, S)``; :meth:`embed` is the downstream
    encoder's pooled embedding ``(B, dim)`` (mean over real tokens)."""

    def __init__(self, cfg: AEMGConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = NST(cfg)
        self.head = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Linear(cfg.dim, cfg.codebook_size))

    def forward(
        self, batch: dict[str, Tensor], targets: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """The training loss (``forward``, for DistributedDataParallel): cross-entropy on the
        masked real tokens; ``masked_accuracy`` their top-1 accuracy."""
        mask = mask_tokens(batch["length"], self.cfg.mask_ratio, generator)
        h = self.encoder(batch, mask=mask)
        if not mask.any():  # a batch of padding only: nothing to predict, a zero loss
            zero = h.sum() * 0.0
            return zero, {"masked_accuracy": float("nan")}
        logits = self.head(h[mask])
        target = targets[mask]
        loss = F.cross_entropy(logits.float(), target)
        acc = (logits.argmax(-1) == target).float().mean()
        return loss, {"masked_accuracy": acc.item()}

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        return self.encoder.pool(batch)


def as_batch(
    sentences: SentenceSet, idx: np.ndarray | None = None, device: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """Tensors of a :class:`~emgcore.contractions.SentenceSet` (or its sentences ``idx``)."""
    s = sentences if idx is None else sentences.take(idx)
    return {
        "values": torch.from_numpy(s.values).to(device),
        "length": torch.from_numpy(s.length).to(device),
        "phase": torch.from_numpy(s.phase.astype("int64")).to(device),
        "position": torch.from_numpy(s.position).to(device),
    }


class SentenceBatches:
    """A :class:`~emgcore.contractions.SentenceSet` as a sequence of tensor batches, for
    :func:`emgcore.training.batched`: ``len()`` sentences, ``[a:b]`` -> :func:`as_batch`."""

    def __init__(self, sentences: SentenceSet, device: str | torch.device = "cpu"):
        self.sentences, self.device = sentences, device

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, span: slice) -> dict[str, Tensor]:
        return as_batch(self.sentences, np.arange(len(self.sentences))[span], self.device)


@dataclass(frozen=True)
class _Schedule:
    """One stage's :class:`emgcore.training.Schedule`: a constant learning rate (a warm-up of
    one step is :func:`~emgcore.training.fit`'s way to ask for none)."""

    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    grad_clip: float
    restart_epochs: int = 1
    warmup_steps: int = 1


@dataclass(frozen=True)
class PretrainConfig:
    """Optimisation of AEMG's two pre-training stages (the paper gives none of these; the
    values are LaBraM's order of magnitude, searched by the sweep). A constant learning rate;
    each epoch's ragged last batch is dropped (:func:`emgcore.training.fit`)."""

    vq_epochs: int = 50
    mtm_epochs: int = 50
    batch_size: int = 64  # sentences
    lr: float = 5e-4
    weight_decay: float = 0.05
    grad_clip: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("vq_epochs", "mtm_epochs"):
            if getattr(self, name) < 0:
                raise InvalidValueError(f"{name} must be >= 0", field=f"pretrain.{name}")
        if self.batch_size < 2:
            raise InvalidValueError(
                f"batch_size must be >= 2 sentences, got {self.batch_size}",
                field="pretrain.batch_size",
            )
        if not self.lr > 0:
            raise InvalidValueError(f"lr must be > 0, got {self.lr}", field="pretrain.lr")

    def stage(self, epochs: int) -> _Schedule:
        return _Schedule(self.lr, self.weight_decay, self.batch_size, epochs, self.grad_clip)


def pretrain(
    sentences: SentenceSet,
    cfg: AEMGConfig,
    opt: PretrainConfig,
    log: Callable[[dict[str, float]], None] | None = None,
    *,
    hooks: Mapping[str, Sequence[EpochHook]] | None = None,
    parallel: DataParallel | None = None,
    device: str | torch.device = "cpu",
) -> tuple[VQTokenizer, MaskedTokenModel, list[dict[str, float]]]:
    """AEMG stages 4 and 5 on a :class:`~emgcore.contractions.SentenceSet`, each through the
    project's training loop (:func:`emgcore.training.fit`): the VQ tokenizer for
    ``opt.vq_epochs``, then (tokenizer frozen, every sentence's codes computed once) the masked
    token model for ``opt.mtm_epochs``. Returns both models and one record per epoch:
    ``stage``, ``epoch``, the epoch's mean ``loss`` and its parts (``reconstruction``,
    ``commitment`` | ``masked_accuracy``), ``lr``, and the codebook's ``perplexity`` and
    ``dead_codes`` over the epoch's assignments (stage ``vq``; the first step only initialises
    the codes and is not counted) or over the targets (stage ``mtm``). ``log(record)`` is
    called after every epoch, and ``hooks["vq"]`` / ``hooks["mtm"]`` (the launcher's epoch
    hooks) with the same record. Data parallel over ``parallel``'s workers (each takes its
    shard of every global batch; gradients averaged, codebook statistics summed), on
    ``device``. Raises :class:`InvalidValueError` for fewer than 2 sentences.
    """
    from emgcore.models.nn import seeded
    from emgcore.training import batched, fit

    if len(sentences) < 2:
        raise InvalidValueError(
            f"pre-training needs at least 2 sentences, got {len(sentences)}", field="sentences"
        )
    parallel = parallel or DataParallel()
    history: list[dict[str, float]] = []

    def record(stage: str, usage: Callable[[], dict[str, float]]) -> list[EpochHook]:
        def hook(epoch: int, metrics: dict[str, float], model: nn.Module) -> None:
            rec = {"stage": stage, "epoch": epoch}
            rec |= {k.removeprefix("train_"): v for k, v in metrics.items() if k != "samples"}
            history.append(rec | usage())
            if log is not None:
                log(history[-1])
            logged = {k: v for k, v in history[-1].items() if k not in ("stage", "epoch")}
            for h in (hooks or {}).get(stage, ()):
                h(epoch, logged, model)

        return [hook]

    def vq_usage() -> dict[str, float]:
        out = vq.codebook.usage()
        vq.codebook.reset_usage()  # the next epoch counts afresh
        return out

    def shard(idx: Tensor) -> dict[str, Tensor]:
        return as_batch(sentences, parallel.shard(idx).numpy(), device)

    def vq_step(idx: Tensor, _gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        loss, parts = vq_net(shard(idx))
        return loss, {"loss": loss.item(), **parts}

    def mtm_step(idx: Tensor, gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        loss, parts = mtm_net(shard(idx), targets[parallel.shard(idx)].to(device), gen)
        return loss, {"loss": loss.item(), **parts}

    with seeded(opt.seed) as g:
        vq, mtm = VQTokenizer(cfg).to(device), MaskedTokenModel(cfg).to(device)
        vq_net, mtm_net = parallel.wrap(vq), parallel.wrap(mtm)
        n = len(sentences)
        fit(vq, vq_step, n, opt.stage(opt.vq_epochs), name="AEMG VQ tokenizer", gen=g,
            hooks=record("vq", vq_usage), parallel=parallel)  # fmt: skip
        targets = batched(vq.codes, SentenceBatches(sentences, device))  # (N, S), -1 at padding
        used = torch.bincount(targets[targets >= 0], minlength=cfg.codebook_size)
        fit(mtm, mtm_step, n, opt.stage(opt.mtm_epochs), name="AEMG masked tokens", gen=g,
            hooks=record("mtm", lambda: codebook_usage(used)), parallel=parallel)  # fmt: skip
    return vq, mtm, history


class GestureClassifier(nn.Module):
    """Downstream: an NST (pre-trained or fresh), its pooled embedding and a linear head:
    ``batch -> (B, n_classes)`` logits."""

    def __init__(self, encoder: NST, n_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.cfg.dim, n_classes)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.head(self.encoder.pool(batch))


def fit_classifier(
    encoder: NST | GestureClassifier,
    sentences: SentenceSet,
    n_classes: int,
    epochs: int = 5,
    batch_size: int = 32,
    lr: float = 5e-4,
    seed: int = 0,
) -> GestureClassifier:
    """Fine-tune end to end on labelled ``sentences`` (cross-entropy, AdamW, constant ``lr``,
    through :func:`emgcore.training.fit`) and return the classifier; the argument is copied,
    never changed. ``encoder``: an :class:`NST` gets a fresh linear head (a pre-trained one:
    fine-tuning; a fresh one: a supervised network from scratch); a :class:`GestureClassifier`
    continues with its own head (few-shot adaptation of a classifier trained on other people).
    Raises :class:`InvalidValueError` for fewer than 2 sentences or labels outside
    ``[0, n_classes)`` (``-1``: unlabelled)."""
    import copy

    from emgcore.models.nn import seeded
    from emgcore.training import fit

    label = sentences.label
    if len(sentences) < 2 or label.min() < 0 or label.max() >= n_classes:
        why = (
            f"{len(sentences)} sentence(s)"
            if len(sentences) < 2
            else "some have no label (-1)"
            if label.min() < 0
            else f"a label {int(label.max())} is outside the {n_classes} classes"
        )
        raise InvalidValueError(
            f"fine-tuning needs at least 2 sentences labelled 0..{n_classes - 1}: {why}",
            field="label",
        )
    y = torch.from_numpy(label)

    def step(idx: Tensor, _gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        loss = F.cross_entropy(model(as_batch(sentences, idx.numpy())), y[idx])
        return loss, {"loss": loss.item()}

    with seeded(seed) as g:
        if isinstance(encoder, GestureClassifier):
            model = copy.deepcopy(encoder)
        else:
            model = GestureClassifier(copy.deepcopy(encoder), n_classes)
        fit(model, step, len(sentences), _Schedule(lr, 0.05, batch_size, epochs, 0.0),
            name="AEMG fine-tuning", gen=g)  # fmt: skip
    return model


def predict(model: GestureClassifier, sentences: SentenceSet, batch: int = 256) -> np.ndarray:
    """``(N,)`` predicted class of every sentence."""
    from emgcore.training import batched

    return batched(lambda b: model(b).argmax(-1), SentenceBatches(sentences), batch).numpy()
