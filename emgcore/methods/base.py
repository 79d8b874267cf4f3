"""What a method is to the rest of the project: one :class:`Method` declaration.

A method (KinEMbed, the pose-alignment family's MAE / CPEP / EMBridge, EMG-JEPA, the next ones)
is one module under ``emgcore/methods/`` ending in a :class:`Method`, and one search space under
``search_spaces/``. The sweep, the search-space validation and the Train workers read
:data:`emgcore.methods.METHODS` and never name a method; so does every test parametrised over it.

What a method gives the launcher is a :class:`Trial`: an ordered list of *units* (KinEMbed: one
per subject x session-CV fold, or per subject x seed; a method without natural units has one).
The launcher (``orchestration/worker.py``) runs them in order, checkpoints after each, and a
restarted worker resumes at the first unfinished one; units must therefore be deterministic for
their seed. A final run's trial then says what to register (:class:`Registration`): the scores
that decide the champion, and each model to export with how a champion is scored again.

Nothing here imports Ray or MLflow: the registry's champion rule reads these plain values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from emgcore.distributed import DataParallel
from emgcore.training import EpochHook


@dataclass(frozen=True)
class Score:
    """One evaluation of a model: ``value`` of ``metric`` on ``split`` (in words), beside the
    trivial baseline's value on the same data (``trivial``: R^2 0 for the mean predictor,
    chance balanced accuracy, the mean pose's JA-MAE). ``mode``: ``"max"`` when higher is
    better, ``"min"`` for an error."""

    metric: str
    value: float
    split: str
    trivial: float
    mode: str = "max"

    def beats_trivial(self) -> bool:
        """Strictly better than the trivial baseline (a NaN never is)."""
        return better(self.value, self.trivial, self.mode)

    def tags(self, role: str) -> dict[str, str]:
        """The version tags that record it: ``registered_<metric>``, ``<role>_split``,
        ``trivial_<metric>``. ``registered_``: the registered model's own score, as the final
        run logs it too; the run's ``<metric>`` is the mean over its seeds (and subjects), another
        value, so the two never share a name. Values are written exactly (:func:`exact`): the
        champion rule reads them back and compares, so a rounded tag would let an identical
        rerun's score beat its own rounding."""
        return {
            f"registered_{self.metric}": exact(self.value),
            f"{role}_split": self.split,
            f"trivial_{self.metric}": exact(self.trivial),
        }


def exact(value: float) -> str:
    """``value`` as text that reads back as the same float (``float(exact(v)) == v``; Python's
    shortest round-trip ``repr``), for scores stored in tags that are compared again later."""
    return repr(float(value))


def better(score: float, other: float | None, mode: str = "max") -> bool:
    """``score`` strictly better than ``other`` (None: nothing to beat; a NaN on either side is
    never better): higher for ``mode="max"``, lower for ``"min"``."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if other is None:
        return True
    if not (math.isfinite(other) and math.isfinite(score)):
        return False
    return score > other if mode == "max" else score < other


@dataclass(frozen=True)
class TrialSetup:
    """What the launcher hands a method's trial besides its configuration and recordings.

    ``mode``: ``"cv"`` for a search trial (score on the selection split), ``"final"`` to retrain
    per seed and score the held-out data. ``data``, ``fingerprint``: the data's name and the
    digest of its recordings, for the evaluations' ``split`` words. ``selection``: a final
    run's selection score as the sweep found it (``value``, ``subjects``). ``pretrained``: the
    registered models the method starts from (:attr:`Method.starts_from`), loaded, by key."""

    mode: str
    parallel: DataParallel | None = None
    device: str = "cpu"
    cache: str | None = None
    data: str = ""
    fingerprint: str = ""
    selection: Mapping[str, Any] = field(default_factory=dict)
    pretrained: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UnitResult:
    """One unit's outcome. ``value``: JSON-able, kept in the checkpoint and handed to
    :meth:`Trial.summary`; ``metrics``: logged once to the trial's run; ``state``: tensors the
    final run needs again after a restart (e.g. the model it registers), handed back through
    :meth:`Trial.restore`."""

    value: Any
    metrics: Mapping[str, float] = field(default_factory=dict)
    state: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Export:
    """One model a final run registers, as ``<registry name><suffix>``.

    ``model``: the module MLflow logs (its traced ``forward`` is what a champion serves);
    ``example``: an input batch (rows are windows). ``write_files(folder)``: extra files that
    travel with it (e.g. weights and config that rebuild the full module). ``rescore(model)``:
    the champion's score on the new model's selection split, scored again here (``rescored_on``
    names that split, ``load(folder)`` loads the champion from its extra files, default its
    logged graph); None compares the champion's recorded score, which must then come from the
    same selection split. ``retest(folder)``: a version's test score from its files (``folder``:
    its extra files), on this trial's test split: a version of the same recipe recorded it
    (``registered_<test metric>``), so the nightly scores the registered artifact again in
    tonight's environment; without it the nightly uses ``rescore`` on the selection split."""

    suffix: str
    model: Any
    example: Any
    write_files: Callable[[Path], Sequence[Path]] | None = None
    rescore: Callable[[Any], float] | None = None
    rescored_on: str = ""
    load: Callable[[Path], Any] | None = None
    retest: Callable[[Path], float] | None = None


@dataclass(frozen=True)
class Registration:
    """What a final run registers: the scores the champion rule reads (selection split and test
    split, with their trivial baselines), the models, and tags every version carries."""

    selection: Score
    test: Score
    exports: Sequence[Export]
    tags: Mapping[str, str] = field(default_factory=dict)


def seed_tags(seeds: Mapping[str, Sequence[float]]) -> dict[str, str]:
    """``seeds_<metric>``: a JSON list of a final run's per-seed scores (:meth:`Trial.seeds`),
    each exact (JSON writes a float's round-trip ``repr``; NaN as ``NaN``). Every registered
    version carries them, and a final run's summary too: the nightly gate compares the two."""
    return {f"seeds_{k}": json.dumps([float(v) for v in vs]) for k, vs in seeds.items()}


def seed_scores(tags: Mapping[str, Any], metric: str) -> tuple[float, ...] | None:
    """The per-seed scores of ``metric`` that :func:`seed_tags` wrote into ``tags`` (a
    version's tags, a final run's summary), or None when there are none (a version registered
    before they were kept)."""
    raw = tags.get(f"seeds_{metric}")
    return None if raw is None else tuple(float(v) for v in json.loads(raw))


Hooks = Callable[[str | None], Sequence[EpochHook]]
"""``hooks(model)``: the epoch hooks for one model a unit trains; ``None`` for a method's only
model, else its name (``emg_mae``, ``pretrain``), which prefixes its logged metrics."""


class Trial:
    """One trial of a method: ``units`` run in order by the launcher (see the module doc).

    Subclasses set ``config`` (the resolved configuration the run logs as params) and ``units``
    in ``__init__``, and implement :meth:`run` and :meth:`summary`; a final run's trial also
    :meth:`registration` and, optionally, :meth:`report`.
    """

    config: Any
    units: Sequence[str]
    # tags its run records at each start, e.g. how it holds its data (``emg.windows``)
    tags: Mapping[str, str] = {}

    def run(self, unit: str, hooks: Hooks) -> UnitResult:
        """Train and score ``unit``; each model's hooks are called after every epoch."""
        raise NotImplementedError

    def restore(self, unit: str, state: Mapping[str, Any]) -> None:
        """A finished unit's ``state`` after a worker restart (default: nothing kept)."""

    def seeds(self, values: Mapping[str, Any]) -> dict[str, list[float]]:
        """A final run's score per seed, by metric (its :meth:`Method.per_seed` metrics), in
        ``config.seeds`` order, from its finished units' values (default: none)."""
        return {}

    def summary(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The trial's metrics from its finished units' values (also called on a part of them,
        for progress): floats are logged; the selection (search) or final metric among them."""
        raise NotImplementedError

    def report(self, values: Mapping[str, Any], folder: Path) -> Sequence[Path]:
        """A final run's tables and figures, written into ``folder`` (default: none)."""
        return ()

    def registration(self, values: Mapping[str, Any]) -> Registration:
        """What the final run registers (rank 0, after every unit)."""
        raise NotImplementedError


INFERENCE_FILE = "inference.pt"
NO_INFERENCE_FILE = "no_inference.txt"  # beside a weights-only export: why it has none
"""The extra file of a registered version that holds its whole inference path (fitted
preprocessing, features and model): :func:`emgcore.methods.load_inference` rebuilds it."""


class Inference(Protocol):
    """A registered model's whole inference path: raw EMG in, the method's output out.

    ``predict(emg (T, C), fs) -> (N, ...)``: ``emg`` as recorded (the unit of the training
    recordings, no filtering), ``fs`` in Hz, which must equal ``self.fs``; one output row per
    window the method scores. ``window_end(n_samples, fs)`` is the sample index ``(N,)`` each row
    belongs to (the last sample of its window). Raises :class:`~emgcore.errors.ShapeError` for
    another channel count, :class:`~emgcore.errors.InvalidValueError` for another rate.
    """

    method: str
    fs: float
    n_channels: int

    def predict(self, emg: Any, fs: float) -> Any: ...

    def window_end(self, n_samples: int, fs: float) -> Any: ...


def save_inference(method: str, payload: Mapping[str, Any], folder: Path) -> Path:
    """Write ``payload`` (plain values and tensors: loadable with ``weights_only``) as
    ``folder/inference.pt`` for ``method``'s ``Method.inference`` to rebuild."""
    import torch

    path = Path(folder) / INFERENCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"method": method, "format": 1, **payload}, path)
    return path


def save_no_inference(why: str, folder: Path) -> Path:
    """Write why an export has no inference path (e.g. it takes pose windows, not EMG, and what
    to load instead) as ``folder/no_inference.txt``: :func:`emgcore.methods.load_inference`
    gives it as its error, so no method is special-cased where versions are loaded."""
    path = Path(folder) / NO_INFERENCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(why.strip() + "\n")
    return path


def check_input(emg: Any, fs: float, inference: Inference) -> Any:
    """``emg`` as a float32 ``(T, C)`` array fit for ``inference``, else one error naming the
    field: the channel count and the rate are the training recordings' (resample first)."""
    import numpy as np

    from emgcore.errors import InvalidValueError, ShapeError

    x = np.asarray(emg, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != inference.n_channels:
        raise ShapeError(
            f"{inference.method} takes EMG (T, {inference.n_channels}), got shape {x.shape}",
            field="emg",
        )
    if not math.isclose(float(fs), float(inference.fs), rel_tol=1e-6):
        raise InvalidValueError(
            f"{inference.method} was trained at {inference.fs:g} Hz, got {fs:g} Hz: resample "
            "the EMG first",
            field="fs",
        )
    return x


@dataclass(frozen=True)
class Method:
    """A method as the sweep and the launcher see it. One per ``emgcore/methods/`` module.

    * ``config``: the configuration dataclass its presets and search space address;
      ``preset`` / ``smoke_preset``: the bundled presets a sweep and ``--smoke`` start from.
    * ``data``: the default ``--data`` (a simulator preset); ``smoke_sim``: ``--smoke``'s size.
    * ``final_metric`` (mean, with ``_std`` over ``final_over``), ``final_label``: what a final
      run reports and how the summary screen names it. The selection metric and its mode are
      the search space's (``metric``, ``mode``).
    * ``trial(config, recordings, setup)``: a :class:`Trial`.
    * ``starts_from``: the method whose registered models (``<name>-<key>@champion`` for each
      of ``pretrained_keys``) a sweep starts from, pre-training them first when missing;
      ``load_pretrained(folder)`` loads one from its extra files. ``split_id(config)`` names
      the data split; a starting model registered on another split or data is refused.
    * ``session_split(sessions, config)``: ``(train, held-out)`` sessions, for methods that
      hold a session out (printed and recorded by the sweep).
    * ``cache_plan(config, recordings)``: the ``(recording, pipeline)`` pairs its trials read
      from the preprocessing cache, which a sweep on a large data set builds once, across the
      cluster, before its trials start (:mod:`orchestration.cache`); None: none to build.
    * ``inference(payload)``: the :class:`Inference` a registered version's ``inference.pt``
      holds (written by an :class:`Export`'s ``write_files`` with :func:`save_inference`).
    * ``needs_kinematics``: its trials learn from EMG paired with kinematics (the sweep refuses
      data without them); False for a method that learns from EMG and labels alone (AEMG).
    * ``check_data(config, recordings)``: raises :class:`~emgcore.errors.EmgDataError` naming
      the field when the data cannot make a trial (e.g. too few people for its cohorts); the
      sweep calls it before Ray or MLflow start, so bad data is one line, not failed trials.
    * ``seed_metrics``: what its final run scores per seed (:meth:`Trial.seeds`), each
      with its direction (``"max"``: higher is better; ``"min"``: an error); default: the
      ``final_metric``, higher is better. The nightly suite may gate on any of them.
    """

    name: str
    config: type
    preset: str
    smoke_preset: str
    data: str
    smoke_sim: Mapping[str, Any]
    final_metric: str
    final_label: str
    trial: Callable[[Any, Sequence[Any], TrialSetup], Trial]
    final_over: str = "seeds"
    starts_from: str | None = None
    pretrained_keys: tuple[str, ...] = ()
    load_pretrained: Callable[[Path], Any] | None = None
    split_id: Callable[[Any], str] | None = None
    session_split: Callable[[Any, Any], tuple[tuple[str, ...], str]] | None = None
    cache_plan: Callable[[Any, Sequence[Any]], Sequence[tuple[Any, Any]]] | None = None
    inference: Callable[[Mapping[str, Any]], Inference] | None = None
    seed_metrics: Mapping[str, str] | None = None
    needs_kinematics: bool = True
    check_data: Callable[[Any, Sequence[Any]], None] | None = None

    def per_seed(self) -> dict[str, str]:
        """:attr:`seed_metrics`, defaulted: ``{metric: "max" | "min"}``."""
        return dict(self.seed_metrics or {self.final_metric: "max"})
