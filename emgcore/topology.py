"""AEMG's calibration into one input space: every device's channels mapped by electrode position
onto a predefined topology, with the source positions kept for the spatial condition.

Source: AEMG (papers/aemg.txt; notes/aemg.md, stage 1). The paper maps each device by a fixed
channel mapping ``R(.)`` onto a predefined topology; its released code resamples to 200 Hz and
maps every device to 16 channels *by channel index* (repeating or averaging groups of indices),
which gives two devices whose channel 0 sits on different muscles the same input. Here the map
is by *position*, from each recording's :class:`~emgcore.recording.ChannelLayout`:

* The **common topology** is ``n`` (16) electrodes evenly spaced around the limb, at angles
  ``phi_k = 2 pi k / n`` from the layout's arc origin: the 16-channel ring of the released code,
  now with a place on the limb.
* A source electrode's angle is ``theta_i = 2 pi arc_i / circumference``: the layout's
  circumference for rings; for grids and custom placements (which record none) an adult
  forearm's, :data:`LIMB_CIRCUMFERENCE_MM`, so a grid covers the part of the circle its width
  spans. Position along the limb is averaged over: the electrodes of a grid's column (one arc,
  several distances along the limb) act as one group, as the released code's group averaging
  does by index.
* Output channel ``k`` is a weighted average of the source channels with von Mises weights
  ``exp(kappa cos(theta_i - phi_k))``, normalised to sum to one; ``kappa`` makes the weight fall
  to ``1/e`` one target spacing away, so a target between two electrodes interpolates them and
  a target far from every electrode copies its nearest ones (the released code's repetition,
  by position).
* The **spatial condition** of each output channel, ``(n, 4)``: the weighted resultant of the
  source directions (``sum_i w_ki (cos theta_i, sin theta_i)``: its angle is where the signal
  comes from, its length below one how spread the sources are), the weighted spread of the
  sources along the limb (in 100 mm; 0 for a ring) and the angular distance to the nearest
  electrode (in units of pi: 0 where an electrode sits on the target, large where the device
  has none: what the model needs to discount extrapolated channels).
"""

from __future__ import annotations

import numpy as np

from emgcore.errors import InvalidValueError
from emgcore.recording import ChannelLayout, Recording

LIMB_CIRCUMFERENCE_MM = 260.0  # an adult forearm (grids and custom layouts record none)
COMMON_CHANNELS = 16  # the released code's topology
COMMON_FS = 200.0  # Hz, the released code's common rate
POSITION_FEATURES = 4


def topology_map(layout: ChannelLayout, n: int = COMMON_CHANNELS) -> tuple[np.ndarray, np.ndarray]:
    """The map of ``layout``'s ``C`` channels onto the ``n``-electrode common ring.

    Returns ``weights (n, C)`` float32 (rows sum to 1; ``emg (T, C) @ weights.T`` is the mapped
    EMG) and ``position (n, 4)`` float32, the spatial condition (module doc). Raises
    :class:`InvalidValueError` for ``n < 1``.
    """
    if n < 1:
        raise InvalidValueError(f"the common topology needs >= 1 channel, got {n}", field="n")
    pos = np.asarray(layout.positions_mm, np.float64)
    circ = layout.circumference_mm or LIMB_CIRCUMFERENCE_MM
    theta = 2 * np.pi * pos[:, 0] / circ  # (C,)
    phi = 2 * np.pi * np.arange(n) / n  # (n,)
    kappa = 1.0 / (1.0 - np.cos(2 * np.pi / n)) if n > 1 else 0.0
    cos_d = np.cos(theta[None, :] - phi[:, None])  # (n, C)
    w = np.exp(kappa * (cos_d - cos_d.max(axis=1, keepdims=True)))  # stable: max term is 1
    w /= w.sum(axis=1, keepdims=True)
    # the weighted resultant of the sources' directions: its angle is where the signal comes
    # from, its length < 1 how spread they are (0 where sources cancel, e.g. opposite a 2-ring)
    resultant = w @ np.exp(1j * theta)  # (n,)
    along = pos[:, 1]
    spread = np.sqrt(np.maximum(w @ along**2 - (w @ along) ** 2, 0.0)) / 100.0
    nearest = np.arccos(np.clip(cos_d.max(axis=1), -1.0, 1.0)) / np.pi
    position = np.stack([resultant.real, resultant.imag, spread, nearest], axis=1)
    return w.astype(np.float32), position.astype(np.float32)


def calibrate(
    rec: Recording, n: int = COMMON_CHANNELS, fs: float = COMMON_FS
) -> tuple[np.ndarray, np.ndarray]:
    """``rec`` in the common input space: resampled to ``fs`` (the project's
    :class:`~emgcore.preprocessing.Resample`), its channels mapped by :func:`topology_map`.
    Returns ``(emg (T', n) float32, position (n, 4) float32)``."""
    from emgcore.preprocessing import Resample

    weights, position = topology_map(rec.layout, n)
    rec = Resample(fs=fs).apply(rec)
    return np.asarray(rec.emg, np.float32) @ weights.T, position
