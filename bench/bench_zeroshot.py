"""Zero-shot retrieval: top-10 cosine neighbours among 100k pose embeddings (d = 256), voting.

Ours (:func:`emgcore.eval.probe.zero_shot`: chunked float32 matmul, ``topk``, a ``scatter_add``
vote) against scikit-learn's ``KNeighborsClassifier(n_neighbors=10, metric="cosine",
algorithm="brute")`` on the same embeddings, both on this machine's cores. Target: >= 5x faster
with identical predictions. Embeddings are random unit vectors with 8 gesture labels (random data
has no exact distance ties, so the two neighbour sets must agree exactly).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np
from _common import median_time

from emgcore.eval.probe import zero_shot

BANK, QUERIES, DIM, CLASSES, K = 100_000, 5_000, 256, 8, 10


def main() -> None:
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((BANK, DIM), dtype=np.float32)
    labels = rng.integers(0, CLASSES, BANK)
    queries = rng.standard_normal((QUERIES, DIM), dtype=np.float32)

    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=K, metric="cosine", algorithm="brute").fit(bank, labels)
    t = time.perf_counter()
    ref = knn.predict(queries)
    t_sklearn = time.perf_counter() - t
    ours = zero_shot(queries, bank, labels, k=K)
    t_ours = median_time(lambda: zero_shot(queries, bank, labels, k=K), repeats=5)
    same = np.array_equal(ours, ref)
    print(f"{QUERIES} queries x {BANK} pose embeddings, d = {DIM}, top-{K} vote")
    print(f"scikit-learn KNeighborsClassifier  {t_sklearn:7.2f} s")
    print(f"emgcore.eval.probe.zero_shot (median)   {t_ours:7.2f} s")
    print(f"  speed-up                         {t_sklearn / t_ours:7.1f}x  (target >= 5)")
    print(f"  identical predictions            {same}")
    sys.exit(0 if same and t_sklearn / t_ours >= 5 else 1)


if __name__ == "__main__":
    main()
