"""The pose family's registered versions from raw EMG (README, "Using a champion on new data"),
as tests/methods/test_inference.py does for KinEMbed and EMG-JEPA: a CPEP or EMBridge version
gives zero-shot gesture labels and reproduces the eval score it records, the ``mae-emg``
version gives its encoder's embeddings. Each fixture runs its method's smoke final trial (one
seed) in-process and writes the version's files as the registry would."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from emgcore.config import load_yaml, resolve_config
from emgcore.data import open_dataset
from emgcore.errors import EmgDataError, MissingFieldError
from emgcore.eval.probe import class_scores
from emgcore.gestures import recording_id
from emgcore.methods import METHODS, load_inference
from emgcore.methods.base import INFERENCE_FILE, TrialSetup
from emgcore.methods.posealign import EmgEncoder, GestureRecognizer, load_model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The smoke recordings the three methods share (one simulator preset), and one cache."""
    m = METHODS["cpep"]
    return open_dataset(m.data, **m.smoke_sim), tmp_path_factory.mktemp("cache")


def final(name, data, folder):
    """``name``'s smoke final trial (one seed) and its registration; its exports' files are
    written to ``folder/<suffix or "version">``."""
    recs, cache = data
    m = METHODS[name]
    cfg = replace(load_yaml(m.config, resolve_config(m.smoke_preset)), seeds=(0,))
    setup = TrialSetup(mode="final", cache=str(cache), data=m.data, fingerprint="f")
    trial = m.trial(cfg, recs, setup)
    values = {u: trial.run(u, lambda model: ()).value for u in trial.units}
    reg = trial.registration(values)
    for ex in reg.exports:
        ex.write_files(folder / (ex.suffix or "version"))
    return trial, reg


@pytest.fixture(scope="module", params=["cpep", "embridge"])
def aligned(request, data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    trial, reg = final(request.param, data, tmp)
    return trial, reg, tmp / "version"


def eval_recordings(trial, recs):
    """The eval users' raw recordings, in the data's order."""
    ids = set(trial.splits["eval"].recording)
    return [r for r in recs if recording_id(r) in ids]


@pytest.mark.slow
def test_aligned_champion_takes_raw_emg_and_reproduces_its_eval_score(aligned, data):
    """Each eval recording's raw EMG, one at a time, against the papers' bank (every eval pose
    of the class set, per class set, balanced accuracy averaged over the two sets): exactly the
    first seed's ``eval_zs_bacc`` the version records."""
    trial, reg, folder = aligned
    pipe = load_inference(folder)
    assert isinstance(pipe, GestureRecognizer) and pipe.method == trial.target
    ev, g = trial.splits["eval"], trial.config.gestures
    accs = []
    for classes in (g.in_dist, g.unseen):
        y_ev = ev.labels(classes)
        keep = y_ev >= 0
        bank = (ev.pose[torch.as_tensor(keep)].numpy(), y_ev[keep])
        of = {s: i for i, stages in enumerate(classes.values()) for s in stages}
        y, pred = [], []
        for rec in eval_recordings(trial, data[0]):
            if (label := of.get(rec.meta["stage"], -1)) < 0:
                continue  # the other class set's recording
            got = pipe.predict(np.asarray(rec.emg), rec.fs, bank=bank)
            n = int((ev.recording == recording_id(rec)).sum())
            assert got.shape == pipe.window_end(rec.n_samples, rec.fs).shape == (n,)
            pred.append(got)
            y.append(np.full(n, label))
        accs.append(class_scores(np.concatenate(y), np.concatenate(pred), len(classes)))
    score = float(np.mean([a.balanced_accuracy for a in accs]))
    assert score == pytest.approx(reg.test.value, abs=1e-6)
    # not one label for every window: the retrieval discriminates, so a preprocessing step
    # done otherwise would move the score (the smoke models sit near chance, 0.25)
    assert all((a.confusion.sum(0) > 0).sum() > 1 for a in accs)


@pytest.mark.slow
def test_default_bank_gives_gesture_names_and_embed_is_the_logged_graph(aligned, data):
    trial, reg, folder = aligned
    pipe = load_inference(folder)
    g, ev = trial.config.gestures, trial.splits["eval"]
    assert pipe.classes == (*g.in_dist, *g.unseen)
    assert pipe.class_sets == {"in_dist": tuple(g.in_dist), "unseen": tuple(g.unseen)}
    rec = eval_recordings(trial, data[0])[0]
    labels = pipe.predict(np.asarray(rec.emg), rec.fs)
    assert labels.shape == pipe.window_end(rec.n_samples, rec.fs).shape
    assert set(labels.tolist()) <= set(pipe.classes)

    # the default bank is the probe-training windows' poses, by class: the same labels as
    # passing those poses as one's own bank
    probe = [
        (trial.splits["probe_train_in"], g.in_dist),
        (trial.splits["probe_train_unseen"], g.unseen),
    ]
    poses = np.concatenate([w.pose[torch.as_tensor(w.labels(c) >= 0)].numpy() for w, c in probe])
    names = np.concatenate([np.asarray(list(c))[w.labels(c)[w.labels(c) >= 0]] for w, c in probe])
    assert len(pipe.bank) == len(poses)
    np.testing.assert_array_equal(labels, pipe.predict(np.asarray(rec.emg), rec.fs, (poses, names)))
    users = sorted({u for w, _ in probe for u in w.user})
    assert (
        f"probe-training windows (probe_train_in, probe_train_unseen) of users {','.join(users)} "
        in pipe.bank_source
    )
    assert set(users).isdisjoint(ev.user)  # the eval users' poses are not the default bank

    # embed: the registered module's output (what the logged graph serves) on the split's windows
    z = pipe.embed(np.asarray(rec.emg), rec.fs)
    (ex,) = reg.exports
    with torch.no_grad():
        want = ex.model(ev.emg[torch.as_tensor(ev.recording == recording_id(rec))]).numpy()
    np.testing.assert_allclose(z, want, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_aligned_version_refuses_other_channels_rates_and_banks_in_one_line(aligned, data):
    trial, _, folder = aligned
    pipe = load_inference(folder)
    rec = data[0][0]
    emg = np.asarray(rec.emg)
    with pytest.raises(EmgDataError, match=r"field 'emg'.*takes EMG \(T, 16\), got shape"):
        pipe.predict(emg[:, :3], rec.fs)
    with pytest.raises(EmgDataError, match=r"field 'fs'.*trained at 2000 Hz, got 1000 Hz"):
        pipe.predict(emg, 1000.0)
    with pytest.raises(EmgDataError, match=r"field 'emg'.*needs at least 4000 samples"):
        pipe.predict(emg[:100], rec.fs)
    poses = trial.splits["eval"].pose[:3].numpy()
    with pytest.raises(EmgDataError, match=r"field 'bank'.*poses \(M, 4000, 20\)"):
        pipe.predict(emg, rec.fs, bank=(poses[:, :, :5], [0, 1, 2]))
    with pytest.raises(EmgDataError, match=r"field 'bank'.*got poses \(3, 4000, 20\) and 2 labels"):
        pipe.predict(emg, rec.fs, bank=(poses, [0, 1]))


@pytest.mark.slow
def test_aligned_version_files_still_rebuild_the_model_the_registry_rescores(aligned):
    _, reg, folder = aligned
    (ex,) = reg.exports
    assert ex.rescore(load_model(folder)) == pytest.approx(reg.selection.value, abs=1e-9)


@pytest.fixture(scope="module")
def mae(data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mae")
    trial, reg = final("mae", data, tmp)
    return trial, reg, tmp


@pytest.mark.slow
def test_mae_emg_encoder_from_raw_emg_gives_the_encoders_embeddings(mae, data):
    trial, _, folder = mae
    pipe = load_inference(folder / "-emg")
    assert isinstance(pipe, EmgEncoder) and pipe.method == "mae"
    ev, encoder = trial.splits["eval"], trial.first.emg_encoder
    for rec in eval_recordings(trial, data[0]):
        rows = torch.as_tensor(ev.recording == recording_id(rec))
        # the preprocessing reproduced: the very windows the split cut from this recording
        torch.testing.assert_close(
            pipe.windows(np.asarray(rec.emg), rec.fs), ev.emg[rows], rtol=0, atol=0
        )
        z = pipe.embed(np.asarray(rec.emg), rec.fs)
        with torch.no_grad():
            want = encoder.summary(ev.emg[rows]).numpy()
        assert z.shape == (int(rows.sum()), encoder.dim)
        np.testing.assert_allclose(z, want, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(pipe.predict(np.asarray(rec.emg), rec.fs), z)
    # the pose encoder's version stays weights only; both still rebuild with load_model
    assert not (folder / "-pose" / INFERENCE_FILE).exists()
    with pytest.raises(MissingFieldError, match=r"mae-pose version takes pose windows.*load_model"):
        load_inference(folder / "-pose")
    assert load_model(folder / "-pose").channels == ev.pose.shape[2]
    assert load_model(folder / "-emg").channels == ev.emg.shape[2]
