"""One KinEMbed configuration end to end, on one process: the paper's evaluation protocol.

For every subject: sessions ``train_sessions`` (DB8: A1, A2) train, ``test_session`` (A3) is held
out and touched only by the final evaluation. Every choice (each baseline's embedding dimension,
AE-Super's alpha, CEBRA's Optuna search) is made by k-fold session CV over the training sessions
(DB8: A1 -> A2 and A2 -> A1) with the mean CV R^2 as the criterion. The chosen configuration is then
refitted on all training sessions and scored on the held-out session once per seed.

Choices the paper leaves open (written here so they sit next to the code):

* Selection runs with the first seed; the held-out score is the mean over all seeds.
* Features (thresholds and z-score) and DoA standardisation are fitted on each fold's training
  sessions only; the decoder standardises its own inputs the same way.
* A window's target is the DoA at its last sample (causal, as a prosthesis would decode).
* ARIMA has no embedding and no decoder: it forecasts the held-out session from the DoA alone.

:func:`run` is what ``python -m emgcore kinembed`` and the orchestration layer call;
:func:`cv_score` is the per-trial objective of the staged search.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emgcore.baselines import (
    CEBRA_CANONICAL,
    CEBRA_GRID,
    AEConfig,
    AEEmbedder,
    CEBRAEmbedder,
    Embedder,
    PCAEmbedder,
    PLSEmbedder,
    Segments,
    arima_forecast,
)
from emgcore.config import build, load_yaml
from emgcore.decoder import Decoder, DecoderConfig, fit_decoder, r2_per_output
from emgcore.distributed import DataParallel
from emgcore.errors import InvalidValueError, MissingFieldError
from emgcore.features import FeatureConfig, Standardizer, fit_thresholds, recording_features
from emgcore.kinembed import EpochHook, KinEmbedConfig, embed, train_kinembed
from emgcore.preprocessing import DEFAULT_EMG, Pipeline
from emgcore.recording import Recording


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one run needs; loads from YAML with :func:`load_config`."""

    kinembed: KinEmbedConfig = field(default_factory=KinEmbedConfig)  # Phase I
    decoder: DecoderConfig = field(default_factory=DecoderConfig)  # Phase II, shared by all
    features: FeatureConfig = field(default_factory=FeatureConfig)  # 16 per channel
    ae: AEConfig = field(default_factory=AEConfig)  # AE-Recon / AE-Super training
    methods: tuple[str, ...] = ("arima", "pca", "pls", "ae_recon", "ae_super", "cebra", "kinembed")
    dims: tuple[int, ...] = (2, 3, 4, 8, 16, 32)  # baselines' embedding sizes, chosen by CV
    ae_alphas: tuple[float, ...] = (0.1, 0.5, 1.0)  # AE-Super regression weight, chosen by CV
    cebra_trials: int = 50  # Optuna TPE trials per subject (B.4); 0 uses the canonical values
    cebra_tune_dim: int = 8  # CEBRA's dimension while its other hyper-parameters are tuned
    cebra_grid: Mapping[str, tuple[Any, ...]] = field(default_factory=lambda: dict(CEBRA_GRID))
    arima_fraction: float = 0.2  # ARIMA fits on this final fraction of the last train session
    seeds: tuple[int, ...] = (0, 1, 2)  # final held-out evaluation repeats
    subjects: tuple[str, ...] = ()  # empty: every subject with kinematics
    train_sessions: tuple[str, ...] = ()  # empty: all sessions but the last
    test_session: str = ""  # empty: the last session
    ld_subjects: tuple[str, ...] = ()  # subjects with limb difference, for Table 1's columns
    preprocessing: tuple[Mapping[str, Any], ...] = tuple(DEFAULT_EMG)  # recording-level steps

    def __post_init__(self) -> None:
        for m in self.methods:
            if m not in METHODS:
                raise InvalidValueError(
                    f"unknown method {m!r}; known: {sorted(METHODS)}", field="methods"
                )
        if not self.seeds:
            raise InvalidValueError("needs at least one seed", field="seeds")


def config_from_dict(d: Mapping[str, Any], source: str | Path | None = None) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig`; unknown or ill-typed keys name the file and key."""
    return build(ExperimentConfig, d, source=source)


PRESETS_DIR = Path(__file__).parent / "presets"


def resolve_config(spec: str | Path | None) -> Path | None:
    """A config argument as a path: an existing file or a bundled preset name (``kinembed-sim``)."""
    if spec is None:
        return None
    path = Path(spec)
    if path.exists():
        return path
    bundled = PRESETS_DIR / f"{spec}.yaml"
    if bundled.exists():
        return bundled
    names = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    raise InvalidValueError(
        f"no such file, and not a bundled preset ({', '.join(names)})", source=path, field="config"
    )


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
        return Fold([segs[s] for s in train], {s: segs[s] for s in evals}, y_scale, x_scale)


def prepare(
    recordings: Iterable[Recording], cfg: ExperimentConfig, cache: Any = None
) -> tuple[list[SubjectData], tuple[str, ...], str]:
    """Group recordings by subject, preprocess (through the on-disk cache) and check sessions.

    Returns ``(subjects, train_sessions, test_session)``.
    """
    from emgcore.windows import RecordingCache

    recs = [r for r in recordings if r.kinematics is not None]
    if not recs:
        raise MissingFieldError(
            "no recording has kinematics; KinEMbed needs DoA targets", field="kinematics"
        )
    by_subject: dict[str, dict[str, Recording]] = {}
    for r in recs:
        by_subject.setdefault(r.subject, {})[r.session] = r
    sessions = sorted({r.session for r in recs})
    test = cfg.test_session or sessions[-1]
    train = cfg.train_sessions or tuple(s for s in sessions if s != test)
    if test in train or not train:
        raise InvalidValueError(f"train sessions {train} vs test {test!r}", field="train_sessions")
    wanted = cfg.subjects or tuple(sorted(by_subject))
    steps = [dict(s) for s in cfg.preprocessing]
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
        fs = next(iter(have.values())).fs
        for s in steps:  # keep the bandpass below Nyquist for low-rate devices
            if s.get("name") == "bandpass" and s.get("high", 0) >= 0.5 * fs:
                s["high"] = 0.45 * fs
        pipe = Pipeline.from_config(steps)
        prepped = {s: cache.get(have[s], pipe).to_recording() for s in (*train, test)}
        out.append(SubjectData(subj, prepped, cfg.features))
    return out, tuple(train), test


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


@dataclass(frozen=True)
class MethodSpec:
    """How to build a method and which configurations its CV chooses from."""

    label: str  # as in the paper's tables
    # params, config, context -> a fresh embedder; None for ARIMA, which forecasts instead
    build: Callable[[Mapping[str, Any], ExperimentConfig, RunContext], Embedder] | None
    candidates: Callable[[ExperimentConfig], list[dict[str, Any]]]


def _dims(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    return [{"dim": d} for d in cfg.dims]


METHODS: dict[str, MethodSpec] = {
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
    build = METHODS[method].build
    if build is None:
        raise InvalidValueError(f"{method} has no embedder to fit", field="methods")
    emb = build(params, cfg, context)
    emb.fit(fold.train_std(), seed)
    z_train = [emb.transform(s.x) for s in fold.train]
    dec = fit_decoder(
        [(z, s.y) for z, s in zip(z_train, fold.train, strict=True)], cfg.decoder, seed=seed
    )
    return emb, dec


def fit_eval(
    method: str,
    params: Mapping[str, Any],
    fold: Fold,
    cfg: ExperimentConfig,
    seed: int,
    context: RunContext = RunContext(),
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fit ``method`` on the fold's training sessions -> ``{eval session: (R^2 (J,), pred)}``."""
    if METHODS[method].build is None:  # ARIMA: the DoA series alone, forecast across the session
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
        from emgcore.kinembed import KinEmbed
        from emgcore.nn import TCN

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
    subject: SubjectData, train: Sequence[str], cfg: ExperimentConfig, seed: int
) -> dict:
    """Optuna TPE over the B.4 grid at ``cebra_tune_dim``, objective = mean session-CV R^2."""
    if cfg.cebra_trials <= 0:
        return dict(CEBRA_CANONICAL)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: optuna.Trial) -> float:
        params = {k: trial.suggest_categorical(k, list(v)) for k, v in cfg.cebra_grid.items()}
        return cv_score("cebra", {"dim": cfg.cebra_tune_dim, **params}, subject, train, cfg, seed)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=cfg.cebra_trials)
    return dict(study.best_params)


# -- the run -------------------------------------------------------------------------------------


@dataclass
class ExperimentResult:
    """Scores of every (method, subject, seed) on the held-out session, and what CV chose."""

    config: ExperimentConfig
    doa_names: tuple[str, ...]
    train_sessions: tuple[str, ...]
    test_session: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per method x subject x seed
    selection: list[dict[str, Any]] = field(default_factory=list)  # every CV candidate's score
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
    """The paper's protocol for every configured method and subject."""
    t0 = time.perf_counter()
    subjects, train, test = prepare(recordings, cfg, cache)
    res = ExperimentResult(cfg, subjects[0].doa_names, train, test)
    res.window_s = cfg.features.stride_ms / 1000
    for subj in subjects:
        for method in cfg.methods:
            t1 = time.perf_counter()
            best, best_cv = select_config(method, subj, train, cfg, res)
            final = subj.fold(train, (test,))
            for seed in cfg.seeds:
                r2, pred = fit_eval(method, best, final, cfg, seed)[test]
                res.rows.append(
                    {
                        "method": method,
                        "subject": subj.subject,
                        "seed": seed,
                        **dict(zip(res.doa_names, r2.tolist(), strict=True)),
                        "mean": float(np.mean(r2)),
                        "cv_r2": best_cv,
                        "params": dict(best),
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
                f"{subj.subject:>6} {METHODS[method].label:<9} held-out R2 {np.mean(scores):+.3f} "
                f"(cv {best_cv:+.3f}, {dict(best)}) {time.perf_counter() - t1:.0f} s"
            )
    res.seconds = time.perf_counter() - t0
    return res


def select_config(
    method: str,
    subj: SubjectData,
    train: Sequence[str],
    cfg: ExperimentConfig,
    res: ExperimentResult,
) -> tuple[dict[str, Any], float]:
    """The CV-best configuration of ``method`` for one subject (first seed) and its CV score."""
    spec = METHODS[method]
    seed = cfg.seeds[0]
    if spec.build is None:
        return {}, float("nan")  # ARIMA's orders are chosen by BIC inside its fit
    base = tune_cebra(subj, train, cfg, seed) if method == "cebra" else {}
    best, best_score = None, -np.inf
    for cand in spec.candidates(cfg):
        params = {**base, **cand}
        score = cv_score(method, params, subj, train, cfg, seed)
        res.selection.append({"method": method, "subject": subj.subject, **params, "cv_r2": score})
        if score > best_score:
            best, best_score = params, score
    assert best is not None
    return best, best_score
