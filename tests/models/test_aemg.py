"""AEMG's networks (emgcore.models.aemg): padding reaches nothing, the codebook's EMA and dead-code
re-seeding, the straight-through gradient, masking, and that pre-training learns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emgcore.contractions import WHOLE
from emgcore.models.aemg import (
    AEMGConfig,
    MaskedTokenModel,
    NormEMACodebook,
    VQTokenizer,
    mask_tokens,
)

CFG = AEMGConfig.small(channels=4, token_len=20, sentence=6, codebook_size=16, code_dim=8)


def _batch(b=3, seed=0):
    """Sentences with padding: sentence 1 has 4 real tokens, sentence 2 has 1; the tokens have
    12..20 real samples; padded samples and tokens hold zeros."""
    g = torch.Generator().manual_seed(seed)
    length = torch.randint(12, 21, (b, CFG.sentence), generator=g)
    length[1, 4:] = 0
    length[2, 1:] = 0
    values = torch.randn(b, CFG.sentence, CFG.channels, CFG.token_len, generator=g)
    t = torch.arange(CFG.token_len)
    values = values * (t < length[..., None])[:, :, None, :]
    phase = torch.randint(0, 4, (b, CFG.sentence), generator=g)
    position = torch.randn(b, CFG.channels, CFG.position_features, generator=g)
    return {"values": values, "length": length, "phase": phase, "position": position}


def _fill_padding(batch, seed=1):
    """The same batch with every padded sample, padding token and padding phase changed."""
    g = torch.Generator().manual_seed(seed)
    out = dict(batch)
    t = torch.arange(CFG.token_len)
    pad = ~(t < batch["length"][..., None])[:, :, None, :].expand_as(batch["values"])
    out["values"] = torch.where(
        pad, 100 * torch.randn(batch["values"].shape, generator=g), batch["values"]
    )
    out["phase"] = torch.where(batch["length"] > 0, batch["phase"], 3)
    return out


def test_padding_changes_no_output():
    batch, filled = _batch(), None
    filled = _fill_padding(batch)
    assert not torch.equal(batch["values"], filled["values"])
    valid = batch["length"] > 0
    torch.manual_seed(0)
    vq, mtm = VQTokenizer(CFG).eval(), MaskedTokenModel(CFG).eval()
    h1 = vq.encoder(batch)
    h2 = vq.encoder(filled)
    torch.testing.assert_close(h1[valid], h2[valid], rtol=1e-5, atol=1e-5)
    assert torch.equal(vq.codes(batch), vq.codes(filled))
    l1, _ = vq(batch)
    l2, _ = vq(filled)
    assert l1.item() == pytest.approx(l2.item(), rel=1e-5)
    targets = vq.codes(batch)
    m1, a1 = mtm(batch, targets, torch.Generator().manual_seed(3))
    m2, a2 = mtm(filled, targets, torch.Generator().manual_seed(3))
    assert m1.item() == pytest.approx(m2.item(), rel=1e-5) and a1 == a2
    torch.testing.assert_close(mtm.embed(batch), mtm.embed(filled), rtol=1e-5, atol=1e-5)
    # the real tokens do matter
    other = dict(batch, values=batch["values"] * 2)
    assert not torch.allclose(mtm.embed(batch), mtm.embed(other))


def test_masks_take_half_the_real_tokens_and_never_padding():
    length = torch.tensor([[5, 5, 5, 5, 0, 0], [5, 0, 0, 0, 0, 0], [5] * 6])
    for seed in range(20):
        m = mask_tokens(length, 0.5, torch.Generator().manual_seed(seed))
        assert m.sum(1).tolist() == [2, 1, 3]
        assert not (m & (length == 0)).any()


def test_codebook_assigns_by_cosine_and_moves_by_ema():
    cb = NormEMACodebook(3, 2, decay=0.9, dead_threshold=1e-3)
    cb.codes.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    cb.ema_sum.copy_(cb.codes)
    cb.initialised.fill_(True)
    z = torch.tensor([[10.0, 1.0], [0.2, 3.0]])  # scale is irrelevant: cosine
    zq, index, commit = cb(z)
    assert index.tolist() == [0, 1]
    u = torch.nn.functional.normalize(z, dim=-1)
    torch.testing.assert_close(commit, (u - cb.codes[index]).pow(2).sum(-1))
    torch.testing.assert_close(zq, cb.codes[index])  # forward value is the code
    cb.update(z, index)
    expected0 = torch.nn.functional.normalize(0.9 * torch.tensor([1.0, 0.0]) + 0.1 * u[0], dim=0)
    torch.testing.assert_close(cb.codes[0], expected0)
    torch.testing.assert_close(cb.ema_count, torch.tensor([1.0, 1.0, 0.9]))
    assert torch.allclose(cb.codes[2], torch.tensor([-1.0, 0.0]))  # unassigned: unchanged


def test_codes_start_as_batch_latents_and_dead_ones_are_reseeded():
    cb = NormEMACodebook(4, 3, decay=0.5, dead_threshold=0.2)
    z = torch.nn.functional.normalize(torch.randn(8, 3), dim=-1)
    _, index, _ = cb(z)
    cb.update(z, index)  # the first batch initialises
    assert all(any(torch.allclose(c, zi) for zi in z) for c in cb.codes)
    assert cb.ema_count.tolist() == [2.0] * 4  # 8 latents, an equal share each
    far = torch.nn.functional.normalize(torch.ones(8, 3) + 1e-2 * torch.randn(8, 3), dim=-1)
    before = cb.codes.clone()
    steps = 0
    while steps < 10:  # one code takes every latent; the others' counts decay
        steps += 1
        _, index, _ = cb(far)
        cb.update(far, index)
        untouched = torch.ones(4, dtype=torch.bool)
        untouched[index] = False
        if not torch.equal(cb.codes[untouched], before[untouched]):
            break
    # counts 2 -> 1 -> 0.5 -> 0.25 against a mean of ~2: under 20% at the third step
    assert steps == 3 and len(set(index.tolist())) == 1
    for k in untouched.nonzero().flatten().tolist():
        assert any(torch.allclose(cb.codes[k], f) for f in far)  # re-seeded from the batch
        assert cb.ema_count[k] == pytest.approx(cb.ema_count.mean().item(), rel=0.5)
    assert cb.usage()["dead_codes"] == 3  # never assigned since the start
    cb.reset_usage()
    cb.used.copy_(torch.tensor([5.0, 5.0, 5.0, 5.0]))
    assert cb.usage() == {"perplexity": pytest.approx(4.0), "dead_codes": 0.0}
    cb.used.copy_(torch.tensor([20.0, 0.0, 0.0, 0.0]))
    assert cb.usage() == {"perplexity": pytest.approx(1.0), "dead_codes": 3.0}


def test_reconstruction_reaches_the_encoder_through_the_straight_through_estimator():
    torch.manual_seed(0)
    vq = VQTokenizer(CFG.__class__(**(CFG.__dict__ | {"beta": 0.0})))  # reconstruction only
    loss, _ = vq(_batch())
    loss.backward()
    g = vq.encoder.embed.conv.weight.grad
    assert g is not None and g.abs().sum() > 0


@pytest.mark.slow  # 10 s
def test_pretraining_lowers_reconstruction_and_learns_to_predict_codes():
    """A few hundred steps on sentences of 4 token shapes: reconstruction falls, the codebook is
    used, and MTM predicts masked codes far above chance from their neighbours (a sentence
    repeats one shape)."""
    torch.manual_seed(0)
    cfg = AEMGConfig.small(channels=4, token_len=20, sentence=6, codebook_size=8, code_dim=8)
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 1, cfg.token_len)
    shapes = torch.stack(
        [torch.sin(2 * math.pi * f * t + c) for f, c in ((1, 0), (3, 1), (5, 2), (7, 3))]
    )

    def batch(b=32):
        kind = torch.randint(0, 4, (b, 1), generator=g).expand(b, cfg.sentence)
        amp = torch.tensor([1.0, -1.0, 0.5, 2.0])[:, None]  # per channel, as z-scoring leaves
        values = amp * shapes[kind][:, :, None, :] + 0.05 * torch.randn(
            b, cfg.sentence, cfg.channels, cfg.token_len, generator=g
        )
        return {
            "values": values,
            "length": torch.full((b, cfg.sentence), cfg.token_len),
            "phase": torch.full((b, cfg.sentence), WHOLE),
            "position": torch.zeros(b, cfg.channels, cfg.position_features),
        }

    vq = VQTokenizer(cfg)
    opt = torch.optim.AdamW(vq.parameters(), lr=3e-3)
    first = None
    for _ in range(250):
        loss, parts = vq(batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first or parts["reconstruction"]
    assert parts["reconstruction"] < 0.3 * first
    vq.eval()
    mtm = MaskedTokenModel(cfg)
    opt = torch.optim.AdamW(mtm.parameters(), lr=3e-3)
    for _ in range(60):
        b = batch()
        loss, _ = mtm(b, vq.codes(b), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    b = batch(256)
    targets = vq.codes(b)
    majority = torch.bincount(targets.flatten()).max() / targets.numel()  # always the top code
    assert len(targets.unique()) >= 3  # the codebook is used, not collapsed
    assert mtm(b, targets, g)[1]["masked_accuracy"] > majority + 0.2


def test_pretraining_on_simulated_recordings_logs_every_epoch():
    """Stages 1-5 end to end on two simulated myo-like recordings: sentences, both stages, one
    record per epoch with the codebook's usage."""
    from emgcore.contractions import TokenizerConfig, sentence_set
    from emgcore.data.simulator import preset, simulate_recording
    from emgcore.models.aemg import PretrainConfig, pretrain
    from emgcore.preprocessing import BandPass

    sim = preset("myo-like", duration_s=30.0)
    recs = [BandPass().apply(simulate_recording(sim, s, 0)) for s in range(2)]
    sentences = sentence_set(recs, TokenizerConfig(sentence_tokens=6))
    assert sentences.values.shape[1:] == (6, 16, 200) and len(sentences) >= 4
    assert (sentences.label >= 0).all() and set(sentences.subject) == {"s00", "s01"}
    cfg = AEMGConfig.small(sentence=6, codebook_size=32, code_dim=8, dim=32, depth=1, heads=2)
    seen = []
    _, _, history = pretrain(
        sentences, cfg, PretrainConfig(vq_epochs=2, mtm_epochs=2, batch_size=4), log=seen.append
    )
    assert seen == history and [h["stage"] for h in history] == ["vq", "vq", "mtm", "mtm"]
    for h in history:
        assert 1.0 <= h["perplexity"] <= 32 and 0 <= h["dead_codes"] < 32
    assert {"reconstruction", "commitment"} <= history[0].keys()
    assert {"loss", "masked_accuracy"} <= history[-1].keys()


def test_fine_tuning_learns_the_gesture_and_leaves_the_given_encoder_alone():
    from emgcore.contractions import SentenceSet
    from emgcore.models.aemg import NST, fit_classifier, predict

    cfg = AEMGConfig.small(channels=4, token_len=20, sentence=3, dim=32, depth=1, heads=2)
    rng = np.random.default_rng(0)
    n = 96
    label = np.arange(n) % 3
    t = np.linspace(0, 1, 20)
    values = np.sin(2 * np.pi * (label[:, None, None, None] + 1) * t) * np.ones((n, 3, 4, 1))
    values = (values + 0.3 * rng.standard_normal(values.shape)).astype(np.float32)
    s = SentenceSet(
        values=values,
        length=np.full((n, 3), 20),
        phase=np.zeros((n, 3), np.int8),
        position=np.zeros((n, 4, 4), np.float32),
        label=label,
        subject=np.full(n, "a"),
        session=np.full(n, "x"),
        recording=np.arange(n),
        end=np.zeros(n, np.int64),
    )
    torch.manual_seed(0)
    encoder = NST(cfg)
    before = [p.clone() for p in encoder.parameters()]
    model = fit_classifier(encoder, s.take(np.arange(64)), 3, epochs=15, batch_size=16, lr=3e-3)
    pred = predict(model, s.take(np.arange(64, n)))
    assert (pred == label[64:]).mean() > 0.9
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.parameters(), strict=True))


def test_padding_stays_out_of_the_codebook_statistics_in_training():
    batch = _batch()
    filled = _fill_padding(batch)
    states = []
    for b in (batch, filled):
        torch.manual_seed(0)
        vq = VQTokenizer(CFG).train()
        vq(b)  # initialises the codes from the batch's real latents
        vq(b)  # an EMA step
        states.append({k: v.clone() for k, v in vq.codebook.state_dict().items()})
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=1e-5, atol=1e-6)


def test_a_batch_of_padding_only_gives_a_zero_masked_loss_not_nan():
    batch = _batch()
    batch["length"] = torch.zeros_like(batch["length"])
    mtm = MaskedTokenModel(CFG)
    loss, parts = mtm(batch, torch.full(batch["length"].shape, -1))
    assert loss.item() == 0.0 and math.isnan(parts["masked_accuracy"])
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in mtm.parameters() if p.grad is not None)


def test_wrong_sentence_shapes_and_unlabelled_fine_tuning_are_clear_errors():
    from emgcore.contractions import SentenceSet
    from emgcore.errors import InvalidValueError
    from emgcore.models.aemg import NST, fit_classifier

    batch = _batch()
    batch["values"] = batch["values"][..., :10]
    with pytest.raises(InvalidValueError, match="token_len"):
        VQTokenizer(CFG)(batch)
    empty = SentenceSet(*(np.zeros((0,)) for _ in range(9)))
    with pytest.raises(InvalidValueError, match="labelled"):
        fit_classifier(NST(CFG), empty, 3)


def test_the_spectrum_target_is_each_real_tokens_log_amplitude_and_ignores_padding():
    cfg = AEMGConfig(**(CFG.__dict__ | {"target": "spectrum"}))
    torch.manual_seed(0)
    vq = VQTokenizer(cfg).eval()
    batch = _batch()
    target, w = vq._target(batch["values"], batch["length"])
    assert target.shape[-1] == CFG.token_len // 2 + 1 == vq.target_len
    n = int(batch["length"][0, 0])
    manual = torch.log1p(
        torch.fft.rfft(batch["values"][0, 0, :, :n], n=CFG.token_len).abs() / n**0.5
    )
    torch.testing.assert_close(target[0, 0], manual, rtol=1e-4, atol=1e-5)
    assert not w[2, 1:].any() and w[2, 0].all()  # padding tokens weigh nothing
    l1, _ = vq(batch)
    l2, _ = vq(_fill_padding(batch))
    assert l1.item() == pytest.approx(l2.item(), rel=1e-5)


def test_a_classifier_continues_fine_tuning_with_its_own_head_and_stays_unchanged():
    from emgcore.contractions import SentenceSet
    from emgcore.models.aemg import NST, GestureClassifier, fit_classifier

    cfg = AEMGConfig.small(channels=4, token_len=20, sentence=3, dim=32, depth=1, heads=2)
    n = 8
    s = SentenceSet(
        values=np.random.default_rng(0).standard_normal((n, 3, 4, 20)).astype(np.float32),
        length=np.full((n, 3), 20),
        phase=np.zeros((n, 3), np.int8),
        position=np.zeros((n, 4, 4), np.float32),
        label=np.arange(n) % 2,
        subject=np.full(n, "a"),
        session=np.full(n, "x"),
        recording=np.arange(n),
        end=np.zeros(n, np.int64),
    )
    first = GestureClassifier(NST(cfg), 2)
    head = first.head.weight.clone()
    second = fit_classifier(first, s, 2, epochs=1)
    assert second is not first and torch.equal(first.head.weight, head)
    assert second.head.weight.shape == head.shape and not torch.equal(second.head.weight, head)


def test_bad_model_and_training_settings_are_one_error_naming_the_field():
    from emgcore.contractions import SentenceSet
    from emgcore.errors import InvalidValueError
    from emgcore.models.aemg import NST, PretrainConfig, fit_classifier, pretrain

    for bad, field in (
        ({"heads": 0}, "heads"),
        ({"codebook_size": 0}, "codebook_size"),
        ({"token_len": 2.5}, "token_len"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"target": "phase"}, "target"),
    ):
        with pytest.raises(InvalidValueError) as e:
            AEMGConfig.small(**bad)
        assert e.value.field == field
    batch = _batch()
    batch["position"] = batch["position"][..., :3]
    with pytest.raises(InvalidValueError, match="position_features"):
        NST(CFG)(batch)
    with pytest.raises(InvalidValueError) as e:
        PretrainConfig(batch_size=0)
    assert e.value.field == "pretrain.batch_size"
    s = SentenceSet(
        values=np.zeros((4, 6, 4, 20), np.float32),
        length=np.full((4, 6), 20),
        phase=np.zeros((4, 6), np.int8),
        position=np.zeros((4, 4, 4), np.float32),
        label=np.array([0, 1, 2, 5]),
        subject=np.full(4, "a"),
        session=np.full(4, "x"),
        recording=np.arange(4),
        end=np.zeros(4, np.int64),
    )
    with pytest.raises(InvalidValueError, match="label 5 is outside the 3 classes"):
        fit_classifier(NST(CFG), s, 3)
    with pytest.raises(InvalidValueError, match="at least 2 sentences"):
        pretrain(s.take(np.arange(1)), CFG, PretrainConfig())
