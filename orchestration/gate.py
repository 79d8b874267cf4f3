"""The nightly regression gate: is tonight's model worse than the champion, beyond the noise of
its seeds?

A metric is compared over seeds, not as one value: the champion's recorded per-seed scores
(``seeds_<metric>`` on its registered version) against tonight's retrained seeds. It
**regresses** when both hold:

1. the shortfall of tonight's mean is larger than the suite's ``tolerance`` (in the metric's own
   units: R^2, balanced accuracy, degrees), so a credible but negligible change stays green;
2. the shortfall is statistically credible: Welch's one-sided t-test (unequal variances; seeds
   of two code versions need not spread alike) gives ``p < alpha``.

An **improvement** is the mirror image; it is reported and never moves the champion alias. The
report's interval is a bootstrap confidence interval of the difference of means
(:func:`scipy.stats.bootstrap`, percentile method: BCa is unstable at three seeds), for reading,
not for the verdict. With one seed on one side the other side is tested against that value
(one-sample t-test); with one on both, only the tolerance decides and the verdict says so.
Seeds that do not vary at all (a deterministic path) make any difference exact.

Why Welch and not the bootstrap interval for the verdict: at 3 seeds a bootstrap interval is
far too narrow (each side resamples only 10 distinct means), so "the interval excludes 0"
fires about 12% of green nights against its nominal 2.5%; Welch's test stays under its level
(``tests/orchestration/test_gate.py`` measures both by resampling seed scores).

This module imports no Ray or MLflow: scipy only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

PASS, REGRESSION, IMPROVEMENT, FLAKY = "PASS", "REGRESSION", "IMPROVEMENT", "FLAKY"


@dataclass(frozen=True)
class Comparison:
    """One metric of one suite entry: the champion's seeds against tonight's.

    ``change``: tonight's mean minus the champion's, in the metric's units (its sign is the
    metric's, whatever ``mode``); ``low``, ``high``: its bootstrap confidence interval;
    ``p_value``: of the one-sided test in the direction tonight moved (1 when it did not move);
    ``verdict``: PASS, REGRESSION, IMPROVEMENT, or FLAKY (a known-flaky entry: computed, never
    gated); ``why``: one line."""

    metric: str
    mode: str
    champion: tuple[float, ...]
    tonight: tuple[float, ...]
    tolerance: float
    change: float
    low: float
    high: float
    p_value: float
    verdict: str
    why: str

    @property
    def champion_mean(self) -> float:
        return float(np.mean(self.champion))

    @property
    def tonight_mean(self) -> float:
        return float(np.mean(self.tonight))

    @property
    def champion_sd(self) -> float:
        return _sd(self.champion)

    @property
    def tonight_sd(self) -> float:
        return _sd(self.tonight)


def compare(
    champion: Sequence[float],
    tonight: Sequence[float],
    *,
    metric: str,
    mode: str,
    tolerance: float,
    alpha: float = 0.05,
    confidence: float = 0.95,
    flaky: bool = False,
    seed: int = 0,
) -> Comparison:
    """Compare per-seed scores (see the module doc for the rule).

    ``mode``: ``"max"`` when higher is better, ``"min"`` for an error; ``tolerance`` >= 0 in the
    metric's units; ``alpha``: the test's level. Raises ValueError on an empty or non-finite
    side, a negative tolerance, or a bad mode or level."""
    a, b = _scores(champion, "champion"), _scores(tonight, "tonight")
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    if not 0 < alpha < 1 or not 0 < confidence < 1:
        raise ValueError(f"alpha and confidence must lie in (0, 1), got {alpha}, {confidence}")
    change = float(b.mean() - a.mean())
    worse = -change if mode == "max" else change  # > 0: tonight is worse
    p_worse = float(p_values(a, b, mode)[()])
    p = p_worse if worse > 0 else float(p_values(b, a, mode)[()]) if worse < 0 else 1.0
    low, high = _interval(a, b, confidence, seed)
    tested = "tolerance only (one seed each side)" if len(a) == len(b) == 1 else f"p = {p:.3g}"
    if worse > tolerance and (p < alpha or len(a) == len(b) == 1):
        verdict = REGRESSION
        why = f"worse by {worse:.4g} (> tolerance {tolerance:g}), {tested}"
    elif -worse > tolerance and (p < alpha or len(a) == len(b) == 1):
        verdict = IMPROVEMENT
        why = f"better by {-worse:.4g} (> tolerance {tolerance:g}), {tested}"
    else:
        verdict = PASS
        within = abs(worse) <= tolerance
        why = (
            f"within tolerance {tolerance:g}"
            if within
            else f"{'worse' if worse > 0 else 'better'} by {abs(worse):.4g}, not credible "
            f"({tested}, alpha {alpha:g})"
        )
    if flaky:
        why = f"known flaky, not gated: would be {verdict} ({why})"
        verdict = FLAKY
    return Comparison(
        metric, mode, tuple(a.tolist()), tuple(b.tolist()), tolerance, change, low, high, p,
        verdict, why,
    )  # fmt: skip


def artifact_problem(value: float, recorded: float, tolerance: float) -> str:
    """Why a registered artifact scored again tonight (``value``; NaN: it could not be scored)
    fails against its registered score ``recorded`` (NaN: none recorded, not compared): "not
    scored", "changed" beyond ``tolerance`` (the metric's units), or "" when it holds. One
    value, no seeds: the artifact is fixed, so any change beyond numerical noise is the
    environment's (a torch / numpy / MLflow upgrade)."""
    if not math.isfinite(value):
        return "not scored"
    if math.isfinite(recorded) and abs(value - recorded) > tolerance:
        return "changed"
    return ""


def regressed(
    champion: np.ndarray, tonight: np.ndarray, mode: str, tolerance: float, alpha: float = 0.05
) -> np.ndarray:
    """:func:`compare`'s REGRESSION verdict, vectorised over leading axes: ``champion``
    ``(..., n)`` and ``tonight`` ``(..., m)`` seeds along the last axis; bool ``(...)``."""
    a, b = np.asarray(champion, float), np.asarray(tonight, float)
    change = b.mean(-1) - a.mean(-1)
    worse = -change if mode == "max" else change
    credible = p_values(a, b, mode) < alpha
    if a.shape[-1] == b.shape[-1] == 1:
        credible = np.ones_like(worse, bool)
    return (worse > tolerance) & credible


def p_values(champion: np.ndarray, tonight: np.ndarray, mode: str) -> np.ndarray:
    """One-sided p-value that ``tonight`` is worse than ``champion`` (seeds on the last axis):
    Welch's t-test; a one-sample t-test against the mean of a side with one seed; with no spread
    on either side, 0 when tonight is worse, else 1."""
    a, b = np.asarray(champion, float), np.asarray(tonight, float)
    # "worse" for a score to maximise: tonight's mean less than the champion's
    alternative = "less" if mode == "max" else "greater"
    n, m = a.shape[-1], b.shape[-1]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # zero spread: handled below
        if n >= 2 and m >= 2:
            p = stats.ttest_ind(b, a, axis=-1, equal_var=False, alternative=alternative).pvalue
        elif m >= 2:  # one champion seed: its value is the reference
            p = stats.ttest_1samp(b, a[..., 0], axis=-1, alternative=alternative).pvalue
        elif n >= 2:  # one seed tonight against the champion's spread
            flip = "greater" if alternative == "less" else "less"
            p = stats.ttest_1samp(a, b[..., 0], axis=-1, alternative=flip).pvalue
        else:
            p = np.full(np.broadcast_shapes(a.shape[:-1], b.shape[:-1]), np.nan)
    p = np.asarray(p, float)
    worse = (a.mean(-1) > b.mean(-1)) if mode == "max" else (b.mean(-1) > a.mean(-1))
    # exact: no noise to weigh the change against (one seed each side is no evidence of that)
    still = (a.std(-1) == 0) & (b.std(-1) == 0) & (max(n, m) >= 2)
    return np.where(still, np.where(worse, 0.0, 1.0), np.where(np.isnan(p), 1.0, p))


def alarm_rate(
    pool: Sequence[float],
    n_seeds: int,
    *,
    mode: str,
    tolerance: float,
    degradation: float = 0.0,
    alpha: float = 0.05,
    nights: int = 20_000,
    seed: int = 0,
) -> float:
    """How often the gate calls REGRESSION on simulated nights: champion and tonight each draw
    ``n_seeds`` scores from ``pool`` (recorded seed scores, with replacement); tonight's are
    made worse by ``degradation`` (in the metric's units). With ``degradation=0`` this is the
    false-alarm rate; above it, the detection rate (power)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(pool, float)
    champion = rng.choice(x, (nights, n_seeds))
    tonight = rng.choice(x, (nights, n_seeds)) + (-degradation if mode == "max" else degradation)
    return float(regressed(champion, tonight, mode, tolerance, alpha).mean())


def smallest_detected(
    pool: Sequence[float],
    n_seeds: int,
    *,
    mode: str,
    tolerance: float,
    power: float = 0.9,
    alpha: float = 0.05,
    nights: int = 4_000,
    seed: int = 0,
) -> float:
    """The smallest degradation the gate catches in at least ``power`` of simulated nights
    (:func:`alarm_rate`), to within 1% of the pool's spread (bisection; detection grows with
    the degradation)."""
    spread = float(np.ptp(pool)) or 1.0
    lo, hi = 0.0, tolerance + 10 * spread

    def caught(d: float) -> bool:
        rate = alarm_rate(
            pool, n_seeds, mode=mode, tolerance=tolerance, degradation=d, alpha=alpha,
            nights=nights, seed=seed,
        )  # fmt: skip
        return rate >= power

    if not caught(hi):
        return math.inf
    while hi - lo > 0.01 * spread:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if caught(mid) else (mid, hi)
    return hi


def _scores(values: Sequence[float], side: str) -> np.ndarray:
    x = np.asarray(list(values), float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{side}: needs at least one seed's score, got {list(values)!r}")
    if not np.isfinite(x).all():
        raise ValueError(f"{side}: scores must be finite, got {x.tolist()}")
    return x


def _sd(x: Sequence[float]) -> float:
    return float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def _interval(a: np.ndarray, b: np.ndarray, confidence: float, seed: int) -> tuple[float, float]:
    """Bootstrap interval of ``mean(b) - mean(a)``; a one-seed side is a fixed value."""
    if len(a) == 1 and len(b) == 1:
        d = float(b[0] - a[0])
        return d, d
    samples = [x for x in (b, a) if len(x) > 1]

    def diff(*xs: np.ndarray, axis: int = -1) -> np.ndarray:
        it = iter(xs)
        mb = next(it).mean(axis) if len(b) > 1 else b[0]
        ma = next(it).mean(axis) if len(a) > 1 else a[0]
        return mb - ma

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate (all equal) resamples: the interval is a point
        res = stats.bootstrap(
            samples, diff, confidence_level=confidence, method="percentile",
            n_resamples=4000, rng=np.random.default_rng(seed), vectorized=True,
        )  # fmt: skip
    low, high = res.confidence_interval
    d = float(b.mean() - a.mean())
    low = d if not math.isfinite(low) else float(low)
    high = d if not math.isfinite(high) else float(high)
    return low, high
