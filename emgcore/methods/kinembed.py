"""One KinEMbed configuration end to end, on one process: the paper's evaluation protocol.

For every subject: sessions ``train_sessions`` (DB8: A1, A2) train, ``test_session`` (A3) is held
out and touched only by the final evaluation (:func:`resolve_sessions` says which is which, and
refuses to guess). Every choice (each baseline's embedding dimension, AE-Super's alpha, CEBRA's
Optuna search, the ridge baseline's lags and alpha) is made by k-fold session CV over the training
sessions (DB8: A1 -> A2 and A2 -> A1) with the mean CV R^2 as the criterion, per subject; the
configuration every subject is then refitted with is the *mode* of the per-subject winners (Sec. 4
"the canonical dimension is the mode of per-subject best values", App. B.4), fixed for all
subjects, refitted on all training sessions and scored on the held-out session once per seed.

Choices the paper leaves open (written here so they sit next to the code):

* Selection runs with the first seed; the held-out score is the mean over all seeds.
* The mode is taken per hyper-parameter (as App. B.4 does for CEBRA); ties go to the value with the
  higher mean CV R^2 across subjects, then to the smaller value (:func:`mode_config`). CEBRA's
  mode is taken twice: its Optuna hyper-parameters first (at ``cebra_tune_dim``), then its
  dimension, searched per subject with those canonical hyper-parameters ("selected in a separate
  dimensionality study").
* Features (thresholds and z-score) and DoA standardisation are fitted on each fold's training
  sessions only; the decoder standardises its own inputs the same way.
* A window's target is the DoA at its last sample (causal, as a prosthesis would decode), and
  every method's output at window ``t`` depends on windows ``<= t`` only.
* ARIMA has no embedding and no decoder: it forecasts the held-out session from the DoA alone.

:func:`run` is what ``python -m emgcore kinembed`` and the orchestration layer call;
:func:`cv_score` is the per-trial objective of the staged search.

As a sweep method (the end of this module, ``METHOD``) a trial is a list of units, each one fit
of this protocol:

* ``cv`` (a search trial): one unit per (subject, session-CV fold); the trial's ``cv_r2`` is the
  mean over units of the mean R^2 over DoA, i.e. :func:`emgcore.methods.kinembed.cv_score` averaged
  over the subjects.
* ``final``: one unit per (evaluation subject, seed) on all training sessions, scored on the
  held-out session (``heldout_r2``, mean +- std over subjects x seeds). The first unit's
  pipeline (:class:`emgcore.methods.kinembed.DecodingPipeline`: raw window features ``(T, F)`` ->
  DoA ``(T, J)``) is what the run registers. The champion rule reads the session-CV R^2 on the
  training sessions that selected the configuration (the selection split), recorded on each
  version; the held-out session is measured and recorded but never selects. Its trivial
  baseline is the mean predictor (R^2 0).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from emgcore.config import build, load_yaml
from emgcore.distributed import DataParallel
from emgcore.errors import InvalidValueError, MissingFieldError
from emgcore.features import (
    FeatureConfig,
    Standardizer,
    Thresholds,
    fit_thresholds,
    recording_features,
    window_starts,
)
from emgcore.methods.base import (
    Export,
    Hooks,
    Method,
    Registration,
    Score,
    Trial,
    TrialSetup,
    UnitResult,
    check_input,
    save_inference,
)
from emgcore.models.baselines import (
    CEBRA_CANONICAL,
    CEBRA_GRID,
    AEConfig,
    AEEmbedder,
    CEBRAEmbedder,
    Embedder,
    IdentityEmbedder,
    LagRidge,
    PCAEmbedder,
    PLSEmbedder,
    Segments,
    arima_forecast,
)
from emgcore.models.decoder import (
    Decoder,
    DecoderConfig,
    fit_decoder,
    r2_per_output,
    receptive_field,
)
from emgcore.models.kinembed import KinEmbedConfig, embed, train_kinembed
from emgcore.preprocessing import DEFAULT_EMG, Pipeline
from emgcore.recording import ChannelLayout, Recording, require_samples
from emgcore.training import EpochHook
from emgcore.windows import RecordingCache


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one run needs; loads from YAML with :func:`load_config`."""

    kinembed: KinEmbedConfig = field(default_factory=KinEmbedConfig)  # Phase I
    decoder: DecoderConfig = field(default_factory=DecoderConfig)  # Phase II, shared by all
    features: FeatureConfig = field(default_factory=FeatureConfig)  # 16 per channel
    ae: AEConfig = field(default_factory=AEConfig)  # AE-Recon / AE-Super training
    methods: tuple[str, ...] = (
        *("arima", "pca", "pls", "ae_recon", "ae_super", "cebra", "kinembed"),  # the paper's
        *("features_tcn", "ridge"),  # ours: what a user tries first (no embedding; linear)
    )
    dims: tuple[int, ...] = (2, 3, 4, 8, 16, 32)  # baselines' embedding sizes, chosen by CV
    ae_alphas: tuple[float, ...] = (0.1, 0.5, 1.0)  # AE-Super regression weight, chosen by CV
    # ridge baseline (not in the paper): previous windows stacked (0-416 ms at a 52 ms stride)
    # and the L2 penalty, chosen by the same session CV; on db8-like the CV optimum lies at
    # 1e2-1e4 (up to 2,304 correlated inputs for ~2,300 windows a session), so the grid spans it
    ridge_lags: tuple[int, ...] = (0, 2, 4, 8)
    ridge_alphas: tuple[float, ...] = (10.0, 100.0, 1000.0, 10000.0)
    cebra_trials: int = 50  # Optuna TPE trials per subject (B.4); 0 uses the canonical values
    cebra_tune_dim: int = 8  # CEBRA's dimension while its other hyper-parameters are tuned
    cebra_grid: Mapping[str, tuple[Any, ...]] = field(default_factory=lambda: dict(CEBRA_GRID))
    arima_fraction: float = 0.2  # ARIMA fits on this final fraction of the last train session
    seeds: tuple[int, ...] = (0, 1, 2)  # final held-out evaluation repeats
    subjects: tuple[str, ...] = ()  # empty: every subject with kinematics
    exclude_subjects: tuple[str, ...] = ()  # left out of every run (DB8: S4, Sec. 4)
    train_sessions: tuple[str, ...] = ()  # empty: see resolve_sessions
    test_session: str = ""  # empty: see resolve_sessions (inferred for DB8 only)
    ld_subjects: tuple[str, ...] = ()  # subjects with limb difference, for Table 1's columns
    preprocessing: tuple[Mapping[str, Any], ...] = tuple(DEFAULT_EMG)  # recording-level steps

    def __post_init__(self) -> None:
        for m in self.methods:
            if m not in COMPARED:
                raise InvalidValueError(
                    f"unknown method {m!r}; known: {sorted(COMPARED)}", field="methods"
                )
        if not self.seeds:
            raise InvalidValueError("needs at least one seed", field="seeds")
        if both := sorted(set(self.subjects) & set(self.exclude_subjects)):
            raise InvalidValueError(
                f"{both} are also in exclude_subjects; drop them from one", field="subjects"
            )


def config_from_dict(d: Mapping[str, Any], source: str | Path | None = None) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig`; unknown or ill-typed keys name the file and key."""
    return build(ExperimentConfig, d, source=source)


def load_config(path: str | Path | None) -> ExperimentConfig:
    """The YAML file at ``path`` (``None``: all defaults, i.e. the paper's configuration)."""
    return load_yaml(ExperimentConfig, path)


# -- data ----------------------------------------------------------------------------------------


@dataclass
class Segment:
    """One session's windows in time order: standardised features and raw DoA."""

    x: np.ndarray  # (N, F) float32, z-scored with the fold's training statistics
    y: np.ndarray  # (N, J) float32, DoA in the recording's unit


@dataclass
class Fold:
    train: list[Segment]
    evals: dict[str, Segment]
    y_scale: Standardizer  # DoA standardisation fitted on the training sessions
    x_scale: Standardizer  # feature z-score fitted on the training sessions (already applied)
    thresholds: Thresholds  # ZC / SSC / WAMP thresholds fitted on the training sessions

    def train_std(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Training sessions as ``(x, standardised y)``: what the embedders fit on."""
        return [(s.x, self.y_scale(s.y)) for s in self.train]


class SubjectData:
    """One subject's preprocessed sessions; builds (and caches) the features of each fold."""

    def __init__(self, subject: str, sessions: Mapping[str, Recording], features: FeatureConfig):
        self.subject = subject
        self.sessions = dict(sessions)
        self.features = features
        self._folds: dict[tuple, Fold] = {}
        first = next(iter(self.sessions.values()))
        self.doa_names = first.joint_names
        self.unit = first.kinematics_unit

    def fold(self, train: Sequence[str], evals: Sequence[str]) -> Fold:
        key = (tuple(train), tuple(evals))
        if key not in self._folds:
            self._folds[key] = self._build(train, evals)
        return self._folds[key]

    def _build(self, train: Sequence[str], evals: Sequence[str]) -> Fold:
        recs = self.sessions
        thresholds = fit_thresholds([np.asarray(recs[s].emg) for s in train], self.features)
        raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for s in dict.fromkeys([*train, *evals]):
            r = recs[s]
            x, last = recording_features(np.asarray(r.emg), r.fs, self.features, thresholds)
            raw[s] = (x, np.asarray(r.kinematics)[last].astype(np.float32))
        x_scale = Standardizer.fit(np.concatenate([raw[s][0] for s in train]))
        segs = {s: Segment(x_scale(x), y) for s, (x, y) in raw.items()}
        y_scale = Standardizer.fit(np.concatenate([segs[s].y for s in train]))
        return Fold(
            [segs[s] for s in train], {s: segs[s] for s in evals}, y_scale, x_scale, thresholds
        )


DB8_SESSIONS = ("A1", "A2", "A3")  # NinaPro DB8's acquisitions, as the loader names them


def resolve_sessions(sessions: Iterable[str], cfg: ExperimentConfig) -> tuple[tuple[str, ...], str]:
    """Which sessions train and which one is held out: ``(train_sessions, test_session)``.

    ``sessions``: the session names in the data (any order, repeats allowed). Explicit
    ``cfg.train_sessions`` / ``cfg.test_session`` win. An empty one is inferred only where that is
    unambiguous: with the test session given, every other session trains; with the training
    sessions given, the one session left is the test session; with neither, only NinaPro DB8's
    naming (exactly A1, A2, A3) is inferred, split as the paper does (Sec. 4: train on A1 + A2,
    hold out A3). Sorting names (which would hold out ``sitting`` after ``gait``, ``standing``) is
    never a rule.

    Raises :class:`InvalidValueError` (one line, field ``test_session`` or ``train_sessions``)
    when the split cannot be inferred, names a session that is not in the data, holds out a
    training session, or leaves no training session.
    """
    have = sorted(set(sessions))
    train, test = tuple(cfg.train_sessions), cfg.test_session
    rest = [s for s in have if s not in train]
    # what to write, with this data's names as the example (an example, not a guess we act on)
    ex_test = test or (rest[-1] if rest else "...")
    ex_train = [s for s in have if s != ex_test]
    how = (
        f"set test_session and train_sessions (YAML keys `test_session: {ex_test}` and "
        f"`train_sessions: [{', '.join(ex_train)}]`, or `--set test_session={ex_test} "
        f"--set 'train_sessions=[{','.join(ex_train)}]'`)"
    )
    if not test and not train:
        if tuple(have) != DB8_SESSIONS:
            raise InvalidValueError(
                f"cannot tell which of the sessions {have} to hold out (only NinaPro DB8's "
                f"{', '.join(DB8_SESSIONS)} are split without being told); {how}",
                field="test_session",
            )
        return DB8_SESSIONS[:2], DB8_SESSIONS[2]
    if not test:
        if len(rest) != 1:
            raise InvalidValueError(
                f"train_sessions {list(train)} leave {rest or 'no session'} of {have}, not one "
                f"session to hold out; {how}",
                field="test_session",
            )
        test = rest[0]
    if test not in have:
        raise InvalidValueError(
            f"{test!r} is not a session of the data ({have}); {how}", field="test_session"
        )
    if test in train:
        raise InvalidValueError(
            f"{test!r} is held out and also in train_sessions {list(train)}; {how}",
            field="test_session",
        )
    if unknown := [s for s in train if s not in have]:
        raise InvalidValueError(
            f"{unknown} are not sessions of the data ({have}); {how}", field="train_sessions"
        )
    train = train or tuple(s for s in have if s != test)
    if not train:
        raise InvalidValueError(
            f"no session is left to train on ({have}); {how}", field="train_sessions"
        )
    return train, test


def prepare(
    recordings: Iterable[Recording], cfg: ExperimentConfig, cache: Any = None
) -> tuple[list[SubjectData], tuple[str, ...], str]:
    """Group recordings by subject, preprocess (through the on-disk cache) and check sessions.

    Subjects are ``cfg.subjects`` (empty: every subject with kinematics) minus
    ``cfg.exclude_subjects``; sessions come from :func:`resolve_sessions`. Returns ``(subjects,
    train_sessions, test_session)``.

    Raises :class:`~emgcore.errors.ShapeError` naming the recording when a session is shorter
    than the decoder's receptive field of feature windows (every method is scored through it),
    and :class:`~emgcore.errors.InvalidValueError` when two recordings claim one session.
    """
    from emgcore.windows import RecordingCache

    recs = [r for r in recordings if r.kinematics is not None]
    if not recs:
        raise MissingFieldError(
            "no recording has kinematics; KinEMbed needs DoA targets", field="kinematics"
        )
    by_subject: dict[str, dict[str, Recording]] = {}
    for r in recs:
        if (twin := by_subject.get(r.subject, {}).get(r.session)) is not None:
            raise InvalidValueError(  # one recording per session: never keep one of two silently
                f"subject {r.subject} session {r.session} is also {twin.source}; KinEMbed needs "
                "one recording per session",
                source=r.source,
                field="session",
            )
        by_subject.setdefault(r.subject, {})[r.session] = r
    train, test = resolve_sessions((r.session for r in recs), cfg)
    excluded = set(cfg.exclude_subjects)
    wanted = cfg.subjects or tuple(s for s in sorted(by_subject) if s not in excluded)
    if not wanted:
        raise InvalidValueError(
            f"exclude_subjects {sorted(excluded)} leaves no subject of {sorted(by_subject)}",
            field="exclude_subjects",
        )
    cache = cache if cache is not None else RecordingCache()
    out = []
    for subj in wanted:
        if subj not in by_subject:
            raise InvalidValueError(
                f"subject {subj!r} not in the data ({sorted(by_subject)})", field="subjects"
            )
        have = by_subject[subj]
        if missing := [s for s in (*train, test) if s not in have]:
            raise MissingFieldError(
                f"subject {subj} has no session(s) {missing} (has {sorted(have)})",
                source=next(iter(have.values())).source,
                field="session",
            )
        pipe = preprocessing_for(cfg, next(iter(have.values())).fs)
        prepped = {s: cache.get(have[s], pipe).to_recording() for s in (*train, test)}
        for r in prepped.values():  # every session must fill the TCN's receptive field
            length, stride = cfg.features.lengths(r.fs)
            n_win = receptive_field(cfg.decoder)
            require_samples(
                r,
                length + (n_win - 1) * stride,
                f"KinEMbed's TCN decoder (receptive field {n_win} feature windows of {length} "
                f"samples every {stride})",
            )
        out.append(SubjectData(subj, prepped, cfg.features))
    return out, tuple(train), test


def preprocessing_for(cfg: ExperimentConfig, fs: float) -> Pipeline:
    """``cfg.preprocessing`` for a recording at ``fs`` Hz: a bandpass whose upper edge reaches
    Nyquist is lowered to 0.45 fs (low-rate devices)."""
    steps = [dict(s) for s in cfg.preprocessing]
    for s in steps:
        if s.get("name") == "bandpass" and s.get("high", 0) >= 0.5 * fs:
            s["high"] = 0.45 * fs
    return Pipeline.from_config(steps)


# -- methods -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunContext:
    """How a launcher runs the trainable methods: per-epoch hooks, data parallelism, device."""

    hooks: Sequence[EpochHook] = ()
    parallel: DataParallel | None = None
    device: str = "cpu"


class KinEmbedEmbedder:
    """KinEMbed's frozen EMG encoder behind the :class:`Embedder` interface."""

    def __init__(self, cfg: KinEmbedConfig, context: RunContext = RunContext()):
        self.cfg = cfg
        self.context = context

    def fit(self, train: Segments, seed: int) -> None:
        ctx = self.context
        self.model, self.history = train_kinembed(
            self.cfg, train, seed=seed, hooks=ctx.hooks, parallel=ctx.parallel, device=ctx.device
        )

    def transform(self, x: np.ndarray) -> np.ndarray:
        return embed(self.model, x)


class Regressor(Protocol):
    """A method that maps features to DoA itself (no embedding, no TCN), e.g. :class:`LagRidge`."""

    def fit(self, train: Segments, seed: int) -> None: ...

    def predict(self, x: np.ndarray) -> np.ndarray:
        """One session's features ``(N, F)`` in time order -> DoA ``(N, J)``, causal."""
        ...


@dataclass(frozen=True)
class MethodSpec:
    """How to build a method and which configurations its CV chooses from.

    Exactly one of ``build`` (an embedder the shared TCN decodes) and ``regress`` (a direct
    feature -> DoA regressor) is set, or neither: ARIMA, which forecasts the DoA alone.
    """

    label: str  # as in the paper's tables (at most 10 characters)
    # params, config, context -> a fresh embedder
    build: Callable[[Mapping[str, Any], ExperimentConfig, RunContext], Embedder] | None
    candidates: Callable[[ExperimentConfig], list[dict[str, Any]]]
    # params, config -> a fresh regressor
    regress: Callable[[Mapping[str, Any], ExperimentConfig], Regressor] | None = None


def _dims(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    return [{"dim": d} for d in cfg.dims]


# Table 1's rows: every method the protocol compares (KinEMbed, its baselines, ARIMA), by name
COMPARED: dict[str, MethodSpec] = {
    "arima": MethodSpec("ARIMA", None, lambda c: [{}]),
    "pca": MethodSpec("PCA", lambda p, c, x: PCAEmbedder(p["dim"]), _dims),
    "pls": MethodSpec("PLS", lambda p, c, x: PLSEmbedder(p["dim"]), _dims),
    "ae_recon": MethodSpec("AE-Recon", lambda p, c, x: AEEmbedder(p["dim"], 0.0, c.ae), _dims),
    "ae_super": MethodSpec(
        "AE-Super",
        lambda p, c, x: AEEmbedder(p["dim"], p["alpha"], c.ae),
        lambda c: [{"dim": d, "alpha": a} for d in c.dims for a in c.ae_alphas],
    ),
    "cebra": MethodSpec(
        "CEBRA",
        lambda p, c, x: CEBRAEmbedder(p["dim"], {k: v for k, v in p.items() if k != "dim"}),
        _dims,  # after the Optuna search has fixed the other hyper-parameters
    ),
    "kinembed": MethodSpec(
        "KinEMbed", lambda p, c, x: KinEmbedEmbedder(c.kinembed, x), lambda c: [{}]
    ),
    # not in the paper: the raw features through the same causal TCN (no embedding) ...
    "features_tcn": MethodSpec("Feat+TCN", lambda p, c, x: IdentityEmbedder(), lambda c: [{}]),
    # ... and ridge on the current + previous `lags` windows' features (no TCN)
    "ridge": MethodSpec(
        "Ridge-lag",
        None,
        lambda c: [{"lags": k, "alpha": a} for k in c.ridge_lags for a in c.ridge_alphas],
        regress=lambda p, c: LagRidge(p["lags"], p["alpha"]),
    ),
}


def fit_models(
    method: str,
    params: Mapping[str, Any],
    fold: Fold,
    cfg: ExperimentConfig,
    seed: int,
    context: RunContext = RunContext(),
) -> tuple[Embedder, Decoder]:
    """Fit ``method``'s embedder, then the shared decoder, on the fold's training sessions."""
    build = COMPARED[method].build
    if build is None:
        raise InvalidValueError(f"{method} has no embedder to fit", field="methods")
    emb = build(params, cfg, context)
    emb.fit(fold.train_std(), seed)
    z_train = [emb.transform(s.x) for s in fold.train]
    dec = fit_decoder(
        [(z, s.y) for z, s in zip(z_train, fold.train, strict=True)], cfg.decoder, seed=seed
    )
    return emb, dec


def fit_regressor(
    method: str, params: Mapping[str, Any], fold: Fold, cfg: ExperimentConfig, seed: int
) -> Regressor:
    """Fit a direct regressor (``COMPARED[method].regress``) on the fold's training sessions
    (features -> DoA in the recording's unit)."""
    regress = COMPARED[method].regress
    if regress is None:
        raise InvalidValueError(f"{method} is not a direct regressor", field="methods")
    model = regress(params, cfg)
    model.fit([(s.x, s.y) for s in fold.train], seed)
    return model


def fit_eval(
    method: str,
    params: Mapping[str, Any],
    fold: Fold,
    cfg: ExperimentConfig,
    seed: int,
    context: RunContext = RunContext(),
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fit ``method`` on the fold's training sessions -> ``{eval session: (R^2 (J,), pred)}``."""
    spec = COMPARED[method]
    if spec.regress is not None:
        reg = fit_regressor(method, params, fold, cfg, seed)
        return {
            s: (r2_per_output(seg.y, pred), pred)
            for s, seg in fold.evals.items()
            for pred in [reg.predict(seg.x)]
        }
    if spec.build is None:  # ARIMA: the DoA series alone, forecast across the session
        last = fold.train[-1].y
        history = last[len(last) - max(8, round(cfg.arima_fraction * len(last))) :]
        forecast, _ = arima_forecast(history, max(len(seg.y) for seg in fold.evals.values()))
        return {
            s: (r2_per_output(seg.y, forecast[: len(seg.y)]), forecast[: len(seg.y)])
            for s, seg in fold.evals.items()
        }
    emb, dec = fit_models(method, params, fold, cfg, seed, context)
    out = {}
    for s, seg in fold.evals.items():
        pred = dec.predict(emb.transform(seg.x))
        out[s] = (r2_per_output(seg.y, pred), pred)
    return out


class DecodingPipeline(torch.nn.Module):
    """A fitted KinEMbed encoder and decoder as one module: what the model registry holds.

    ``forward(features (T, F)) -> DoA (T, J)``: one session's raw window features (the output of
    :func:`emgcore.features.recording_features`) in time order, z-scored with the training
    statistics stored here, embedded, decoded causally, in the DoA's unit.
    """

    def __init__(self, encoder: torch.nn.Module, decoder: Decoder, x_scale: Standardizer):
        super().__init__()
        self.encoder = encoder.eval()
        self.tcn = decoder.net.eval()
        f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        self.register_buffer("x_mean", f32(x_scale.mean))
        self.register_buffer("x_std", f32(x_scale.std))
        self.register_buffer("z_mean", f32(decoder.x_scale.mean))
        self.register_buffer("z_std", f32(decoder.x_scale.std))
        self.register_buffer("y_mean", f32(decoder.y_scale.mean))
        self.register_buffer("y_std", f32(decoder.y_scale.std))

    @classmethod
    def empty(cls, cfg: ExperimentConfig, n_features: int, n_dof: int) -> DecodingPipeline:
        """The right shapes for ``cfg``, to ``load_state_dict`` a saved pipeline into."""
        from emgcore.models.kinembed import KinEmbed
        from emgcore.models.nn import TCN

        d = cfg.decoder
        e = cfg.kinembed.embed_dim
        tcn = TCN(e, n_dof, d.channels, d.kernel, d.dilations, d.dropout)
        ones = lambda n: Standardizer(np.zeros(n), np.ones(n))  # noqa: E731
        dec = Decoder(tcn, ones(e), ones(n_dof))
        return cls(KinEmbed(cfg.kinembed, n_features, n_dof).f_emg, dec, ones(n_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (features - self.x_mean) / self.x_std  # (T, F)
        z = torch.nn.functional.normalize(self.encoder(x), dim=1)  # (T, E), the embedding
        z = (z - self.z_mean) / self.z_std
        return self.tcn(z[None])[0] * self.y_std + self.y_mean  # (T, J)


def kinembed_pipeline(emb: Embedder, dec: Decoder, fold: Fold) -> DecodingPipeline:
    """The registry module of a fitted KinEMbed (``fit_models('kinembed', ...)``) on ``fold``."""
    if not isinstance(emb, KinEmbedEmbedder):
        raise InvalidValueError("only KinEMbed fits become a pipeline", field="methods")
    encoder = copy.deepcopy(emb.model.f_emg).cpu()  # eval mode: BatchNorm uses running stats
    return DecodingPipeline(encoder, dec, fold.x_scale).eval()


class EmgDecoder:
    """A registered KinEMbed from raw EMG to DoA: what :func:`emgcore.methods.load_inference`
    returns for a KinEMbed version (its ``inference.pt``).

    ``predict(emg (T, C), fs) -> DoA (N, J)`` in ``unit``: the recording-level preprocessing
    (:func:`preprocessing_for`), every window's features with the thresholds fitted on the
    training sessions (:func:`emgcore.features.recording_features`), then the
    :class:`DecodingPipeline` (feature z-score, encoder, causal TCN). Row ``n`` is the DoA at
    sample ``window_end(T, fs)[n]``, as the held-out score reads it. ``emg`` is as recorded, in
    the training recordings' unit, at their rate ``fs`` (another rate is refused: resample first).
    """

    method = "kinembed"

    def __init__(
        self,
        config: ExperimentConfig,
        fs: float,
        layout: ChannelLayout,
        thresholds: Thresholds,
        pipeline: DecodingPipeline,
        joint_names: Sequence[str],
        unit: str,
    ):
        self.config, self.fs, self.layout = config, float(fs), layout
        self.thresholds, self.pipeline = thresholds, pipeline.eval()
        self.joint_names, self.unit = tuple(joint_names), unit

    @property
    def n_channels(self) -> int:
        return self.layout.n_channels

    def predict(self, emg: np.ndarray, fs: float) -> np.ndarray:
        x = check_input(emg, fs, self)
        rec = Recording(x, self.fs, self.layout, subject="-", session="-", source="predict")
        # float32 after preprocessing, as the training recordings were cached (RecordingCache)
        pre = np.asarray(preprocessing_for(self.config, self.fs).apply(rec).emg, np.float32)
        feats, _ = recording_features(pre, self.fs, self.config.features, self.thresholds)
        with torch.no_grad():
            return self.pipeline(torch.as_tensor(feats)).numpy()

    def window_end(self, n_samples: int, fs: float) -> np.ndarray:
        length, stride = self.config.features.lengths(fs)
        return window_starts(n_samples, length, stride) + length - 1

    def save(self, folder: Path) -> list[Path]:
        plain = json.loads(json.dumps(asdict(self.config), default=list))
        spec = {
            "config": plain,
            "fs": self.fs,
            "layout": self.layout.to_dict(),
            "joint_names": list(self.joint_names),
            "unit": self.unit,
            "n_features": int(self.pipeline.x_mean.shape[0]),
            "n_dof": int(self.pipeline.y_mean.shape[0]),
        }
        t = self.thresholds
        payload = {
            "spec": json.dumps(spec),
            "thresholds": {k: torch.as_tensor(np.asarray(getattr(t, k))) for k in THRESHOLDS},
            "state_dict": self.pipeline.state_dict(),
        }
        return [save_inference(self.method, payload, folder)]

    @classmethod
    def load(cls, payload: Mapping[str, Any]) -> EmgDecoder:
        spec = json.loads(payload["spec"])
        cfg = config_from_dict(spec["config"], source=INFERENCE_SOURCE)
        pipe = DecodingPipeline.empty(cfg, spec["n_features"], spec["n_dof"])
        pipe.load_state_dict(payload["state_dict"])
        th = Thresholds(**{k: payload["thresholds"][k].numpy() for k in THRESHOLDS})
        layout = ChannelLayout.from_dict(spec["layout"])
        return cls(cfg, spec["fs"], layout, th, pipe, spec["joint_names"], spec["unit"])


THRESHOLDS = ("zc", "ssc", "wamp")
INFERENCE_SOURCE = "inference.pt"


def cv_folds(train_sessions: Sequence[str]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """k-fold session CV over the training sessions: each is the validation fold once."""
    if len(train_sessions) < 2:
        raise InvalidValueError(
            "session CV needs at least two training sessions", field="train_sessions"
        )
    return [(tuple(s for s in train_sessions if s != v), (v,)) for v in train_sessions][
        ::-1
    ]  # DB8 order: A1 -> A2 first


def cv_score(
    method: str,
    params: Mapping[str, Any],
    subject: SubjectData,
    train_sessions: Sequence[str],
    cfg: ExperimentConfig,
    seed: int = 0,
    context: RunContext = RunContext(),
) -> float:
    """Mean R^2 (over DoA and folds) of one configuration under session CV: the selection score."""
    scores = []
    for tr, ev in cv_folds(train_sessions):
        res = fit_eval(method, params, subject.fold(tr, ev), cfg, seed, context)
        scores += [float(np.mean(r2)) for r2, _ in res.values()]
    return float(np.mean(scores))


def tune_cebra(
    subject: SubjectData,
    train: Sequence[str],
    cfg: ExperimentConfig,
    seed: int,
    records: list[dict[str, Any]] | None = None,
) -> dict:
    """Optuna TPE over the B.4 grid at ``cebra_tune_dim``, objective = mean session-CV R^2.

    Returns this subject's best hyper-parameters (``CEBRA_CANONICAL`` when ``cebra_trials`` is 0,
    the grid's point without a CV fit when it has one point); every trial is appended to
    ``records`` (``{"method", "subject", "stage": "hyper", <params>, "dim", "cv_r2"}``) when
    given.
    """
    if cfg.cebra_trials <= 0:
        return dict(CEBRA_CANONICAL)
    if math.prod(len(v) for v in cfg.cebra_grid.values()) == 1:
        # one point: nothing to choose, and its CV fits would cost most of a small run (smoke)
        return {k: v[0] for k, v in cfg.cebra_grid.items()}
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: optuna.Trial) -> float:
        params = {k: trial.suggest_categorical(k, list(v)) for k, v in cfg.cebra_grid.items()}
        score = cv_score("cebra", {"dim": cfg.cebra_tune_dim, **params}, subject, train, cfg, seed)
        if records is not None:
            records.append(
                {"method": "cebra", "subject": subject.subject, "stage": "hyper", **params}
                | {"dim": cfg.cebra_tune_dim, "cv_r2": score}
            )
        return score

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=cfg.cebra_trials)
    return dict(study.best_params)


def mode_config(
    winners: Mapping[str, Mapping[str, Any]], records: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """The one configuration every subject is refitted with: per hyper-parameter, the mode of the
    subjects' session-CV winners (Sec. 4: "the canonical dimension is the mode of per-subject best
    values"; App. B.4: CEBRA's "canonical hyperparameters were set to the mode across subjects").

    ``winners``: subject -> its CV-best parameters (same keys for every subject). ``records``:
    the CV candidates the subjects evaluated (``{"subject", <params>, "cv_r2"}``), for ties.

    Tie-break (the paper gives none; ours): among values chosen by equally many subjects, the one
    with the higher mean CV R^2 across subjects, where a subject's score for a value is its best
    CV R^2 over its candidates with that value (a subject that never tried it is left out); then
    the smaller value (the cheaper, smaller model). ``{}`` when there are no parameters.
    """
    if not winners:
        raise InvalidValueError("no per-subject winners to take the mode of", field="subjects")
    chosen: dict[str, Any] = {}
    for key in next(iter(winners.values())):
        counts = Counter(w[key] for w in winners.values())
        top = max(counts.values())
        tied = [v for v, n in counts.items() if n == top]
        if len(tied) > 1:

            def mean_cv(value: Any, key: str = key) -> float:
                best: dict[str, float] = {}
                for r in records:
                    if r.get(key) == value and math.isfinite(r["cv_r2"]):
                        best[r["subject"]] = max(best.get(r["subject"], -math.inf), r["cv_r2"])
                return float(np.mean(list(best.values()))) if best else -math.inf

            # sort by (-mean CV R^2, value): the first is the winner
            tied.sort(key=lambda v: (-mean_cv(v), v))
        chosen[key] = tied[0]
    return chosen


# -- the run -------------------------------------------------------------------------------------


@dataclass
class ExperimentResult:
    """Scores of every (method, subject, seed) on the held-out session, and what CV chose.

    ``winners`` holds each subject's own CV-best configuration per method (and per CEBRA stage:
    ``hyper`` then ``grid``), ``chosen`` the mode across subjects that every subject was refitted
    with; each row carries both (``params`` / ``cv_r2``: the chosen configuration and the
    subject's CV R^2 for it; ``own_params`` / ``own_cv_r2``: the subject's winner).
    """

    config: ExperimentConfig
    doa_names: tuple[str, ...]
    train_sessions: tuple[str, ...]
    test_session: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per method x subject x seed
    selection: list[dict[str, Any]] = field(default_factory=list)  # every CV candidate's score
    winners: list[dict[str, Any]] = field(default_factory=list)  # per method x subject (x stage)
    chosen: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method: the mode
    excluded: tuple[str, ...] = ()  # subjects in the data left out by exclude_subjects
    traces: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    window_s: float = 0.052  # time between consecutive predictions, for the trace figure
    seconds: float = 0.0

    def frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows)

    def per_subject(self) -> Any:
        """Mean over seeds: one row per (method, subject), columns per DoA and ``mean``."""
        cols = [*self.doa_names, "mean"]
        return self.frame().groupby(["method", "subject"], sort=False)[cols].mean().reset_index()


def run(
    recordings: Iterable[Recording],
    cfg: ExperimentConfig,
    *,
    log: Callable[[str], None] = lambda s: None,
    cache: Any = None,
) -> ExperimentResult:
    """The paper's protocol for every configured method and subject (see the module docstring):
    per-subject session-CV selection, the mode across subjects, every subject refitted with it
    and scored on the held-out session once per seed."""
    t0 = time.perf_counter()
    recordings = list(recordings)
    subjects, train, test = prepare(recordings, cfg, cache)
    res = ExperimentResult(cfg, subjects[0].doa_names, train, test)
    res.window_s = cfg.features.stride_ms / 1000
    in_data = {r.subject for r in recordings}
    res.excluded = tuple(s for s in cfg.exclude_subjects if s in in_data)
    given = {
        (True, True): "as configured",
        (False, True): "test_session as configured, every other session trains",
        (True, False): "train_sessions as configured, the one session left is held out",
        (False, False): "NinaPro DB8's naming, split as the paper does",
    }[(bool(cfg.train_sessions), bool(cfg.test_session))]
    log(f"sessions: train on {', '.join(train)}; held out: {test} ({given})")
    if cfg.exclude_subjects:
        absent = [s for s in cfg.exclude_subjects if s not in in_data]
        log(
            f"subjects: {len(subjects)}; excluded {list(res.excluded)} (exclude_subjects)"
            + (f"; not in the data: {absent}" if absent else "")
        )
    for method in cfg.methods:
        chosen = choose_config(method, subjects, train, cfg, res, log)
        for subj in subjects:
            t1 = time.perf_counter()
            own = next(
                (
                    w
                    for w in res.winners
                    if w["method"] == method
                    and w["subject"] == subj.subject
                    and w["stage"] == "grid"
                ),
                {"params": {}, "cv_r2": math.nan},
            )
            cv = _cv_of(res.selection, method, subj.subject, chosen)
            final = subj.fold(train, (test,))
            for seed in cfg.seeds:
                r2, pred = fit_eval(method, chosen, final, cfg, seed)[test]
                res.rows.append(
                    {
                        "method": method,
                        "subject": subj.subject,
                        "seed": seed,
                        **dict(zip(res.doa_names, r2.tolist(), strict=True)),
                        "mean": float(np.mean(r2)),
                        "cv_r2": cv,
                        "params": dict(chosen),
                        "own_params": dict(own["params"]),
                        "own_cv_r2": own["cv_r2"],
                    }
                )
                if seed == cfg.seeds[0]:
                    res.traces[(method, subj.subject)] = (final.evals[test].y, pred)
            scores = [
                r["mean"]
                for r in res.rows
                if r["method"] == method and r["subject"] == subj.subject
            ]
            log(
                f"{subj.subject:>6} {COMPARED[method].label:<9} held-out R2 {np.mean(scores):+.3f} "
                f"with {dict(chosen)} (cv {cv:+.3f}; own winner {dict(own['params'])}, cv "
                f"{own['cv_r2']:+.3f}) {time.perf_counter() - t1:.0f} s"
            )
    res.seconds = time.perf_counter() - t0
    return res


def _cv_of(
    records: Sequence[Mapping[str, Any]], method: str, subject: str, params: Mapping[str, Any]
) -> float:
    """A subject's CV R^2 of one configuration (NaN if it never evaluated exactly that one)."""
    for r in records:
        if (
            r["method"] == method
            and r["subject"] == subject
            and r.get("stage") == "grid"
            and all(r.get(k) == v for k, v in params.items())
        ):
            return float(r["cv_r2"])
    return math.nan


def choose_config(
    method: str,
    subjects: Sequence[SubjectData],
    train: Sequence[str],
    cfg: ExperimentConfig,
    res: ExperimentResult,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Select per subject by session CV, then fix the mode across subjects (:func:`mode_config`).

    Each subject's winner goes to ``res.winners``, every candidate to ``res.selection``, the mode
    to ``res.chosen[method]`` (returned). CEBRA takes two modes: its Optuna hyper-parameters
    (stage ``hyper``), then its dimension searched with those fixed (stage ``grid``).
    """
    seed = cfg.seeds[0]
    base: dict[str, Any] = {}
    if method == "cebra":
        tuned: dict[str, dict[str, Any]] = {}
        trials: list[dict[str, Any]] = []
        for subj in subjects:
            t1 = time.perf_counter()
            n = len(trials)
            tuned[subj.subject] = tune_cebra(subj, train, cfg, seed, trials)
            best = max((r["cv_r2"] for r in trials[n:]), default=math.nan)
            res.winners.append(
                {"method": method, "subject": subj.subject, "stage": "hyper"}
                | {"params": tuned[subj.subject], "cv_r2": best}
            )
            how = f"Optuna winner {tuned[subj.subject]} (cv {best:+.3f})"
            log(
                f"{subj.subject:>6} CEBRA     "
                + (how if len(trials) > n else f"the grid's one point {tuned[subj.subject]}")
                + f" {time.perf_counter() - t1:.0f} s"
            )
        res.selection += trials
        base = mode_config(tuned, trials)
        log(f"CEBRA: hyper-parameters fixed for every subject (mode): {base}")
    own: dict[str, dict[str, Any]] = {}
    for subj in subjects:
        params, score = select_config(method, subj, train, cfg, res, base=base)
        own[subj.subject] = params
        res.winners.append(
            {"method": method, "subject": subj.subject, "stage": "grid"}
            | {"params": params, "cv_r2": score}
        )
    grid = [r for r in res.selection if r["method"] == method and r.get("stage") == "grid"]
    chosen = mode_config(own, grid)
    res.chosen[method] = chosen
    if chosen:
        tally = Counter(tuple(sorted(p.items())) for p in own.values())
        log(
            f"{COMPARED[method].label}: per-subject CV winners "
            + ", ".join(f"{dict(p)} x{n}" for p, n in tally.most_common())
            + f" -> fixed for every subject: {chosen}"
        )
    return chosen


def select_config(
    method: str,
    subj: SubjectData,
    train: Sequence[str],
    cfg: ExperimentConfig,
    res: ExperimentResult,
    base: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], float]:
    """The CV-best configuration of ``method`` for one subject (first seed) and its CV score.

    ``base``: parameters fixed before this search (CEBRA: the canonical hyper-parameters); for
    CEBRA without it, this subject's own Optuna search provides them. Every candidate is appended
    to ``res.selection`` (stage ``grid``). The protocol's configuration is not this but the mode
    over subjects (:func:`choose_config`).
    """
    spec = COMPARED[method]
    seed = cfg.seeds[0]
    if spec.build is None and spec.regress is None:
        return {}, float("nan")  # ARIMA's orders are chosen by BIC inside its fit
    if base is None:
        base = tune_cebra(subj, train, cfg, seed) if method == "cebra" else {}
    best, best_score = None, -np.inf
    for cand in spec.candidates(cfg):
        params = {**base, **cand}
        score = cv_score(method, params, subj, train, cfg, seed)
        res.selection.append(
            {"method": method, "subject": subj.subject, "stage": "grid", **params, "cv_r2": score}
        )
        if best is None or score > best_score:
            best, best_score = params, score
    assert best is not None
    return best, best_score


# -- as a sweep method ----------------------------------------------------------------------------


class KinEmbedTrial(Trial):
    def __init__(self, cfg: ExperimentConfig, recordings: Sequence[Any], setup: TrialSetup):
        self.setup = setup
        subjects, train, test = prepare(recordings, cfg, RecordingCache(setup.cache))
        # the run records the split it was computed on, resolved, and the subjects it scored
        self.config = replace(
            cfg,
            train_sessions=train,
            test_session=test,
            subjects=tuple(s.subject for s in subjects),
        )
        self.subjects, self.train, self.test = subjects, tuple(train), test
        # the registered subject's held-out recording as recorded: what its champion is
        # scored on again from raw EMG (Export.retest)
        first = subjects[0].subject if subjects else None
        self._heldout_raw = [
            r
            for r in recordings
            if r.subject == first and r.session == test and r.kinematics is not None
        ]
        if setup.mode == "final":  # (key, subject, train sessions, eval session, seed)
            todo = [
                (f"{s.subject}/seed{seed}", s, self.train, test, seed)
                for s in subjects
                for seed in cfg.seeds
            ]
        else:
            todo = [
                (f"{s.subject}/{'_'.join(tr)}-to-{ev[0]}", s, tr, ev[0], cfg.seeds[0])
                for s in subjects
                for tr, ev in cv_folds(self.train)
            ]
        self._todo = {key: rest for key, *rest in todo}
        self.units = [key for key, *_ in todo]
        self.pipeline_state: Mapping[str, torch.Tensor] | None = None  # final: what registers

    def run(self, unit: str, hooks: Hooks) -> UnitResult:
        subj, train, ev, seed = self._todo[unit]
        s = self.setup
        context = RunContext(hooks=tuple(hooks(None)), parallel=s.parallel, device=s.device)
        fold = subj.fold(train, (ev,))
        state = None
        if s.mode == "final":
            emb, dec = fit_models("kinembed", {}, fold, self.config, seed, context)
            seg = fold.evals[ev]
            r2 = r2_per_output(seg.y, dec.predict(emb.transform(seg.x)))
            if unit == self.units[0]:
                state = self.pipeline_state = kinembed_pipeline(emb, dec, fold).state_dict()
        else:
            ((r2, _),) = fit_eval("kinembed", {}, fold, self.config, seed, context).values()
        # the key holds data names ("P01 (pilot)"): the launcher's logger makes it a key MLflow
        # takes and tags the readable one
        return UnitResult(r2.tolist(), {f"r2.{unit}": float(np.mean(r2))}, state)

    def restore(self, unit: str, state: Mapping[str, Any]) -> None:
        self.pipeline_state = state

    def summary(self, values: Mapping[str, Any]) -> dict[str, Any]:
        means = [float(np.mean(v)) for v in values.values()]
        metric = "heldout_r2" if self.setup.mode == "final" else "cv_r2"
        out: dict[str, Any] = {metric: float(np.mean(means)) if means else math.nan}
        if self.setup.mode == "final" and means:
            out["heldout_r2_std"] = float(np.std(means))
            out["scores"] = json.dumps(dict(values))
            out["scored"] = ",".join(s.subject for s in self.subjects)
        return out

    def _registered(self) -> tuple[EmgDecoder, np.ndarray, np.ndarray, np.ndarray]:
        """The first subject's pipeline from raw EMG, its raw held-out features, targets and
        predictions."""
        assert self.pipeline_state is not None
        subj = self.subjects[0]
        fold = subj.fold(self.train, (self.test,))
        seg = fold.evals[self.test]
        pipe = DecodingPipeline.empty(self.config, seg.x.shape[1], seg.y.shape[1])
        pipe.load_state_dict(self.pipeline_state)
        pipe.eval()
        raw = fold.x_scale.inverse(seg.x)  # the raw window features the model takes
        with torch.no_grad():
            pred = pipe(torch.as_tensor(raw)).numpy()
        rec = subj.sessions[self.test]
        decoder = EmgDecoder(
            self.config, rec.fs, rec.layout, fold.thresholds, pipe, subj.doa_names, subj.unit
        )
        return decoder, raw, seg.y, pred

    def report(self, values: Mapping[str, Any], folder: Path) -> Sequence[Path]:
        """emgcore's tables and figures: per-DoA R^2, the registered model's held-out
        prediction trace, the per-subject spread; and the resolved config."""
        import dataclasses

        import yaml

        from emgcore.eval import report

        cfg, subj = self.config, self.subjects[0]
        res = ExperimentResult(cfg, subj.doa_names, self.train, self.test)
        res.window_s = cfg.features.stride_ms / 1000
        for key, r2 in values.items():
            subject, seed = key.rsplit("/seed", 1)  # a subject may be named "x/seedling"
            res.rows.append(
                {
                    "method": "kinembed",
                    "subject": subject,
                    "seed": int(seed),
                    **dict(zip(subj.doa_names, r2, strict=True)),
                    "mean": float(np.mean(r2)),
                    "cv_r2": math.nan,
                    "params": {},
                }
            )
        _, _, y, pred = self._registered()
        res.traces[("kinembed", subj.subject)] = (y, pred)
        report.write(res, folder)
        plain = json.loads(json.dumps(dataclasses.asdict(cfg), default=list))
        (folder / "config.yaml").write_text(yaml.safe_dump(plain, sort_keys=False))
        return sorted(folder.iterdir())

    def registration(self, values: Mapping[str, Any]) -> Registration:
        decoder, raw, y, pred = self._registered()
        sel = self.setup.selection
        data = f"{self.setup.data} ({self.setup.fingerprint})"
        selection = Score(
            "cv_r2",
            float(sel.get("value", math.nan)),
            f"session CV over {'+'.join(self.train)} of {','.join(sel.get('subjects', []))} "
            f"of {data}",
            0.0,  # the mean predictor's R^2
        )
        heldout = Score(
            "heldout_r2",
            float(np.mean(r2_per_output(y, pred))),
            f"{self.subjects[0].subject}/{self.test} of {data}",
            0.0,
        )
        tags = {"train_sessions": ",".join(self.train), "test_session": self.test}
        export = Export("", decoder.pipeline, raw, decoder.save, retest=self._retest)
        return Registration(selection, heldout, [export], tags)

    def _retest(self, folder: Path) -> float:
        """The held-out R^2 of the version whose files are in ``folder`` (its ``inference.pt``:
        raw EMG in, DoAs out), on this trial's registered subject and held-out session: a
        version of the same recipe recorded it as ``registered_heldout_r2``."""
        from emgcore.methods import load_inference

        (raw,) = self._heldout_raw
        pipe = load_inference(folder)
        doa = pipe.predict(np.asarray(raw.emg), raw.fs)
        end = pipe.window_end(raw.n_samples, raw.fs)
        return float(np.mean(r2_per_output(np.asarray(raw.kinematics)[end], doa)))

    def seeds(self, values: Mapping[str, Any]) -> dict[str, list[float]]:
        """Held-out R^2 per seed: each the mean over subjects (of the mean over DoAs), as
        ``heldout_r2`` averages them. The seed, not the (subject, seed) unit, is the nightly
        gate's sample: subjects differ by far more than a code change moves them, and each seed
        is one retrain of the whole configuration."""
        per: dict[int, list[float]] = {}
        for unit, value in values.items():
            per.setdefault(self._todo[unit][3], []).append(float(np.mean(value)))
        return {"heldout_r2": [float(np.mean(per[s])) for s in self.config.seeds if s in per]}


METHOD = Method(
    name="kinembed",
    config=ExperimentConfig,
    preset="kinembed-sim",
    smoke_preset="kinembed-smoke",
    data="db8-like",
    smoke_sim={"duration_s": 30.0, "n_subjects": 1},
    final_metric="heldout_r2",
    final_label="held-out R^2",
    final_over="subjects x seeds",
    trial=KinEmbedTrial,
    session_split=resolve_sessions,
    inference=EmgDecoder.load,
)
