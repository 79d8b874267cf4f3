"""Slow, plainly written references our code is checked against: libemg's feature extractor
(tests; timed in bench) and loss equations written out as loops in float64."""

from __future__ import annotations

import importlib.util
import math
import sysconfig
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def _libemg_module(name: str) -> Any:
    """One module of libemg, loaded by file.

    ``import libemg`` pulls its GUI, streaming and device stacks (and needs numpy<2); the feature
    and windowing modules need only numpy, scipy, sklearn, librosa, pywt, PIL and matplotlib.
    """
    path = Path(sysconfig.get_paths()["purelib"]) / "libemg" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"libemg_{name}", path)
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():  # its numpy.matlib import warns; not ours to fix
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        spec.loader.exec_module(module)
    return module


def libemg_feature_extractor() -> Any:
    """libemg's ``FeatureExtractor``."""
    return _libemg_module("feature_extractor").FeatureExtractor()


def libemg_get_windows() -> Any:
    """libemg's ``utils.get_windows(data (T, C), size, increment) -> (N, C, L)``."""
    return _libemg_module("utils").get_windows


def libemg_mdf(windows: np.ndarray, fs: float) -> np.ndarray:
    """libemg 2.0.3's ``getMDFfeat``, transcribed: it raises under numpy >= 2 (it assigns a
    1-element array to a scalar slot). ``windows (N, C, L)`` -> ``(N, C)``, same loop, same bins."""
    n = windows.shape[2]
    nextpow2 = 2 ** math.ceil(math.log2(n))
    spec = np.fft.fft(windows, nextpow2, axis=2)[:, :, : nextpow2 // 2] / n
    power = np.real(spec * np.conj(spec))
    total, cum = power.sum(axis=2), np.cumsum(power, axis=2)
    out = np.zeros(windows.shape[:2])
    for i in range(windows.shape[0]):
        for j in range(windows.shape[1]):
            out[i, j] = (fs / 2) * np.argwhere(cum[i, j] > total[i, j] / 2)[0, 0] / (nextpow2 / 2)
    return out


def mprl_eq2(pred: Any, target: Any, hidden: Any) -> float:
    """EMBridge eq. 2 written out: per sample ``1/|M| sum_{m in M} ||g(H_P[m]) - P[m]||_2^2``,
    a squared L2 norm per hidden token, averaged over that sample's hidden tokens ``M``, then
    over the batch; Python floats (float64) in loops.

    ``pred``, ``target``: ``(B, L, S*J)`` decoded and true pose tokens; ``hidden (B, L)`` bool.
    """
    per_sample = []
    for b in range(len(pred)):
        hidden_tokens = [m for m in range(len(pred[b])) if bool(hidden[b][m])]
        total = 0.0
        for m in hidden_tokens:
            total += sum(
                (float(p) - float(t)) ** 2 for p, t in zip(pred[b][m], target[b][m], strict=True)
            )
        per_sample.append(total / len(hidden_tokens))
    return sum(per_sample) / len(per_sample)
