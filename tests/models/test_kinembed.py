"""KinEMbed's model, contrastive training loop, the TCN and the shared decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emgcore.models.decoder import DecoderConfig, fit_decoder, r2_per_output
from emgcore.models.kinembed import (
    LOSSES,
    VARIANTS,
    KinEmbed,
    KinEmbedConfig,
    embed,
    split_validation,
    train_kinembed,
)
from emgcore.models.nn import TCN


def toy_sessions(n: int = 600, f: int = 24, j: int = 3, seed: int = 0):
    """Features that are a noisy nonlinear function of smooth 'DoA' trajectories."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((j, f))
    out = []
    for _ in range(2):
        t = np.arange(n) / 50
        y = np.stack([np.sin(t * (k + 1) + rng.uniform(0, 6)) for k in range(j)], axis=1)
        x = np.tanh(y @ mix) + 0.1 * rng.standard_normal((n, f))
        out.append((x.astype(np.float32), y.astype(np.float32)))
    return out


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("loss", ["nt_xent", "soft_nt_xent", "vicreg"])
def test_every_variant_and_loss_trains_and_embeds_on_the_sphere(variant, loss) -> None:
    cfg = KinEmbedConfig(variant=variant, loss=loss, epochs=3, batch_size=64, embed_dim=8)
    model, hist = train_kinembed(cfg, toy_sessions(200), seed=0)
    z = embed(model, toy_sessions(200)[0][0])
    assert z.shape == (200, 8)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
    assert len(hist.epochs) == 3 and np.isfinite(hist.epochs[-1]["val_loss"])
    assert (model.head is not None) == (variant == "projection_head")
    assert (model.f_kin_ema is not None) == (variant == "momentum_ema")
    if variant == "asymmetric":
        assert len(model.f_kin.layers) == 0  # the kinematic side is one linear map


def test_projection_head_is_used_in_the_loss_but_not_in_the_embedding() -> None:
    torch.manual_seed(0)
    model = KinEmbed(KinEmbedConfig(dropout=0.0), n_features=10, n_dof=2).eval()
    x, y = torch.randn(32, 10), torch.randn(32, 2)
    z_before = model.embed(x)
    loss_before = model(x, y)[0]
    with torch.no_grad():
        model.head[0].weight.mul_(-3.0)
    assert torch.equal(model.embed(x), z_before)
    assert not torch.isclose(model(x, y)[0], loss_before)


def test_training_is_deterministic_for_a_seed_and_learns() -> None:
    sessions = toy_sessions()
    cfg = KinEmbedConfig(epochs=25, batch_size=128, embed_dim=8)
    m1, h1 = train_kinembed(cfg, sessions, seed=3)
    m2, _ = train_kinembed(cfg, sessions, seed=3)
    np.testing.assert_array_equal(embed(m1, sessions[0][0]), embed(m2, sessions[0][0]))
    assert h1.epochs[-1]["train_loss"] < 0.7 * h1.epochs[0]["train_loss"]
    # aligned: the DoA are linearly decodable from the frozen EMG embedding
    z = embed(m1, sessions[0][0])
    y = sessions[0][1]
    w, *_ = np.linalg.lstsq(np.c_[z, np.ones(len(z))], y, rcond=None)
    assert r2_per_output(y, np.c_[z, np.ones(len(z))] @ w).mean() > 0.8


def test_early_stopping_restores_the_best_epoch() -> None:
    cfg = KinEmbedConfig(epochs=200, patience=3, batch_size=64, lr=0.05)
    seen = []
    _, hist = train_kinembed(cfg, toy_sessions(300), seed=0, hooks=[lambda e, m, _: seen.append(e)])
    assert len(hist.epochs) < 200, "patience 3 with a large learning rate should stop early"
    assert seen == list(range(len(hist.epochs)))
    best = int(np.argmin([e["val_loss"] for e in hist.epochs]))
    assert hist.best_epoch == best
    assert len(hist.epochs) == best + 1 + cfg.patience


def test_validation_split_is_the_tail_of_every_session() -> None:
    a = (np.arange(10.0)[:, None], np.zeros((10, 1)))
    b = (np.arange(100.0, 120.0)[:, None], np.zeros((20, 1)))
    (xt, _), (xv, _) = split_validation([a, b], 0.1)
    assert xv[:, 0].tolist() == [9.0, 118.0, 119.0]
    assert len(xt) == 27 and not set(xt[:, 0]) & set(xv[:, 0])


def test_ema_momentum_is_a_pure_function_of_the_step() -> None:
    model = KinEmbed(KinEmbedConfig(variant="momentum_ema", ema_momentum=0.9), 6, 2)
    with torch.no_grad():
        for p in model.f_kin.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.f_kin_ema.parameters()]
    model.update_ema(step=0, total_steps=10)  # m = 0.9
    for p_ema, p0, p in zip(
        model.f_kin_ema.parameters(), before, model.f_kin.parameters(), strict=True
    ):
        torch.testing.assert_close(p_ema, 0.9 * p0 + 0.1 * p)
    frozen = [p.clone() for p in model.f_kin_ema.parameters()]
    model.update_ema(step=10, total_steps=10)  # m = 1: no change
    for p_ema, p0 in zip(model.f_kin_ema.parameters(), frozen, strict=True):
        torch.testing.assert_close(p_ema, p0)


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"kinembed\.variant"):
        KinEmbedConfig(variant="transformer")
    with pytest.raises(ValueError, match=r"kinembed\.loss"):
        KinEmbedConfig(loss="infonce")


def test_tcn_is_causal_with_the_stated_receptive_field() -> None:
    torch.manual_seed(0)
    net = TCN(4, 2, channels=8, kernel=3, dilations=(1, 2, 4), dropout=0.0).eval()
    assert net.receptive_field == 29
    x = torch.randn(1, 80, 4)
    t = 50
    x2 = x.clone()
    x2[0, t] += 10.0
    d = (net(x2) - net(x)).abs().sum(dim=2)[0]
    assert torch.all(d[:t] == 0), "an output changed before its input did"
    assert d[t] > 0 and d[t + net.receptive_field - 1] > 0
    assert torch.all(d[t + net.receptive_field :] == 0), "reaches further back than stated"


def test_decoder_learns_a_temporal_mapping() -> None:
    """The target depends on the recent past of the input; a causal TCN fits it on new data."""
    rng = np.random.default_rng(0)

    def session(n):
        z = rng.standard_normal((n, 3)).astype(np.float32)
        y = np.stack([z[:, 0], np.convolve(z[:, 1], np.ones(5) / 5)[:n]], axis=1)
        return z, y.astype(np.float32)

    train = [session(800), session(800)]
    dec = fit_decoder(train, DecoderConfig(epochs=40, seq_len=64), seed=0)
    z, y = session(600)
    r2 = r2_per_output(y, dec.predict(z))
    assert r2.min() > 0.85, r2


def test_r2_matches_sklearn() -> None:
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(1)
    y, p = rng.standard_normal((50, 4)), rng.standard_normal((50, 4))
    p[:, 0] = y[:, 0] * 0.9
    np.testing.assert_allclose(r2_per_output(y, p), r2_score(y, p, multioutput="raw_values"))


def test_training_leaves_the_callers_random_state_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    sessions = toy_sessions(100)
    train_kinembed(KinEmbedConfig(epochs=1, batch_size=32), sessions, seed=0)
    fit_decoder(sessions, DecoderConfig(epochs=1, seq_len=32), seed=0)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.gpu
def test_kinembed_trains_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    sessions = toy_sessions(300)
    model, hist = train_kinembed(KinEmbedConfig(epochs=3, batch_size=64), sessions, device="cuda")
    assert next(model.parameters()).is_cuda and np.isfinite(hist.epochs[-1]["val_loss"])
    z = embed(model, sessions[0][0])
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("loss", LOSSES)
def test_momentum_ema_trains_differently_from_standard_under_every_loss(loss) -> None:
    """Issue 14: under VICReg the EMA branch was never used, so the architecture stage scored
    ``momentum_ema`` and ``standard`` identically. Same seed, same data: the losses must part."""
    common = dict(loss=loss, epochs=2, batch_size=64, embed_dim=4, emg_hidden=(16,), patience=9)
    data = toy_sessions(160, f=8)
    runs = {
        v: train_kinembed(KinEmbedConfig(variant=v, kin_hidden=(8,), **common), data, seed=0)[1]
        for v in ("standard", "momentum_ema")
    }
    a, b = ([e["train_loss"] for e in runs[v].epochs] for v in ("standard", "momentum_ema"))
    assert not np.allclose(a, b, rtol=1e-4), (loss, a, b)


def test_config_declares_the_fields_training_does_not_read() -> None:
    assert KinEmbedConfig(loss="vicreg", variant="momentum_ema").inert_fields() == {
        "temperature": ("loss",)
    }
    assert set(KinEmbedConfig(variant="asymmetric", patience=300).inert_fields()) == {
        "ema_momentum",  # no EMA copy outside momentum_ema
        "kin_hidden",  # asymmetric: the kinematic encoder is one linear map
        "patience",  # never reached within 200 epochs
    }
    assert set(KinEmbedConfig(loss="soft_nt_xent").inert_fields()) == {"ema_momentum"}
