"""Train/validation/test splits over recordings, by subject, session or gesture.

Every split works on a *catalog*: a DataFrame with one row per recording and at least the
columns ``subject`` and ``session`` (plus ``stage``/``gesture`` for gesture splits), as made by
:func:`catalog`. A :class:`Split` maps part names (``train``, ``val``, ``test``, ...) to row
positions in that catalog. Parts never share a recording; what else they may not share (a
subject, a session, a gesture) is what each function guarantees, and tests prove it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from emgcore.errors import InvalidValueError, MissingFieldError


@dataclass(frozen=True)
class Split:
    name: str
    parts: dict[str, tuple[int, ...]]  # part -> catalog row positions

    def __getitem__(self, part: str) -> tuple[int, ...]:
        return self.parts[part]

    def select(self, items: Sequence[Any], part: str) -> list[Any]:
        """The items (recordings, in catalog order) of one part."""
        return [items[i] for i in self.parts[part]]


def catalog(recordings: Iterable[Any]) -> pd.DataFrame:
    """One row per recording: subject, session, device, source and every ``meta`` entry."""
    rows = []
    for r in recordings:
        meta = r.meta if hasattr(r, "meta") else r.header.get("meta", {})
        rows.append({"subject": r.subject, "session": r.session, **meta})
    return pd.DataFrame(rows)


def _need(cat: pd.DataFrame, *cols: str) -> None:
    for c in cols:
        if c not in cat.columns:
            raise MissingFieldError(f"catalog has no column {c!r}", field=c)


def _rows(mask: pd.Series | np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.flatnonzero(np.asarray(mask)))


def cross_session(
    cat: pd.DataFrame, test_sessions: Sequence[str], val_sessions: Sequence[str] = ()
) -> Split:
    """Hold out sessions for every subject (DB8: train A1, A2 | test A3)."""
    _need(cat, "session")
    present = set(cat["session"])
    if missing := (set(test_sessions) | set(val_sessions)) - present:
        raise InvalidValueError(
            f"sessions {sorted(missing)} are not in the catalog (it has {sorted(present)})",
            field="session",
        )
    test = cat["session"].isin(test_sessions)
    val = cat["session"].isin(val_sessions) & ~test
    return Split(
        "cross_session", {"train": _rows(~test & ~val), "val": _rows(val), "test": _rows(test)}
    )


def cross_user(
    cat: pd.DataFrame,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    seed: int = 0,
    test_subjects: Sequence[str] | None = None,
) -> Split:
    """Disjoint subject sets for train / val / test (participant-level, as in EMG-JEPA)."""
    _need(cat, "subject")
    subjects = np.array(sorted(cat["subject"].unique()))
    rng = np.random.default_rng(seed)
    if test_subjects is None:
        perm = rng.permutation(subjects)
        n_test = max(1, round(test_fraction * len(subjects)))
        test_subjects = perm[:n_test].tolist()
        rest = perm[n_test:]
    else:
        rest = np.array([s for s in subjects if s not in set(test_subjects)])
    n_val = round(val_fraction * len(subjects))
    val_subjects = rest[:n_val].tolist()
    test = cat["subject"].isin(test_subjects)
    val = cat["subject"].isin(val_subjects)
    return Split(
        "cross_user", {"train": _rows(~test & ~val), "val": _rows(val), "test": _rows(test)}
    )


def leave_one_subject_out(cat: pd.DataFrame) -> list[Split]:
    """One split per subject: that subject is the test set, everyone else trains."""
    _need(cat, "subject")
    return [
        Split(
            f"loso:{s}", {"train": _rows(cat["subject"] != s), "test": _rows(cat["subject"] == s)}
        )
        for s in sorted(cat["subject"].unique())
    ]


def kfold_sessions(cat: pd.DataFrame, k: int | None = None) -> list[Split]:
    """Session cross-validation within subjects: fold i tests on the i-th session group.

    Sessions are grouped by name in sorted order, so with DB8's A1, A2 and ``k=2`` this is the
    paper's 2-fold session CV (train A1 -> validate A2, and back). Run it on the training part of
    a :func:`cross_session` split so the held-out session is never touched.
    """
    _need(cat, "session")
    sessions = sorted(cat["session"].unique())
    k = len(sessions) if k is None else k
    if not 2 <= k <= len(sessions):
        raise InvalidValueError(f"k={k} needs 2..{len(sessions)} sessions", field="session")
    groups = np.array_split(np.array(sessions), k)
    return [
        Split(
            f"session_fold{i}",
            {"train": _rows(~cat["session"].isin(g)), "val": _rows(cat["session"].isin(g))},
        )
        for i, g in enumerate(groups)
    ]


def held_out_gestures(
    cat: pd.DataFrame,
    unseen: Sequence[str],
    in_distribution: Sequence[str],
    *,
    gesture_col: str = "stage",
    n_eval_users: int = 1,
    n_tune_users: int = 1,
    n_probe_unseen_users: int = 1,
    seed: int = 0,
) -> Split:
    """Gesture generalisation splits shaped like CPEP/EMBridge Table 1.

    Users are partitioned into four disjoint groups; gestures into in-distribution, unseen
    (never in pre-training) and the rest. Parts:

    - ``pretrain``: train users, every gesture except the unseen ones;
    - ``probe_train``: train users, in-distribution gestures (linear probe fit);
    - ``probe_train_unseen``: probe users, unseen gestures (probe fit for unseen classes);
    - ``tune``: tune users, in-distribution + unseen gestures (hyper-parameters only);
    - ``eval``: eval users, in-distribution + unseen gestures (reported numbers, zero-shot).
    """
    _need(cat, "subject", gesture_col)
    if overlap := set(unseen) & set(in_distribution):
        raise InvalidValueError(
            f"gestures both unseen and in-distribution: {sorted(overlap)}", field=gesture_col
        )
    subjects = np.random.default_rng(seed).permutation(sorted(cat["subject"].unique()))
    need = n_eval_users + n_tune_users + n_probe_unseen_users + 1
    if len(subjects) < need:
        raise InvalidValueError(
            f"{len(subjects)} subjects; this split needs at least {need}", field="subject"
        )
    eval_u = subjects[:n_eval_users]
    tune_u = subjects[n_eval_users : n_eval_users + n_tune_users]
    probe_u = subjects[n_eval_users + n_tune_users : need - 1]
    train_u = subjects[need - 1 :]
    g, s = cat[gesture_col], cat["subject"]
    target = g.isin(in_distribution) | g.isin(unseen)
    parts = {
        "pretrain": _rows(s.isin(train_u) & ~g.isin(unseen)),
        "probe_train": _rows(s.isin(train_u) & g.isin(in_distribution)),
        "probe_train_unseen": _rows(s.isin(probe_u) & g.isin(unseen)),
        "tune": _rows(s.isin(tune_u) & target),
        "eval": _rows(s.isin(eval_u) & target),
    }
    return Split("held_out_gestures", parts)
