"""AEMG as a method (emgcore.methods.aemg): cohorts and tune subjects, sentences per gesture
repetition, the registered graph and the inference path. The whole trial runs in
tests/methods/test_every_method.py, the sweep in tests/orchestration/test_aemg_sweep.py."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from emgcore.config import load_yaml, resolve_config
from emgcore.contractions import TokenizerConfig, Tokens, label_trials, sentence_set
from emgcore.data import preset, simulate
from emgcore.errors import EmgDataError, InvalidValueError, ShapeError
from emgcore.methods import METHODS
from emgcore.methods.aemg import (
    AEMGRunConfig,
    CohortConfig,
    PackedSentenceEncoder,
    SentenceEncoder,
    pack,
    sentences_of,
    split_cohorts,
)
from emgcore.methods.base import TrialSetup
from emgcore.models.aemg import NST, as_batch
from emgcore.preprocessing import true_runs
from emgcore.recording import ChannelLayout, Recording


@pytest.fixture(scope="module")
def myo() -> list[Recording]:
    return simulate(preset("myo-like", n_subjects=6, duration_s=20.0))


@pytest.fixture(scope="module")
def smoke_cfg() -> AEMGRunConfig:
    m = METHODS["aemg"]
    return replace(load_yaml(m.config, resolve_config(m.smoke_preset)), seeds=(0,))


def _rec(subject: str, labelled: bool = True) -> Recording:
    x = np.random.default_rng(0).standard_normal((400, 8)).astype(np.float32)
    labels = {"gesture": np.zeros(400, np.int64)} if labelled else {}
    return Recording(x, 200.0, ChannelLayout.ring(8), subject=subject, session="s", labels=labels)


def test_marked_cohorts_are_kept_and_tune_subjects_come_from_the_pre_training_cohort():
    recs = [_rec(f"pre/p{i}") for i in range(5)] + [_rec(f"eval/e{i}") for i in range(3)]
    c = split_cohorts(recs, CohortConfig(tune_subjects=3))
    assert c.evaluation_subjects == ("eval/e0", "eval/e1", "eval/e2")
    assert len(c.tune) == 3 and all(s.startswith("pre/") for s in c.tune)
    assert {r.subject for r in c.pretrain} == {f"pre/p{i}" for i in range(5)}
    # the same draw every time; another split seed draws others
    assert split_cohorts(recs, CohortConfig(tune_subjects=3)).tune == c.tune
    draws = {
        split_cohorts(recs, CohortConfig(tune_subjects=3, split_seed=s)).tune for s in range(8)
    }
    assert len(draws) > 1


def test_unmarked_subjects_are_split_by_a_seeded_draw_and_unlabelled_ones_never_tune():
    recs = [_rec(f"s{i}") for i in range(8)] + [_rec("quiet", labelled=False)]
    c = split_cohorts(recs, CohortConfig(eval_fraction=0.25, tune_subjects=4))
    ev = set(c.evaluation_subjects)
    assert 2 <= len(ev) and not ev & set(c.tune) and "quiet" not in c.tune
    assert not ev & {r.subject for r in c.pretrain}
    assert all(r.subject in ev for r in c.evaluation)


def test_too_few_subjects_is_one_error_naming_the_field():
    with pytest.raises(InvalidValueError) as e:
        split_cohorts([_rec("a"), _rec("b"), _rec("c")], CohortConfig(tune_subjects=2))
    assert e.value.field == "data.tune_subjects" and "--sim-subjects" in str(e.value)
    with pytest.raises(InvalidValueError) as e:
        CohortConfig(eval_fraction=1.0)
    assert e.value.field == "data.eval_fraction"


def test_a_trial_starts_where_rest_resumes_after_a_gesture():
    lab = np.array([1, 1, 0, 0, 2, 2, 0, 3, 3])
    assert label_trials(lab).tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert label_trials(np.full(5, 4)).tolist() == [0] * 5  # one gesture file: one trial


def test_grouped_sentences_never_span_two_groups_and_keep_every_token_once():
    n = 11
    tok = Tokens(
        np.zeros((n, 2, 3), np.float32),
        np.ones(n, np.int64),
        np.arange(n),
        np.zeros(n),
        np.arange(n),
    )
    group = np.array([0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 2])
    idx = tok.sentences(4, group)
    assert idx.tolist() == [
        [0, 1, 2, 3], [4, -1, -1, -1], [5, -1, -1, -1], [6, 7, 8, 9], [10, -1, -1, -1],
    ]  # fmt: skip
    assert tok.sentences(4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, -1]]


def test_labelled_sentences_are_one_gesture_repetition_each(myo, smoke_cfg):
    recs = [r for r in myo if r.subject == "s00"]
    s = sentences_of(recs, smoke_cfg, labelled=True)
    lab = np.asarray(recs[0].labels["gesture"])
    reps = int(label_trials(lab).max()) + 1
    first = s.take(s.recording == 0)
    # one sentence per repetition with a contraction (a repetition holds a few tokens at most)
    assert reps - 2 <= len(first) <= reps + 2
    assert (first.length > 0).sum(1).max() < smoke_cfg.tokenizer.sentence_tokens
    # each sentence is labelled with its repetition's gesture, never rest (its blips don't vote)
    gestures = [int(lab[a]) for a, _ in true_runs(lab != 0)]
    assert first.label.tolist() == gestures
    assert (first.end <= recs[0].n_samples).all() and (np.diff(first.end) > 0).all()
    unlabelled = sentences_of(recs, smoke_cfg, labelled=False)
    assert len(unlabelled) < len(s) and (unlabelled.label == -1).all()


def test_search_trials_pre_train_without_the_tune_subjects_and_the_final_with_them(myo, smoke_cfg):
    m = METHODS["aemg"]
    cv = m.trial(smoke_cfg, myo, TrialSetup(mode="cv", data="myo-like"))
    final = m.trial(smoke_cfg, myo, TrialSetup(mode="final", data="myo-like"))
    tune = set(cv.cohorts.tune)
    ev = set(cv.cohorts.evaluation_subjects)
    assert not set(cv.unlabelled.subject) & (tune | ev)
    assert tune <= set(final.unlabelled.subject) and not set(final.unlabelled.subject) & ev
    assert set(cv.tune.subject) == tune and set(cv.evaluation.subject) == ev
    assert cv.units == ["cv"] and final.units == ["seed0"]


def test_the_registered_graph_is_the_encoders_pooled_embedding(myo, smoke_cfg):
    s = sentences_of(myo[:2], smoke_cfg, labelled=True)
    torch.manual_seed(0)
    enc = NST(smoke_cfg.model_config()).eval()
    batch = as_batch(s)
    with torch.no_grad():
        want = enc.pool(batch)
        got = PackedSentenceEncoder(enc)(pack(batch))
    assert torch.equal(got, want)
    assert pack(batch).shape[-1] == smoke_cfg.model_config().token_len + 2 + 4


def test_the_inference_path_round_trips_and_takes_other_layouts(myo, smoke_cfg, tmp_path):
    torch.manual_seed(0)
    rec = myo[0]
    enc = SentenceEncoder(smoke_cfg, NST(smoke_cfg.model_config()), rec.fs, rec.layout)
    enc.save(tmp_path)
    from emgcore.methods import load_inference

    back = load_inference(tmp_path)
    assert isinstance(back, SentenceEncoder) and back.config == smoke_cfg
    emg = np.asarray(rec.emg)
    z = back.predict(emg, rec.fs)
    assert np.array_equal(z, enc.predict(emg, rec.fs))
    assert z.shape == (len(back.sentence_end(emg, rec.fs)), smoke_cfg.model.dim)
    with pytest.raises(ShapeError, match="takes EMG"):
        back.predict(emg[:, :3], rec.fs)
    for quiet in (np.zeros((4000, 8)), emg[:200]):  # flat; 1 s, no rest to calibrate on
        with pytest.raises(EmgDataError, match="field 'emg': no contraction to embed"):
            back.predict(quiet, rec.fs)
    with pytest.raises(EmgDataError, match="sentence_end"):
        back.window_end(len(emg), rec.fs)
    grid = simulate(preset("flexemg-like", duration_s=10.0), [0])[0]  # 64 electrodes at 1 kHz
    zg = back.predict(np.asarray(grid.emg), grid.fs, layout=grid.layout)
    assert zg.shape[1] == smoke_cfg.model.dim and np.isfinite(zg).all()


def test_bad_settings_are_refused_naming_the_field():
    for kw, name in (({"seeds": ()}, "seeds"), ({"few_shot": (0.0,)}, "few_shot")):
        with pytest.raises(InvalidValueError) as e:
            AEMGRunConfig(**kw)
        assert e.value.field == name
    assert AEMGRunConfig(tokenizer=TokenizerConfig(sentence_tokens=8)).model_config().sentence == 8


def test_every_sentence_of_a_recording_without_contractions_is_an_error(smoke_cfg):
    flat = Recording(np.zeros((2000, 8), np.float32), 200.0, ChannelLayout.ring(8), "a", "s")
    with pytest.raises(InvalidValueError, match="no contraction"):
        sentence_set([flat], smoke_cfg.tokenizer, label=None)


def test_data_a_trial_cannot_use_is_refused_before_any_trial(smoke_cfg):
    from emgcore.methods.aemg import check_data

    recs = [_rec(f"s{i}") for i in range(4)]  # 2 evaluation, 2 tune, no one else
    with pytest.raises(InvalidValueError, match="nothing to pre-train on") as e:
        check_data(smoke_cfg, recs)
    assert e.value.field == "data.tune_subjects"
    check_data(replace(smoke_cfg, data=replace(smoke_cfg.data, sources=("grid110",))), recs)
    bad = replace(smoke_cfg, data=replace(smoke_cfg.data, sources=("flexemg_like",)))
    with pytest.raises(InvalidValueError, match="'flexemg_like' is neither") as e:
        check_data(bad, [_rec(f"s{i}") for i in range(8)])
    assert e.value.field == "data.sources"


def test_simulated_sources_are_other_people_than_a_simulated_cohort():
    """The simulator draws a person's anatomy from (seed, subject index): a source simulated
    with the cohort's seed would be the cohort's people on another device."""
    from emgcore.data.simulator import _drive
    from emgcore.methods.aemg import SOURCE_SEED

    cohort = _drive(preset("myo-cohorts"), 1, 0, None)[0]
    same_seed = _drive(preset("flexemg-like"), 1, 0, None)[0]
    source = _drive(preset("flexemg-like", seed=SOURCE_SEED), 1, 0, None)[0]
    assert np.array_equal(cohort.mu_pos, same_seed.mu_pos)  # what the seed change avoids
    assert not np.array_equal(cohort.mu_pos, source.mu_pos)
    assert not np.array_equal(cohort.radius_mm, source.radius_mm)
    from emgcore.methods.aemg import load_sources

    (src, *_) = load_sources(CohortConfig(sources=("myo-like",), source_subjects=1))
    want = simulate(preset("myo-like", seed=SOURCE_SEED), [0])[0]
    assert np.array_equal(np.asarray(src.emg), np.asarray(want.emg))
