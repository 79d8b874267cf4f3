"""Evaluating frozen embeddings: zero-shot retrieval, linear probes, few-shot, per-class metrics.

CPEP Sec. 2.4 / EMBridge Sec. 3.1. Zero-shot: precompute the pose embeddings of the evaluation
corpus; for each EMG query take the ``k = 10`` most cosine-similar poses and vote their gesture
labels (optionally leaving out the bank entries of the query's own group, e.g. its recording).
Linear probe: a softmax linear classifier on frozen embeddings, scored by balanced accuracy (mean
per-class recall).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def zero_shot(
    queries: Tensor | np.ndarray,
    bank: Tensor | np.ndarray,
    bank_labels: Tensor | np.ndarray,
    k: int = 10,
    *,
    n_classes: int | None = None,
    chunk: int = 2048,
    query_groups: Sequence[str] | np.ndarray | None = None,
    bank_groups: Sequence[str] | np.ndarray | None = None,
) -> np.ndarray:
    """Top-``k`` cosine retrieval and majority vote: predicted labels ``(N,)``.

    ``queries``: ``(N, d)``, or ``(N, M, d)`` for several embeddings per query (EMBridge's
    queries), scored by the best one (max cosine); ``bank (P, d)`` with integer ``bank_labels
    (P,)`` in ``[0, n_classes)``. A tied vote goes to the smallest label, as scikit-learn's
    ``KNeighborsClassifier`` decides. Queries go through in chunks of ``chunk`` so the
    ``(chunk, P)`` similarity block stays in cache-friendly memory.

    ``query_groups (N,)`` and ``bank_groups (P,)`` (both or neither): a query votes only among
    bank entries of other groups (e.g. recordings: its own recording left out of the bank). A
    query with fewer than ``k`` such entries votes with those it has; with none, it gets label 0.
    """
    q = F.normalize(torch.as_tensor(queries, dtype=torch.float32), dim=-1)
    b = F.normalize(torch.as_tensor(bank, dtype=torch.float32), dim=-1)
    labels = torch.as_tensor(bank_labels, dtype=torch.long)
    if len(b) != len(labels):
        raise ValueError(f"bank has {len(b)} embeddings but {len(labels)} labels")
    if (query_groups is None) != (bank_groups is None):
        raise ValueError("query_groups and bank_groups go together")
    if query_groups is not None:
        # groups as integer codes over both sides, compared per chunk
        codes = np.unique(np.concatenate([query_groups, bank_groups]), return_inverse=True)[1]
        q_code = torch.as_tensor(codes[: len(q)])
        b_code = torch.as_tensor(codes[len(q) :])
        if len(q_code) != len(q) or len(b_code) != len(b):
            raise ValueError("one group per query and per bank entry")
    k = min(k, len(b))
    n_cls = int(n_classes if n_classes is not None else labels.max().item() + 1)
    out = torch.empty(len(q), dtype=torch.long)
    ones = torch.ones(1, 1).expand(chunk, k)
    for a in range(0, len(q), chunk):
        qc = q[a : a + chunk]
        sims = qc @ b.T if qc.dim() == 2 else (qc @ b.T).amax(dim=1)  # (n, P)
        weight = ones[: len(qc)]
        if query_groups is not None:
            sims = sims.masked_fill(q_code[a : a + chunk, None] == b_code[None, :], -torch.inf)
        top = sims.topk(k, dim=1)  # (n, k)
        if query_groups is not None:
            weight = torch.isfinite(top.values).float()  # excluded entries cast no vote
        votes = torch.zeros(len(qc), n_cls).scatter_add_(1, labels[top.indices], weight)
        out[a : a + chunk] = votes.argmax(dim=1)  # first maximum: the smallest tied label
    return out.numpy()


@dataclass
class ClassScores:
    """Balanced accuracy, per-class F1 and the confusion matrix (rows: true, cols: predicted)."""

    balanced_accuracy: float
    f1: np.ndarray  # (K,)
    confusion: np.ndarray  # (K, K) counts

    @property
    def macro_f1(self) -> float:
        return float(np.mean(self.f1))


def class_scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> ClassScores:
    """Scores over classes ``0..n_classes-1`` (classes absent from ``y_true`` are left out of the
    balanced accuracy, as scikit-learn's ``balanced_accuracy_score`` does)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    support, predicted, tp = cm.sum(1), cm.sum(0), np.diag(cm)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros(n_classes), where=present)
    precision = np.divide(tp, predicted, out=np.zeros(n_classes), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n_classes), where=denom > 0)
    bal = float(recall[present].mean()) if present.any() else float("nan")
    return ClassScores(bal, f1, cm)


def per_group_f1(
    y_true: np.ndarray, y_pred: np.ndarray, groups: Sequence[str], n_classes: int
) -> dict[str, float]:
    """Macro F1 within each group (EMBridge Fig. 3b: per held-out user)."""
    groups = np.asarray(groups)
    return {
        str(g): class_scores(y_true[groups == g], y_pred[groups == g], n_classes).macro_f1
        for g in np.unique(groups)
    }


def linear_probe(
    train_z: np.ndarray,
    train_y: np.ndarray,
    test_z: np.ndarray,
    *,
    c: float = 1.0,
    max_iter: int = 1000,
) -> np.ndarray:
    """Fit a softmax linear classifier on frozen embeddings; predict ``test_z``.

    Multinomial logistic regression (L-BFGS, L2 strength ``1/c``) on embeddings standardised with
    the training set's statistics: the CLIP linear-probe recipe. Returns predicted labels.
    """
    from sklearn.linear_model import LogisticRegression

    mu, sd = train_z.mean(0), train_z.std(0) + 1e-8
    clf = LogisticRegression(C=c, max_iter=max_iter)
    clf.fit((train_z - mu) / sd, train_y)
    return clf.predict((test_z - mu) / sd)


def few_shot(
    train_z: np.ndarray,
    train_y: np.ndarray,
    test_z: np.ndarray,
    test_y: np.ndarray,
    shots: Sequence[int],
    n_classes: int,
    *,
    draws: int = 5,
    seed: int = 0,
) -> dict[int, tuple[float, float]]:
    """Linear probes on ``n`` random training samples per class, ``draws`` times each.

    Returns ``{n: (mean, std)}`` of balanced accuracy (EMBridge A.4). Classes with fewer than
    ``n`` samples contribute all they have.
    """
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(train_y == c) for c in range(n_classes)]
    out = {}
    for n in shots:
        scores = []
        for _ in range(draws):
            idx = np.concatenate(
                [rng.choice(ix, min(n, len(ix)), replace=False) for ix in by_class if len(ix)]
            )
            pred = linear_probe(train_z[idx], train_y[idx], test_z)
            scores.append(class_scores(test_y, pred, n_classes).balanced_accuracy)
        out[int(n)] = (float(np.mean(scores)), float(np.std(scores)))
    return out
