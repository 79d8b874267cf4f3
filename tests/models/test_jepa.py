"""EMG-JEPA's model: no leakage from hidden tokens, distinct token positions, the EMA rule, the
predictor's bookkeeping, JA-MAE, early stopping and the warm-up schedule."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from emgcore.config import PRESETS_DIR, load_yaml
from emgcore.data.simulator import layout_for
from emgcore.methods.jepa import PoseEstConfig
from emgcore.models.jepa import (
    JEPA,
    EarlyStopping,
    Encoder,
    Featurizer,
    JEPAConfig,
    PoseHeadConfig,
    PoseModel,
    Predictor,
    Tokens,
    ema_momentum,
    finetune,
    ja_mae,
    pretrain,
)
from emgcore.models.jepa_masks import Masks

TINY = JEPAConfig(
    patch=50,
    width=32,
    feat_dim=16,
    feat_hidden=16,
    depth=2,
    heads=4,
    mlp_dim=64,
    pred_width=16,
    pred_depth=2,
    pred_heads=4,
    pred_mlp_dim=32,
    dropout=0.0,
    epochs=2,
    batch_size=8,
    warmup_steps=3,
)
C, T = 8, 500  # 8 channels x 10 patches


def test_ema_ramp_is_a_pure_linear_schedule() -> None:
    assert ema_momentum(0, 100, (0.996, 1.0), "ramp") == pytest.approx(0.996)
    assert ema_momentum(50, 100, (0.996, 1.0), "ramp") == pytest.approx(0.998)
    assert ema_momentum(100, 100, (0.996, 1.0), "ramp") == 1.0
    assert ema_momentum(250, 100, (0.996, 1.0), "ramp") == 1.0  # clamped after the last step
    with pytest.raises(ValueError, match="ema_schedule"):
        JEPAConfig(ema_schedule="cosine")


def _momenta(cfg: JEPAConfig, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The momentum of every target update in a short pre-training run of ``cfg``."""
    seen: list[float] = []
    monkeypatch.setattr(JEPA, "update_target", lambda self, m: seen.append(m))
    _, fit = pretrain(replace(cfg, depth=1, pred_depth=1), torch.randn(16, T, C), seed=0)
    assert len(seen) == fit.steps == 4
    return seen


def test_ema_momentum_is_the_papers_constant_by_default(monkeypatch) -> None:
    """A.1: the target encoder is an EMA "with a decay factor of 0.996", at every step (issue 14:
    the default ramped it to 1.0 over training)."""
    assert _momenta(TINY, monkeypatch) == [0.996] * 4
    assert JEPAConfig().ema_schedule == "constant" and JEPAConfig().ema[0] == 0.996
    # the ramp stays an option, and is the former default's schedule: 0.996 -> 1.0 over 4 steps
    ramp = _momenta(replace(TINY, ema_schedule="ramp"), monkeypatch)
    assert ramp == pytest.approx([0.996 + 0.004 * s / 4 for s in (1, 2, 3, 4)], abs=1e-12)


def _closest_pair(pos: torch.Tensor, bound: float) -> float:
    """The smallest distance between two different rows of ``pos (N, d)``, or ``bound`` if none
    is closer. Exact and fast: the distance over some of the features is a lower bound of the
    full distance, so only the pairs closer than ``bound`` over 32 strided features are measured
    in full (an N x N x 32 product instead of N x N x d)."""
    p = pos.float()
    s = p[:, :: max(1, p.shape[1] // 32)]
    sq = (s * s).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * s @ s.T  # float32: to ~1e-5 (|s|^2 <= 32)
    d2.fill_diagonal_(float("inf"))
    i, j = (d2 < bound**2 + 1e-3).nonzero(as_tuple=True)
    full = (p[i] - p[j]).double().pow(2).sum(1).sqrt()
    return min(bound, float(full.min())) if len(full) else bound


def _position_cases() -> list[tuple[str, int, int, int, int]]:
    """(what, width, pred_width, channels, patches) for every jepa preset and the defaults,
    every patch size of search_spaces/jepa.yaml, on the simulator's rings and grids at 2 kHz
    and flexemg's 16 x 4 grid at 1 kHz (1-s windows)."""
    space = yaml.safe_load((Path(__file__).parents[2] / "search_spaces/jepa.yaml").read_text())
    patches = sorted(
        {p for st in space["stages"] for p in st.get("grid", {}).get("jepa.patch", [])}
    )
    assert patches == [50, 100, 200]
    cfgs = {"defaults": PoseEstConfig()}
    for path in sorted(PRESETS_DIR.glob("jepa-*.yaml")):
        cfgs[path.stem] = load_yaml(PoseEstConfig, path)
    assert {"jepa-sim", "jepa-smoke"} <= set(cfgs)
    cases = []
    for name, cfg in cfgs.items():
        for layout, fs in (("ring8", 2000), ("ring16", 2000), ("grid110", 2000), ("grid64", 1000)):
            channels = layout_for(layout).n_channels
            for patch in sorted({cfg.jepa.patch, *patches}):
                k = int(cfg.data.window_s * fs) // patch
                what = f"{name}/{layout}/t={patch}"
                cases.append((what, cfg.jepa.width, cfg.jepa.pred_width, channels, k))
    return cases


@pytest.mark.parametrize("large", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_every_token_has_its_own_position(large: bool) -> None:
    """Issue 14: time and channel embeddings at the same frequencies, added, gave (channel c,
    patch k) the position of (channel k, patch c). Every (channel, patch) token of the encoder
    and of the predictor must have a position vector of its own, clearly apart from every other
    (a distance of at least 0.5, where two rows of a sin / cos table of width d are at most
    sqrt(2 d) apart; the closest measured: 0.65 at the smoke preset's predictor width 16), for
    every layout the presets and the sweep build. ``large`` (slow): the grids of more than 1500
    tokens (110 channels at patch 50 and 100, 2 kHz), most of the test's time."""
    widths, tables = set(), set()
    for what, width, pred_width, channels, k in _position_cases():
        for part, w in (("encoder", width), ("predictor", pred_width)):
            widths.add(w)
            if (w, channels, k) in tables or (channels * k > 1500) != large:
                continue
            tables.add((w, channels, k))
            small = replace(JEPAConfig(), width=w, feat_dim=16, feat_hidden=16)
            pos = Tokens(small, channels, k).pos
            assert pos.shape == (channels * k, w)
            gap = _closest_pair(pos, 0.5)
            assert gap >= 0.5, f"{what} {part} (width {w}): two tokens {gap:.3g} apart"
    for w in widths:  # the predictor adds the encoder's table at its own width
        small = replace(JEPAConfig(), width=w, pred_width=w, pred_depth=1, pred_heads=4)
        assert torch.equal(Predictor(small, 16, 20).pos, Tokens(small, 16, 20).pos)


def test_target_encoder_follows_by_ema() -> None:
    torch.manual_seed(0)
    model = JEPA(TINY, C, T)
    for p in model.encoder.parameters():
        p.data.add_(torch.randn_like(p))
    before = [p.clone() for p in model.target_encoder.parameters()]
    model.update_target(0.9)
    for t, c, b in zip(
        model.target_encoder.parameters(), model.encoder.parameters(), before, strict=True
    ):
        assert torch.allclose(t, 0.9 * b + 0.1 * c, atol=1e-6)
        assert not t.requires_grad


@pytest.mark.parametrize("kind", ["mlp", "raw", "conv"])
def test_featurizer_leaks_only_when_convolutional(kind: str) -> None:
    torch.manual_seed(0)
    f = Featurizer(kind, 50, 16, 8)
    x = torch.randn(1, T, C)
    y = x.clone()
    y[0, 200:250, 3] += 5.0  # patch 4 of channel 3
    changed = (f(x) - f(y)).abs().amax(dim=-1)[0] > 1e-6  # (C, K)
    if kind == "conv":
        assert changed[3, 3] or changed[3, 5]  # neighbours see the patch: Table 3's leak
    else:
        assert changed.nonzero().tolist() == [[3, 4]]


def test_context_encoder_never_sees_hidden_tokens() -> None:
    torch.manual_seed(0)
    enc = Encoder(TINY, C, T // TINY.patch).eval()
    x = torch.randn(2, T, C)
    keep = torch.tensor([[0, 1, 2, 10, 11, 12], [5, 6, 7, 15, 16, 17]])  # tokens c * K + k
    y = x.clone()
    for b, row in enumerate(keep):  # change every sample that no kept token covers
        hidden = torch.ones(C, T // TINY.patch, dtype=torch.bool)
        hidden.view(-1)[row] = False
        for c, k in hidden.nonzero().tolist():
            y[b, k * 50 : (k + 1) * 50, c] = torch.randn(50)
    assert torch.allclose(enc(x, keep), enc(y, keep), atol=1e-6)
    assert not torch.allclose(enc(x), enc(y))


def test_predictor_outputs_follow_the_target_order_and_loss_trains_context_only() -> None:
    torch.manual_seed(0)
    model = JEPA(TINY, C, T).eval()
    x = torch.randn(2, T, C)
    obs = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    tgt = torch.tensor([[20, 31, 42], [50, 61, 72]])
    ctx = model.encoder(x, obs)
    a = model.predictor(ctx, obs, tgt)
    b = model.predictor(ctx, obs, tgt.flip(1))
    assert a.shape == (2, 3, TINY.width)
    assert torch.allclose(a.flip(1), b, atol=1e-5)  # a target's prediction depends on its place
    loss = model(x, Masks(obs, tgt))
    loss.backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert model.encoder.tokens.featurizer.net[0].weight.grad is not None
    assert model.predictor.mask_token.grad is not None


def test_target_encoder_runs_without_dropout() -> None:
    model = JEPA(replace(TINY, dropout=0.5), C, T).train()
    assert model.encoder.training and not model.target_encoder.training


def test_ja_mae_is_in_degrees() -> None:
    pred, true = np.zeros((4, 2)), np.full((4, 2), np.pi / 180)
    assert ja_mae(pred, true, "rad") == pytest.approx(1.0)
    assert ja_mae(pred, np.full((4, 2), 3.0), "deg") == pytest.approx(3.0)
    with pytest.raises(ValueError, match="JA-MAE"):
        ja_mae(pred, true, "mm")


def test_early_stopping_keeps_the_best_weights() -> None:
    class Constant(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.v = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.v.expand(len(x), 1)

    model, y = Constant(), torch.full((5, 1), 3.0)
    stop = EarlyStopping(torch.zeros(5, 2), y, "deg", patience=2)
    for epoch, v in enumerate([0.0, 2.5, 1.0, 0.0, 9.0]):  # errors 3, 0.5, 2, 3, 6
        model.v.data.fill_(v)
        metrics: dict[str, float] = {}
        stop(epoch, metrics, model)
        assert metrics["val_ja_mae"] == pytest.approx(abs(3.0 - v))
        if stop.stop:
            break
    assert epoch == 3 and stop.best == pytest.approx(0.5)  # 2 epochs after the best
    stop.restore(model)
    assert model.v.item() == 2.5


def test_pretrain_warms_up_and_finetune_regresses_both_heads() -> None:
    x = torch.randn(32, T, C)
    model, fit = pretrain(TINY, x, seed=0)
    assert fit.steps == 8 and len(fit.epochs) == 2
    assert fit.epochs[0]["lr"] == pytest.approx(TINY.lr)  # warm-up over after 3 steps
    assert all(np.isfinite(e["train_loss"]) for e in fit.epochs)
    # the same seed, the same run
    again, _ = pretrain(TINY, x, seed=0)
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    y = torch.randn(32, 5)
    for decoder in ("cross_attention", "conv"):
        head = PoseHeadConfig(
            decoder=decoder, hidden=16, heads=4, mlp_dim=32, epochs=2, batch_size=8
        )
        pm, f, best = finetune(head, model.encoder, x[:24], y[:24], (x[24:], y[24:]), unit="deg")
        assert isinstance(pm, PoseModel) and pm(x[:3]).shape == (3, 5)
        assert best == min(e["val_ja_mae"] for e in f.epochs)


def test_config_refuses_what_cannot_build() -> None:
    with pytest.raises(ValueError, match="featurizer"):
        JEPAConfig(featurizer="fft")
    with pytest.raises(ValueError, match="divisible"):
        JEPAConfig(width=100, heads=8)
    with pytest.raises(ValueError, match="divisible by 4"):  # two sin / cos halves
        JEPAConfig(width=34, heads=2)
    with pytest.raises(ValueError, match="decoder"):
        PoseHeadConfig(decoder="lstm")


@pytest.mark.parametrize("decoder", ["cross_attention", "conv"])
def test_pose_model_exports_with_a_dynamic_batch(decoder: str) -> None:
    """The registry stores the ``torch.export`` graph: it must take any batch size, not only
    the example's (a ``len(x)`` in ``forward`` would pin it), and match the module."""
    head = PoseHeadConfig(decoder=decoder, hidden=16, heads=4, mlp_dim=32)
    torch.manual_seed(0)
    model = PoseModel(Encoder(TINY, C, T // TINY.patch), head, joints=5).eval()
    batch = torch.export.Dim("batch")
    graph = torch.export.export(model, (torch.randn(4, T, C),), dynamic_shapes=({0: batch},))
    x = torch.randn(7, T, C)
    with torch.no_grad():
        torch.testing.assert_close(graph.module()(x), model(x))
