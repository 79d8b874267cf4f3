"""Property-based proof that no subject, session or gesture crosses a split that forbids it."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emgcore.errors import InvalidValueError
from emgcore.splits import (
    catalog,
    cross_session,
    cross_user,
    held_out_gestures,
    kfold_sessions,
    leave_one_subject_out,
)

STAGES = [f"g{i}" for i in range(8)]


@st.composite
def catalogs(draw: st.DrawFn, min_subjects: int = 2) -> pd.DataFrame:
    n_sub = draw(st.integers(min_subjects, 9))
    sessions = draw(
        st.lists(st.sampled_from(["A1", "A2", "A3", "A4"]), min_size=2, max_size=4, unique=True)
    )
    rows = []
    for s in range(n_sub):
        for sess in draw(st.lists(st.sampled_from(sessions), min_size=1, max_size=4)):
            rows.append(
                {"subject": f"s{s}", "session": sess, "stage": draw(st.sampled_from(STAGES))}
            )
    return pd.DataFrame(rows)


def _values(cat: pd.DataFrame, rows, col: str) -> set:
    return set(cat.iloc[list(rows)][col])


def _partition(cat: pd.DataFrame, split) -> None:
    seen = [r for rows in split.parts.values() for r in rows]
    assert len(seen) == len(set(seen))  # no recording in two parts


@settings(max_examples=60, deadline=None)
@given(catalogs(), st.integers(0, 10_000))
def test_cross_user_never_shares_a_subject(cat: pd.DataFrame, seed: int) -> None:
    split = cross_user(cat, test_fraction=0.3, val_fraction=0.2, seed=seed)
    _partition(cat, split)
    parts = [_values(cat, split[p], "subject") for p in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert parts[2] and sum(map(len, split.parts.values())) == len(cat)


@settings(max_examples=60, deadline=None)
@given(catalogs())
def test_loso_tests_exactly_one_subject_absent_from_train(cat: pd.DataFrame) -> None:
    folds = leave_one_subject_out(cat)
    assert len(folds) == cat["subject"].nunique()
    for f in folds:
        test = _values(cat, f["test"], "subject")
        assert len(test) == 1 and not test & _values(cat, f["train"], "subject")


@settings(max_examples=60, deadline=None)
@given(catalogs())
def test_cross_session_and_kfold_never_share_a_session(cat: pd.DataFrame) -> None:
    sessions = sorted(cat["session"].unique())
    split = cross_session(cat, test_sessions=sessions[-1:])
    _partition(cat, split)
    assert _values(cat, split["test"], "session") == {sessions[-1]}
    assert sessions[-1] not in _values(cat, split["train"], "session")
    train = cat.iloc[list(split["train"])].reset_index(drop=True)
    if train["session"].nunique() >= 2:
        for fold in kfold_sessions(train, k=2):
            assert not _values(train, fold["train"], "session") & _values(
                train, fold["val"], "session"
            )


@settings(max_examples=60, deadline=None)
@given(catalogs(min_subjects=4), st.integers(0, 100))
def test_held_out_gestures_keep_users_and_unseen_gestures_apart(
    cat: pd.DataFrame, seed: int
) -> None:
    unseen, in_dist = STAGES[:3], STAGES[3:6]
    split = held_out_gestures(cat, unseen, in_dist, seed=seed)
    users = {p: _values(cat, rows, "subject") for p, rows in split.parts.items()}
    groups = [
        users["pretrain"] | users["probe_train"],
        users["probe_train_unseen"],
        users["tune"],
        users["eval"],
    ]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not groups[i] & groups[j]
    assert not _values(cat, split["pretrain"], "stage") & set(unseen)
    assert _values(cat, split["probe_train"], "stage") <= set(in_dist)
    assert _values(cat, split["probe_train_unseen"], "stage") <= set(unseen)


def test_db8_protocol_on_named_sessions() -> None:
    cat = pd.DataFrame(
        [{"subject": s, "session": a} for s in ("S1", "S2") for a in ("A1", "A2", "A3")]
    )
    split = cross_session(cat, test_sessions=["A3"])
    assert _values(cat, split["test"], "session") == {"A3"}
    train = cat.iloc[list(split["train"])].reset_index(drop=True)
    folds = kfold_sessions(train, k=2)
    assert [sorted(_values(train, f["val"], "session")) for f in folds] == [["A1"], ["A2"]]
    assert [sorted(_values(train, f["train"], "session")) for f in folds] == [["A2"], ["A1"]]
    with pytest.raises(InvalidValueError, match=r"\['A9'\]"):
        cross_session(cat, test_sessions=["A9"])


def test_catalog_reads_recording_metadata() -> None:
    from emgcore.data.simulator import preset, simulate

    recs = simulate(
        preset(
            "emg2pose-like",
            duration_s=0.5,
            n_subjects=1,
            sessions=("s0",),
            stages=("HandClawGraspFlicks", "ShakaVulcanPeace"),
        )
    )
    cat = catalog(recs)
    assert list(cat["stage"]) == ["HandClawGraspFlicks", "ShakaVulcanPeace"]
    assert set(cat.columns) >= {"subject", "session", "stage"}
