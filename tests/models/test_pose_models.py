"""MAE, PoseT, CPEP and EMBridge: masking, what each part may see, frozen anchors, retrieval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emgcore.eval.probe import class_scores, zero_shot
from emgcore.models.cpep import CPEP, CPEPConfig
from emgcore.models.embridge import EMBridge, EMBridgeConfig, pose_token_mask, query_mask
from emgcore.models.mae import MAE, MAEConfig, PoseT, random_masking
from emgcore.models.transformer import patchify, unpatchify

SMALL = MAEConfig(patch=10, dim=32, depth=2, decoder_depth=1, heads=4)
POSE = MAEConfig(patch=20, dim=32, depth=4, decoder_depth=1, heads=4)
T, C, J = 80, 4, 3


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def batch(b=6, seed=0):
    g = gen(seed)
    return torch.randn(b, T, C, generator=g), torch.randn(b, T, J, generator=g)


def test_patchify_round_trip_and_channel_flattening() -> None:
    x = torch.arange(2 * 20 * 3, dtype=torch.float32).reshape(2, 20, 3)
    p = patchify(x, 5)
    assert p.shape == (2, 4, 15)
    assert torch.equal(p[0, 1], x[0, 5:10].reshape(-1))  # channels flattened within a patch
    assert torch.equal(unpatchify(p, 5, 3), x)
    with pytest.raises(ValueError, match="shorter than one patch"):
        patchify(x[:, :4], 5)


def test_random_masking_keeps_the_ratio_and_restores_order() -> None:
    keep, restore = random_masking(5, 8, 0.5, gen())
    assert keep.shape == (5, 4) and restore.shape == (5, 8)
    for b in range(5):
        assert len(set(keep[b].tolist())) == 4
    shuffle = restore.argsort(dim=1)  # restore inverts the shuffle whose head is `keep`
    assert torch.equal(shuffle[:, :4], keep)
    k2, _ = random_masking(5, 8, 0.5, gen())
    assert torch.equal(keep, k2)  # the generator alone decides


def test_mae_loss_is_the_mse_of_hidden_patches_only() -> None:
    torch.manual_seed(0)
    mae = MAE(SMALL, C, T)
    x, _ = batch()
    keep, restore = random_masking(len(x), mae.encoder.n_tokens, 0.5, gen(1))
    loss, _ = mae(x, keep, restore)
    with torch.no_grad():
        pred = mae.decoder(mae.encoder(x, keep), restore)
        target = patchify(x, SMALL.patch)
    expected = []
    for b in range(len(x)):
        for k in range(mae.encoder.n_tokens):
            if k not in keep[b].tolist():
                expected.append(F.mse_loss(pred[b, k], target[b, k]))
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)


def test_mae_encoder_never_sees_hidden_patches() -> None:
    """Changing the signal inside hidden patches leaves the encoder output unchanged."""
    torch.manual_seed(0)
    mae = MAE(SMALL, C, T).eval()
    x, _ = batch()
    keep, _ = random_masking(len(x), mae.encoder.n_tokens, 0.5, gen(2))
    x2 = x.clone()
    for b in range(len(x)):
        for k in set(range(mae.encoder.n_tokens)) - set(keep[b].tolist()):
            x2[b, k * SMALL.patch : (k + 1) * SMALL.patch] += 5.0
    assert torch.allclose(mae.encoder(x, keep), mae.encoder(x2, keep), atol=1e-6)
    assert not torch.allclose(mae.encoder(x), mae.encoder(x2))


def test_poset_ignores_invalid_pose_samples() -> None:
    torch.manual_seed(0)
    model = PoseT(SMALL, C, J, T)
    x, p = batch()
    valid = torch.ones(len(x), T, dtype=torch.bool)
    valid[:, 40:] = False
    l1, _ = model(x, p, valid)
    p2 = p.clone()
    p2[:, 40:] = 1e3  # garbage where the pose is invalid
    l2, _ = model(x, p2, valid)
    assert l1.item() == pytest.approx(l2.item())
    assert model.predict(x).shape == (len(x), T, J)


def encoders():
    torch.manual_seed(0)
    return MAE(MAEConfig(**{**SMALL.__dict__, "depth": 4}), C, T).encoder, MAE(POSE, J, T).encoder


def test_cpep_trains_the_emg_side_only() -> None:
    emg, pose = encoders()
    model = CPEP(CPEPConfig(), emg, pose).train()
    x, p = batch()
    loss, m = model(x, p)
    loss.backward()
    assert all(q.grad is None for q in model.pose.parameters())
    assert all(q.grad is not None for q in model.emg.parameters())
    assert model.logit_scale.grad is not None
    assert m["temperature"] == pytest.approx(0.02)
    assert not model.pose.training  # the anchor stays in eval mode


def test_cpep_ablations() -> None:
    emg, pose = encoders()
    frozen_emg = CPEP(CPEPConfig(freeze_emg=True), emg, pose)
    assert not any(q.requires_grad for q in frozen_emg.emg.parameters())
    assert frozen_emg.head.weight.requires_grad
    rand = CPEP(CPEPConfig(emg_init="random"), emg, pose)
    assert not torch.equal(rand.emg.tokenizer.embed.weight, emg.tokenizer.embed.weight)
    same = CPEP(CPEPConfig(), emg, pose)
    assert torch.equal(same.emg.tokenizer.embed.weight, emg.tokenizer.embed.weight)
    x, _ = batch()
    avg = CPEP(CPEPConfig(pool="mean"), emg, pose)
    assert not torch.allclose(avg.embed_emg(x), same.embed_emg(x))
    with pytest.raises(ValueError, match=r"cpep\.pool"):
        CPEPConfig(pool="max")


def test_query_mask_semantics() -> None:
    m = query_mask(2, 3, torch.device("cpu"))
    assert m[:2, :2].all() and not m[:2, 2:].any()  # queries see only queries
    assert m[2:].all()  # pose tokens see everything


def embridge(**kw):
    emg, pose = encoders()
    model = EMBridge(EMBridgeConfig(n_queries=4, **kw), emg, pose, heads=4)
    model.centroids = F.normalize(torch.randn(5, 32, generator=gen(3)), dim=1)
    return model, pose


def test_qformer_self_attention_starts_from_the_pose_encoder() -> None:
    model, pose = embridge()
    for a, b in zip(model.qformer.blocks, pose.blocks, strict=True):
        assert torch.equal(a.attn.q.weight, b.attn.q.weight)
        assert torch.equal(a.mlp.fc1.weight, b.mlp.fc1.weight)
    assert sorted(model.qformer.cross) == ["0", "2"]  # every other block of 4


def test_mprl_queries_do_not_see_pose_tokens() -> None:
    """In the reconstruction pass the queries' outputs do not depend on the pose tokens."""
    model, _ = embridge()
    model.eval()
    x, p = batch()
    q = model.qformer(model.emg(x))
    hidden = pose_token_mask(len(x), 4, 0.5, gen(4))
    seen = {}

    def grab(mod, inp, out):
        seen.setdefault("h", []).append(out[:, :4].clone())

    hook = model.qformer.blocks[-2].register_forward_hook(grab)  # the last outputs pose only
    model.qformer.reconstruct(q, p, hidden)
    model.qformer.reconstruct(q, p * 3 + 1, hidden)
    hook.remove()
    assert torch.allclose(seen["h"][0], seen["h"][1], atol=1e-6)


def test_embridge_infonce_uses_the_query_closest_to_the_paired_pose() -> None:
    model, _ = embridge(soft="none", lam=0.0)
    x, p = batch()
    loss, _ = model(x, p)
    with torch.no_grad():
        q, v = model.queries(x), model.embed_pose(p)
        scale = model.logit_scale.exp()
        ref = 0.0
        for i in range(len(x)):
            u = max(q[i], key=lambda qm: float(qm @ v[i]))
            logits = torch.stack([scale * u @ v[j] for j in range(len(x))])
            ref -= torch.log_softmax(logits, 0)[i]
        ref /= len(x)
    assert loss.item() == pytest.approx(float(ref), rel=1e-5)


@pytest.mark.parametrize("soft", ["cascle", "none", "label_smoothing", "softclip"])
def test_embridge_variants_train_emg_and_qformer_but_not_the_pose_anchor(soft) -> None:
    model, _ = embridge(soft=soft)
    model.train()
    x, p = batch()
    hidden = pose_token_mask(len(x), 4, 0.5, gen(5))
    loss, m = model(x, p, hidden)
    loss.backward()
    assert "mprl" in m and np.isfinite(m["loss"])
    assert all(q.grad is None for q in model.pose.parameters())
    assert model.qformer.queries.grad is not None and model.qformer.g.weight.grad is not None
    assert all(c.attn.q.weight.grad is not None for c in model.qformer.cross.values())
    assert model.emg.tokenizer.embed.weight.grad is not None


def test_plain_qformer_builds_no_reconstruction_parts() -> None:
    model, _ = embridge(lam=0.0, soft="none")
    assert not hasattr(model.qformer, "g")
    x, p = batch()
    _, m = model(x, p)
    assert "mprl" not in m and "cascle" not in m


def test_zero_shot_matches_scikit_learn_knn() -> None:
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    bank = rng.normal(size=(3000, 16)).astype(np.float32)
    labels = rng.integers(0, 5, 3000)
    q = rng.normal(size=(400, 16)).astype(np.float32)
    knn = KNeighborsClassifier(n_neighbors=10, metric="cosine", algorithm="brute")
    ref = knn.fit(bank, labels).predict(q)
    ours = zero_shot(q, bank, labels, k=10, chunk=128)
    assert np.array_equal(ours, ref)


def test_zero_shot_scores_several_queries_by_the_best_one() -> None:
    bank = np.eye(4, dtype=np.float32)
    labels = np.array([0, 1, 2, 3])
    q = np.array([[[1.0, 0, 0, 0], [0, 0, 0.2, 0.1]]], dtype=np.float32)  # (1, M=2, d)
    assert zero_shot(q, bank, labels, k=1).tolist() == [0]


def test_class_scores_match_scikit_learn() -> None:
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    s = class_scores(y, p, 4)
    assert s.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, p))
    assert np.allclose(s.f1, f1_score(y, p, average=None))
    assert np.array_equal(s.confusion, confusion_matrix(y, p))


def test_mprl_equals_the_plain_full_sequence_computation() -> None:
    """Embedding only visible patches and decoding only hidden ones gives the loss of the
    straightforward pass (every token embedded, mask token + position at hidden ones, every
    token decoded, eq. 2 over hidden): pose tokens carry their positions, so order is free."""
    model, _ = embridge()
    qf = model.qformer.eval()
    x, p = batch()
    q = qf(model.emg(x))
    hidden = pose_token_mask(len(x), 4, 0.5, gen(6))
    tok = qf.pose_tokens
    tokens = tok(p)  # (B, L, d) with positions
    tokens = torch.where(hidden[..., None], qf.pose_mask + tok.pos[1:], tokens)
    h = torch.cat([q, tokens], 1)
    for blk in qf.blocks:
        h = blk(h, query_mask(4, 4, h.device))
    pred = qf.g(qf.norm(h[:, 4:]))
    target = patchify(tok.standardise(p), tok.patch)
    ref = (pred - target).square().sum(-1)[hidden].mean()
    assert qf.reconstruct(q, p, hidden).item() == pytest.approx(ref.item(), rel=1e-5)
    with pytest.raises(ValueError, match="same number of tokens"):
        qf.reconstruct(q, p, hidden & (torch.arange(len(x))[:, None] > 0))


def test_block_outputs_for_a_suffix_equal_the_full_block() -> None:
    from emgcore.models.transformer import Block

    torch.manual_seed(0)
    blk = Block(16, 4).eval()
    h = torch.randn(3, 9, 16)
    mask = query_mask(4, 5, h.device)
    assert torch.allclose(blk(h, mask, first=6), blk(h, mask)[:, 6:], atol=1e-6)
