"""A registered model's whole inference path (README, "Using a champion"): raw EMG as recorded in,
the method's output out, reproducing the score the version records. The registry test
(tests/orchestration/test_sweep.py) does the same from ``models:/kinembed@champion`` in a fresh
process."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from emgcore.config import load_yaml, resolve_config
from emgcore.data import open_dataset
from emgcore.errors import EmgDataError
from emgcore.methods import METHODS, load_inference
from emgcore.methods.base import TrialSetup, save_no_inference
from emgcore.models.decoder import r2_per_output


@pytest.fixture(scope="module")
def kinembed_final(tmp_path_factory):
    """KinEMbed's smoke final trial (one seed), its registration and its exported files."""
    tmp = tmp_path_factory.mktemp("kinembed")
    m = METHODS["kinembed"]
    cfg = replace(load_yaml(m.config, resolve_config(m.smoke_preset)), seeds=(0,))
    recs = open_dataset(m.data, **m.smoke_sim)
    setup = TrialSetup(
        mode="final", cache=str(tmp / "cache"), data=m.data, fingerprint="f", selection={}
    )
    trial = m.trial(cfg, recs, setup)
    values = {u: trial.run(u, lambda model: ()).value for u in trial.units}
    reg = trial.registration(values)
    (ex,) = reg.exports
    ex.write_files(tmp)
    return trial, recs, reg, tmp


@pytest.mark.slow
def test_kinembed_champion_takes_raw_emg_and_reproduces_its_heldout_score(kinembed_final):
    trial, recs, reg, folder = kinembed_final
    subject = trial.subjects[0].subject
    (raw,) = [r for r in recs if r.subject == subject and r.session == trial.test]
    pipe = load_inference(folder)
    doa = pipe.predict(np.asarray(raw.emg), raw.fs)
    end = pipe.window_end(raw.n_samples, raw.fs)
    assert doa.shape == (len(end), len(raw.joint_names))
    r2 = float(np.mean(r2_per_output(np.asarray(raw.kinematics)[end], doa)))
    assert r2 == pytest.approx(reg.test.value, abs=1e-5)
    assert reg.test.value > 0.0  # a model that decodes something: the check could fail
    # the nightly's re-score of a registered version: the same number from its files alone
    (ex,) = reg.exports
    assert ex.retest(folder) == pytest.approx(reg.test.value, abs=1e-5)
    assert pipe.joint_names == raw.joint_names and pipe.fs == raw.fs


@pytest.mark.slow
def test_inference_refuses_other_channels_and_rates_in_one_line(kinembed_final):
    _, recs, _, folder = kinembed_final
    pipe = load_inference(folder)
    emg = np.asarray(recs[0].emg)
    with pytest.raises(EmgDataError, match=r"field 'emg'.*takes EMG \(T, 16\), got shape"):
        pipe.predict(emg[:, :3], recs[0].fs)
    with pytest.raises(EmgDataError, match=r"field 'fs'.*trained at 2000 Hz, got 1000 Hz"):
        pipe.predict(emg, 1000.0)


def test_a_folder_without_an_inference_file_says_what_to_do(tmp_path):
    with pytest.raises(EmgDataError, match="registered without its inference pipeline"):
        load_inference(tmp_path)
    # a weights-only export says why itself, found in the version's folder or extra_files
    save_no_inference("takes pose windows; load_model(folder) instead", tmp_path / "extra_files")
    with pytest.raises(EmgDataError, match=r"no inference.pt here: takes pose windows; load_mo"):
        load_inference(tmp_path)


@pytest.mark.slow
def test_jepa_champion_takes_raw_emg_and_reproduces_its_test_score(tmp_path):
    """The registered pose model from each test user's raw recordings (normalised with
    statistics of all of the user's own recordings, label-free, as the training data was):
    the test users' JA-MAE the version records."""
    from emgcore.methods.jepa import prepare
    from emgcore.models.jepa import ja_mae

    m = METHODS["jepa"]
    cfg = replace(load_yaml(m.config, resolve_config(m.smoke_preset)), seeds=(0,))
    recs = open_dataset(m.data, **m.smoke_sim)
    setup = TrialSetup(mode="final", cache=str(tmp_path), data=m.data, fingerprint="f")
    trial = m.trial(cfg, recs, setup)
    values = {u: trial.run(u, lambda model: ()).value for u in trial.units}
    reg = trial.registration(values)
    (ex,) = reg.exports
    ex.write_files(tmp_path)

    pipe = load_inference(tmp_path)
    test_users = set(trial.data.test.user)
    preds = []
    for rec in (r for r in recs if r.subject in test_users):  # in the split's order
        own = [np.asarray(r.emg) for r in recs if r.subject == rec.subject]
        angles = pipe.predict(np.asarray(rec.emg), rec.fs, calibration=own)
        end = pipe.window_end(rec.n_samples, rec.fs)
        assert angles.shape == (len(end), len(pipe.joints))
        preds.append(angles[np.asarray(rec.valid)[end]] if rec.valid is not None else angles)
    pred = torch.as_tensor(np.concatenate(preds))
    targets = prepare(recs, cfg.data).test.pose  # the low-passed angles the score reads
    assert ja_mae(pred, targets, pipe.unit) == pytest.approx(reg.test.value, abs=1e-3)
