"""AEMG as a sweep method: pre-training without labels on one cohort (and other sources), gesture
recognition leave-one-subject-out on another (papers/aemg.txt; notes/aemg.md; issue 21).

Cohorts (:func:`split_cohorts`): a data set with marked cohorts (myoarmband's ``pre/...`` and
``eval/...`` subjects) keeps them; otherwise ``data.eval_fraction`` of the subjects, drawn with
``data.split_seed``, is the evaluation cohort. From the rest (the pre-training cohort)
``data.tune_subjects`` labelled subjects are drawn: the search selects on them, never on the
evaluation cohort. ``data.sources`` (simulator presets of other layouts, or dataset paths)
join pre-training, unlabelled.

Sentences (:func:`sentences_of`): each recording band-passed, calibrated onto the common
16-ring at 200 Hz and tokenized (:func:`emgcore.contractions.sentence_set`); with
``data.trials`` a continuous recording's sentences break at its gesture repetitions, so each
repetition is a sentence as each 5-s file of myoarmband is. A sentence's label is its gesture.

A **search trial** (unit ``cv``) pre-trains on the pre-training cohort *without* the tune
subjects (plus the sources), so the tune subjects are as unseen as the evaluation cohort will
be, and reports ``tune_loso_bacc``: the balanced accuracy of a linear probe on the frozen
encoder's pooled embeddings, leave one tune subject out, mean over them (higher is better).

The **final run** (one unit per seed) pre-trains on the whole pre-training cohort and the
sources, then scores the evaluation cohort: ``eval_loso_bacc`` (the probe, zero-shot LOSO;
mean over subjects, then over seeds), the few-shot probe on 5/20/40/80% of the held-out
person's own sentences (``eval_few_shot_<pct>``), and with ``finetune_epochs > 0`` the
encoder fine-tuned end to end on the other people (``eval_finetuned_loso_bacc``) and further
on the person's share (``eval_finetuned_few_shot_<pct>``). It logs the confusion matrix, the
codebook's usage per epoch and the few-shot curve, and registers the first seed's encoder as
``aemg`` (a sentence encoder: packed token sentences in, pooled embeddings out; its
``inference.pt`` takes raw EMG of any layout). The champion moves only on a better tune score,
the champion re-scored on the same tune subjects from their raw recordings with its own
tokenizer; the trivial baseline is chance (balanced accuracy of one class for all).

Choices: the probe (not fine-tuning) is the headline and the selection metric: it scores what
pre-training learned, with nothing fitted per fold but a linear layer (the README's real-data
figures: fine-tuning 17 people's sentences for 5 epochs scored below it). Fine-tuning runs on
the CPU after pre-training, wherever pre-training ran.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from emgcore.config import build
from emgcore.contractions import SentenceSet, TokenizerConfig, sentence_set
from emgcore.errors import InvalidValueError
from emgcore.eval.probe import class_scores, linear_probe
from emgcore.methods.base import (
    INFERENCE_FILE,
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
from emgcore.models.aemg import (
    NST,
    AEMGConfig,
    MaskedTokenModel,
    PretrainConfig,
    SentenceBatches,
    as_batch,
    fit_classifier,
    predict,
    pretrain,
)
from emgcore.preprocessing import BandPass
from emgcore.recording import ChannelLayout, Recording
from emgcore.topology import COMMON_CHANNELS, COMMON_FS
from emgcore.training import batched

FEW_SHOT = (0.05, 0.2, 0.4, 0.8)  # the paper's FT-5/20/40/80%
SOURCE_SEED = 104729  # simulated sources' people: none of a seed-0 simulated cohort's


@dataclass(frozen=True)
class CohortConfig:
    """Where the pre-training, tune and evaluation subjects come from, and how recordings
    become labelled sentences (module doc)."""

    label: str = "gesture"
    rest: int = 0  # the rest class of ``label``
    trials: bool = True  # sentences break at gesture repetitions (continuous recordings)
    band_hz: tuple[float, float] = (20.0, 450.0)  # clipped below Nyquist at low rates
    eval_cohort: str = "eval/"  # subjects starting with it are the evaluation cohort
    eval_fraction: float = 0.4  # without such subjects: this share, drawn
    tune_subjects: int = 6  # drawn from the pre-training cohort, labelled
    split_seed: int = 0
    sources: tuple[str, ...] = ()  # unlabelled extra pre-training: simulator presets or paths
    source_duration_s: float = 60.0  # per simulated recording
    source_subjects: int = 2  # simulated people per source preset

    def __post_init__(self) -> None:
        if not 0.0 < self.eval_fraction < 1.0:
            raise InvalidValueError(
                f"eval_fraction must be in (0, 1), got {self.eval_fraction}",
                field="data.eval_fraction",
            )
        if self.tune_subjects < 2:
            raise InvalidValueError(
                f"tune_subjects must be >= 2 (one held out, one to fit), got {self.tune_subjects}",
                field="data.tune_subjects",
            )
        if self.source_subjects < 1 or not self.source_duration_s > 0:
            raise InvalidValueError(
                "source_subjects must be >= 1 and source_duration_s > 0",
                field="data.source_subjects",
            )


@dataclass(frozen=True)
class AEMGRunConfig:
    """One AEMG experiment: cohorts, tokenizer, networks, pre-training and the downstream
    protocol. ``model``'s ``sentence``, ``channels`` and ``token_len`` are set from the
    tokenizer and the common topology (:meth:`model_config`)."""

    data: CohortConfig = field(default_factory=CohortConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: AEMGConfig = field(default_factory=AEMGConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune_epochs: int = 5  # 0: no fine-tuned scores (only the probe)
    few_shot: tuple[float, ...] = FEW_SHOT
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise InvalidValueError("seeds: needs at least one", field="seeds")
        if self.finetune_epochs < 0:
            raise InvalidValueError("finetune_epochs must be >= 0", field="finetune_epochs")
        if any(not 0.0 < f < 1.0 for f in self.few_shot):
            raise InvalidValueError(
                f"few_shot fractions must be in (0, 1), got {self.few_shot}", field="few_shot"
            )

    def model_config(self) -> AEMGConfig:
        tok = self.tokenizer
        return replace(
            self.model,
            sentence=tok.sentence_tokens,
            channels=COMMON_CHANNELS,
            token_len=tok.samples(tok.token_s, COMMON_FS),
        )


# -- cohorts and sentences ------------------------------------------------------------------------


@dataclass(frozen=True)
class Cohorts:
    """The recordings by role: ``pretrain`` (the pre-training cohort, tune subjects included),
    ``evaluation``, and the ``tune`` subjects' names (drawn from the pre-training cohort)."""

    pretrain: tuple[Recording, ...]
    evaluation: tuple[Recording, ...]
    tune: tuple[str, ...]

    def of(self, subjects: Sequence[str]) -> list[Recording]:
        want = set(subjects)
        return [r for r in (*self.pretrain, *self.evaluation) if r.subject in want]

    @property
    def evaluation_subjects(self) -> tuple[str, ...]:
        return tuple(sorted({r.subject for r in self.evaluation}))


def split_cohorts(recordings: Sequence[Recording], cfg: CohortConfig) -> Cohorts:
    """The cohorts of the module doc. Raises :class:`InvalidValueError` naming the field when
    the data cannot give two labelled evaluation subjects and two labelled tune subjects."""
    if not recordings:
        raise InvalidValueError("no recordings", field="data")
    subjects = sorted({r.subject for r in recordings})
    labelled = {r.subject for r in recordings if cfg.label in r.labels}
    rng = np.random.default_rng(cfg.split_seed)
    marked = [s for s in subjects if cfg.eval_cohort and s.startswith(cfg.eval_cohort)]
    if marked:
        evaluation = marked
    else:
        n_eval = max(2, round(cfg.eval_fraction * len(subjects)))
        evaluation = sorted(rng.permutation(subjects)[:n_eval].tolist())
    rest = [s for s in subjects if s not in set(evaluation)]
    candidates = [s for s in rest if s in labelled]
    tune = sorted(rng.permutation(candidates)[: cfg.tune_subjects].tolist()) if candidates else []
    n_lab = len([s for s in evaluation if s in labelled])
    if n_lab < 2 or len(tune) < 2:
        raise InvalidValueError(
            f"{len(subjects)} subjects give {n_lab} labelled evaluation subject(s) and "
            f"{len(tune)} tune subject(s) with {cfg.label!r} labels; leave-one-subject-out needs "
            "two of each (more subjects: e.g. sweep.py --sim-subjects 12)",
            field="data.tune_subjects",
        )
    ev = set(evaluation)
    return Cohorts(
        tuple(r for r in recordings if r.subject not in ev),
        tuple(r for r in recordings if r.subject in ev and r.subject in labelled),
        tuple(tune),
    )


def check_data(cfg: AEMGRunConfig, recordings: Sequence[Recording]) -> None:
    """``Method.check_data``: the cohorts can be drawn (:func:`split_cohorts`), a search trial
    has someone to pre-train on besides the tune subjects, and every source exists."""
    from emgcore.data import PRESETS

    d = cfg.data
    cohorts = split_cohorts(recordings, d)
    if not d.sources and not {r.subject for r in cohorts.pretrain} - set(cohorts.tune):
        raise InvalidValueError(
            f"nothing to pre-train on: the pre-training cohort is the {len(cohorts.tune)} tune "
            "subjects and there are no data.sources (fewer tune subjects, or more people)",
            field="data.tune_subjects",
        )
    for name in d.sources:
        if name not in PRESETS and not Path(name).exists():
            raise InvalidValueError(
                f"{name!r} is neither a simulator preset ({', '.join(PRESETS)}) nor a path",
                field="data.sources",
            )


def sentences_of(
    recordings: Sequence[Recording], cfg: AEMGRunConfig, labelled: bool
) -> SentenceSet:
    """``recordings`` band-passed (``data.band_hz``, clipped to 0.95 Nyquist), calibrated and
    tokenized into sentences (:func:`~emgcore.contractions.sentence_set`); with ``labelled``
    each carries its gesture (``data.label``) and, with ``data.trials``, stays inside one
    repetition."""
    d = cfg.data
    band = BandPass(*d.band_hz)
    recs = [band.apply(r) for r in recordings]
    label = d.label if labelled else None
    return sentence_set(recs, cfg.tokenizer, label, trials=labelled and d.trials, rest=d.rest)


def load_sources(cfg: CohortConfig) -> list[Recording]:
    """The extra pre-training recordings: each of ``cfg.sources`` a simulator preset
    (``source_subjects`` people, ``source_duration_s`` per recording) or a dataset path."""
    from emgcore.data import PRESETS, open_dataset, preset, simulate

    out: list[Recording] = []
    for name in cfg.sources:
        if name in PRESETS:
            # another simulator seed: the simulator draws a person's anatomy from (seed,
            # subject index), so seed 0's s01 would be the cohort's s01 on another device
            sim = preset(name, duration_s=cfg.source_duration_s, seed=SOURCE_SEED)
            out += simulate(sim, list(range(cfg.source_subjects)))
        else:
            out += open_dataset(name)
    return out


def n_classes(recordings: Sequence[Recording], label: str, *sets: SentenceSet) -> int:
    """Classes of ``label``: its names' count, or one past the largest label seen."""
    names = max((len(r.label_names.get(label, ())) for r in recordings), default=0)
    return max(names, *(int(s.label.max()) + 1 for s in sets if len(s)))


def chance(sentences: SentenceSet) -> float:
    """Balanced accuracy of predicting one class for every sentence: 1 / classes present."""
    return 1.0 / len(np.unique(sentences.label))


# -- leave-one-subject-out scoring ----------------------------------------------------------------


def embed(encoder: NST, sentences: SentenceSet) -> np.ndarray:
    """``(N, dim)`` pooled embeddings of every sentence, in batches, on the CPU."""
    encoder = encoder.cpu().eval()
    return batched(encoder.pool, SentenceBatches(sentences)).numpy()


def few_shot_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``(N,)`` bool: ``fraction`` of one person's sentences of each class (at least one, and
    never the class's last: every class that has two keeps one to score), drawn at random."""
    seen = np.zeros(len(y), bool)
    for c in np.unique(y):
        ix = np.flatnonzero(y == c)
        k = max(1, round(fraction * len(ix)))
        seen[rng.choice(ix, min(k, len(ix) - 1), replace=False)] = True
    return seen


Classifier = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def loso_predict(
    z: np.ndarray,
    y: np.ndarray,
    subject: np.ndarray,
    fraction: float = 0.0,
    seed: int = 0,
    classifier: Classifier = linear_probe,
) -> np.ndarray:
    """``(N,)`` each sentence's predicted class when its person is held out: by a classifier
    (default the linear probe, :func:`~emgcore.eval.probe.linear_probe`) trained on the other
    people (zero-shot), or, when ``fraction > 0``, on that share of the person's own sentences
    (:func:`few_shot_split`; few-shot), ``-1`` for those it saw.
    ``classifier(train_z, train_y, test_z) -> predictions``."""
    rng = np.random.default_rng(seed)
    pred = np.full(len(y), -1, np.int64)
    for person in np.unique(subject):
        target = np.flatnonzero(subject == person)
        seen = few_shot_split(y[target], fraction, rng) if fraction > 0 else None
        train = target[seen] if seen is not None else np.flatnonzero(subject != person)
        test = target[~seen] if seen is not None else target
        pred[test] = classifier(z[train], y[train], z[test])
    return pred


def per_subject(
    y: np.ndarray, pred: np.ndarray, subject: np.ndarray, n_classes: int
) -> dict[str, float]:
    """Balanced accuracy per person of the scored (``pred >= 0``) sentences."""
    out = {}
    for person in np.unique(subject):
        m = (subject == person) & (pred >= 0)
        out[str(person)] = class_scores(y[m], pred[m], n_classes).balanced_accuracy
    return out


def loso(
    z: np.ndarray,
    y: np.ndarray,
    subject: np.ndarray,
    n_classes: int,
    fraction: float = 0.0,
    seed: int = 0,
    classifier: Classifier = linear_probe,
) -> dict[str, float]:
    """Balanced accuracy per held-out person (:func:`loso_predict`, :func:`per_subject`)."""
    pred = loso_predict(z, y, subject, fraction, seed, classifier)
    return per_subject(y, pred, subject, n_classes)


def finetuned_loso(
    encoder: NST | None,
    cfg: AEMGConfig,
    sentences: SentenceSet,
    n_classes: int,
    fractions: Sequence[float] = (),
    seed: int = 0,
    epochs: int = 5,
) -> dict[str, dict[str, float]]:
    """Per held-out person, balanced accuracy of ``encoder`` fine-tuned end to end with a
    linear head on the other people (``"zero_shot"``; ``encoder=None``: the same network from
    random weights, a supervised baseline), then of that classifier fine-tuned further on each
    of ``fractions`` of the person's own sentences (``"few_shot_<percent>"``, scored on the
    rest; :func:`few_shot_split`). :func:`~emgcore.models.aemg.fit_classifier` both times,
    ``epochs`` each."""
    out: dict[str, dict[str, float]] = {}
    rng = np.random.default_rng(seed)
    for person in np.unique(sentences.subject):
        test = sentences.subject == person
        torch.manual_seed(seed)
        start = encoder if encoder is not None else NST(cfg)
        model = fit_classifier(start, sentences.take(~test), n_classes, epochs, seed=seed)
        target = sentences.take(test)
        pred = predict(model, target)
        score = class_scores(target.label, pred, n_classes).balanced_accuracy
        out.setdefault("zero_shot", {})[str(person)] = score
        for f in fractions:
            seen = few_shot_split(target.label, f, rng)
            adapted = fit_classifier(model, target.take(seen), n_classes, epochs, seed=seed)
            pred = predict(adapted, target.take(~seen))
            score = class_scores(target.label[~seen], pred, n_classes).balanced_accuracy
            out.setdefault(f"few_shot_{pct(f)}", {})[str(person)] = score
    return out


def pct(fraction: float) -> int:
    return round(fraction * 100)


def mean(scores: Mapping[str, float]) -> float:
    return float(np.mean(list(scores.values())))


def std(scores: Mapping[str, float]) -> float:
    return float(np.std(list(scores.values())))


# -- the registered model -------------------------------------------------------------------------


def pack(batch: Mapping[str, Tensor]) -> Tensor:
    """A batch of sentences as one tensor ``(B, S, C, L + 2 + P)``: each token's samples, then
    its ``length`` and ``phase`` (repeated over channels), then the channels' position features
    (repeated over tokens): the one input a logged model's ``forward`` takes."""
    values, length = batch["values"], batch["length"]
    b, s, c, _ = values.shape
    extra = torch.stack([length, batch["phase"]], -1).to(values.dtype)  # (B, S, 2)
    position = batch["position"].to(values.dtype)  # (B, C, P)
    return torch.cat(
        [
            values,
            extra[:, :, None, :].expand(b, s, c, 2),
            position[:, None].expand(b, s, c, position.shape[-1]),
        ],
        -1,
    )


class PackedSentenceEncoder(nn.Module):
    """The registered graph: ``forward(x (B, S, C, L + 2 + P))`` (:func:`pack`) -> ``(B,
    dim)`` the NST's pooled embedding of each sentence."""

    def __init__(self, encoder: NST):
        super().__init__()
        self.encoder = encoder.eval()

    def forward(self, x: Tensor) -> Tensor:
        n = self.encoder.cfg.token_len
        batch = {
            "values": x[..., :n],
            "length": x[:, :, 0, n].long(),
            "phase": x[:, :, 0, n + 1].long(),
            "position": x[:, 0, :, n + 2 :],
        }
        return self.encoder.pool(batch)


class SentenceEncoder:
    """A registered AEMG encoder from raw EMG to sentence embeddings: what
    :func:`emgcore.methods.load_inference` returns for an ``aemg`` version.

    ``predict(emg (T, C), fs, layout=None) -> (N, dim)``: band-pass, calibration onto the common
    topology, contraction tokens, sentences of ``tokenizer.sentence_tokens`` and the NST's
    pooled embedding of each (a probe or a head on top recognises gestures). ``layout`` (a
    :class:`~emgcore.recording.ChannelLayout`) takes another device's electrodes at any rate;
    without it ``emg`` must be the evaluation data's (``n_channels`` at ``fs``).
    ``sentence_end(emg, fs, layout=None) -> (N,)``: the sample after each sentence's last
    token. Sentences end where contractions end, so ``window_end`` (a function of the length
    alone) raises. ``sentences(recordings, labelled)`` is the trial's own path
    (:func:`sentences_of`), which the champion rule re-scores with.
    """

    method = "aemg"

    def __init__(self, config: AEMGRunConfig, encoder: NST, fs: float, layout: ChannelLayout):
        self.config, self.encoder = config, encoder.eval()
        self.fs, self.layout = float(fs), layout

    @property
    def n_channels(self) -> int:
        return self.layout.n_channels

    def sentences(self, recordings: Sequence[Recording], labelled: bool = False) -> SentenceSet:
        return sentences_of(recordings, self.config, labelled)

    def embed(self, sentences: SentenceSet) -> np.ndarray:
        return embed(self.encoder, sentences)

    def _sentences(self, emg: Any, fs: float, layout: ChannelLayout | None) -> SentenceSet:
        if layout is None:
            x, layout = check_input(emg, fs, self), self.layout
        else:
            x = np.asarray(emg, np.float32)
        rec = Recording(x, float(fs), layout, subject="user", session="-", source="predict")
        try:
            return self.sentences([rec])
        except InvalidValueError as e:  # the tokenizer's words name its settings, not the input
            if e.field not in ("tokenizer.threshold_k", "tokenizer.window_s"):
                raise
            raise InvalidValueError(
                f"no contraction to embed in {rec.duration_s:g} s of EMG: it holds no activity "
                f"above its own quietest {self.config.tokenizer.calibration_s:g} s (flat, or "
                "too short to hold both rest and a contraction)",
                field="emg",
            ) from e

    def predict(self, emg: Any, fs: float, layout: ChannelLayout | None = None) -> np.ndarray:
        return self.embed(self._sentences(emg, fs, layout))

    def sentence_end(self, emg: Any, fs: float, layout: ChannelLayout | None = None) -> np.ndarray:
        return self._sentences(emg, fs, layout).end

    def window_end(self, n_samples: int, fs: float) -> np.ndarray:
        raise InvalidValueError(
            "AEMG's sentences end where contractions end, not at fixed windows: "
            "sentence_end(emg, fs) gives them",
            field="window_end",
        )

    def save(self, folder: Path) -> list[Path]:
        spec = {
            "config": json.loads(json.dumps(asdict(self.config), default=list)),
            "fs": self.fs,
            "layout": self.layout.to_dict(),
        }
        payload = {"spec": json.dumps(spec), "state_dict": self.encoder.state_dict()}
        return [save_inference(self.method, payload, folder)]

    @classmethod
    def load(cls, payload: Mapping[str, Any]) -> SentenceEncoder:
        spec = json.loads(payload["spec"])
        cfg = build(AEMGRunConfig, spec["config"], source=INFERENCE_FILE)
        encoder = NST(cfg.model_config())
        encoder.load_state_dict(payload["state_dict"])
        return cls(cfg, encoder, spec["fs"], ChannelLayout.from_dict(spec["layout"]))


def load_encoder(folder: Path) -> SentenceEncoder:
    """A version's :class:`SentenceEncoder` from its extra files."""
    from emgcore.methods import load_inference

    return load_inference(folder)  # type: ignore[return-value]


def loso_score(encoder: SentenceEncoder, recordings: Sequence[Recording], n_cls: int) -> float:
    """Zero-shot LOSO probe balanced accuracy (mean over people) of ``encoder`` on the raw
    ``recordings`` through its own tokenizer: how a champion is scored again."""
    s = encoder.sentences(recordings, labelled=True)
    return mean(loso(encoder.embed(s), s.label, s.subject, n_cls))


# -- the trial ------------------------------------------------------------------------------------


class AEMGTrial(Trial):
    def __init__(self, cfg: AEMGRunConfig, recordings: Sequence[Any], setup: TrialSetup):
        self.config, self.setup = cfg, setup
        d = cfg.data
        self.cohorts = split_cohorts(recordings, d)
        tune = set(self.cohorts.tune)
        self.tune_recordings = self.cohorts.of(self.cohorts.tune)
        self.tune = sentences_of(self.tune_recordings, cfg, labelled=True)
        final = setup.mode != "cv"
        pre = [r for r in self.cohorts.pretrain if final or r.subject not in tune]
        parts = [sentences_of(pre, cfg, labelled=False)] if pre else []
        if d.sources:
            parts.append(sentences_of(load_sources(d), cfg, labelled=False))
        if not parts:
            raise InvalidValueError(
                "nothing to pre-train on: the pre-training cohort is all tune subjects and "
                "there are no data.sources",
                field="data.tune_subjects",
            )
        self.unlabelled = SentenceSet.concat(parts)
        self.evaluation = sentences_of(self.cohorts.evaluation, cfg, labelled=True)
        first = self.cohorts.evaluation[0]
        self.fs, self.layout = first.fs, first.layout
        self.classes = n_classes(recordings, d.label, self.tune, self.evaluation)
        self.class_names = next(
            (tuple(r.label_names[d.label]) for r in recordings if d.label in r.label_names),
            tuple(str(c) for c in range(self.classes)),
        )
        self.units = ["cv"] if not final else [f"seed{s}" for s in cfg.seeds]
        self.first: MaskedTokenModel | None = None  # final: the first seed's, registered
        self.tags = {
            "aemg.sentences": f"{len(self.unlabelled)} pre-training, {len(self.tune)} tune, "
            f"{len(self.evaluation)} evaluation",
            "aemg.tune_subjects": ",".join(self.cohorts.tune),
        }

    def _seed(self, unit: str) -> int:
        return self.config.seeds[0] if unit == "cv" else int(unit.removeprefix("seed"))

    def run(self, unit: str, hooks: Hooks) -> UnitResult:
        cfg, seed = self.config, self._seed(unit)
        _, mtm, history = pretrain(
            self.unlabelled,
            cfg.model_config(),
            replace(cfg.pretrain, seed=seed),
            hooks={"vq": hooks("vq"), "mtm": hooks("mtm")},
            parallel=self.setup.parallel,
            device=self.setup.device,
        )
        mtm = mtm.cpu().eval()
        z_tune = embed(mtm.encoder, self.tune)
        tune = loso(z_tune, self.tune.label, self.tune.subject, self.classes)
        last = {s: next(h for h in reversed(history) if h["stage"] == s) for s in ("vq", "mtm")}
        value: dict[str, Any] = {
            "tune_loso_bacc": mean(tune),
            "tune_loso_bacc_std": std(tune),
            "masked_accuracy": last["mtm"].get("masked_accuracy", float("nan")),
            "perplexity": last["vq"]["perplexity"],
            "dead_codes": last["vq"]["dead_codes"],
        }
        if unit == "cv":
            return UnitResult(value)
        value |= self._evaluate(mtm.encoder, seed) | {"history": history}
        keep = seed == cfg.seeds[0]
        if keep:
            self.first = mtm
        return UnitResult(value, state={"mtm": mtm.state_dict()} if keep else None)

    def _evaluate(self, encoder: NST, seed: int) -> dict[str, Any]:
        """The evaluation cohort's scores (module doc)."""
        cfg, ev, k = self.config, self.evaluation, self.classes
        z = embed(encoder, ev)
        pred = loso_predict(z, ev.label, ev.subject)
        people = per_subject(ev.label, pred, ev.subject, k)
        out: dict[str, Any] = {
            "eval_loso_bacc": mean(people),
            "eval_loso_bacc_subjects_std": std(people),
            "per_subject": people,
            "confusion": class_scores(ev.label, pred, k).confusion.tolist(),
        }
        for f in cfg.few_shot:
            out[f"eval_few_shot_{pct(f)}"] = mean(loso(z, ev.label, ev.subject, k, f, seed))
        if cfg.finetune_epochs:
            tuned = finetuned_loso(
                encoder, cfg.model_config(), ev, k, cfg.few_shot, seed, cfg.finetune_epochs
            )
            for key, scores in tuned.items():
                name = "loso_bacc" if key == "zero_shot" else key
                out[f"eval_finetuned_{name}"] = mean(scores)
        return out

    def restore(self, unit: str, state: Mapping[str, Any]) -> None:
        if "mtm" in state:
            self.first = MaskedTokenModel(self.config.model_config())
            self.first.load_state_dict(state["mtm"])
            self.first.eval()

    def _finished(self, values: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        return [values[u] for u in self.units if u in values]

    def seeds(self, values: Mapping[str, Any]) -> dict[str, list[float]]:
        done = self._finished(values) if self.setup.mode != "cv" else []
        return {k: [v[k] for v in done] for k in ("eval_loso_bacc", "tune_loso_bacc")}

    def summary(self, values: Mapping[str, Any]) -> dict[str, Any]:
        done = self._finished(values)
        if not done:
            return {}
        keys = [k for k, v in done[0].items() if isinstance(v, float)]
        out: dict[str, Any] = {k: float(np.mean([v[k] for v in done])) for k in keys}
        if self.setup.mode != "cv":  # the spread over seeds of the final metric
            scores = [v["eval_loso_bacc"] for v in done]
            out["eval_loso_bacc_std"] = float(np.std(scores))
            out["scores"] = ",".join(f"{s:.4f}" for s in scores)
        return out

    def report(self, values: Mapping[str, Any], folder: Path) -> Sequence[Path]:
        return aemg_report(self._finished(values), self.class_names, self.config, folder)

    def registration(self, values: Mapping[str, Any]) -> Registration:
        """The first seed's encoder. ``champion`` moves only on a better tune score (the
        champion re-scored on the same tune subjects' raw recordings), never to one no better
        than chance."""
        assert self.first is not None
        first = values[self.units[0]]
        where = f"of {self.setup.data} ({self.setup.fingerprint})"
        tune_names = ",".join(self.cohorts.tune)
        ev_names = ",".join(self.cohorts.evaluation_subjects)
        encoder = SentenceEncoder(self.config, self.first.encoder, self.fs, self.layout)
        example = pack(as_batch(self.evaluation.take(np.arange(min(8, len(self.evaluation))))))
        tune_recs, ev_recs, k = self.tune_recordings, list(self.cohorts.evaluation), self.classes
        export = Export(
            "",
            PackedSentenceEncoder(self.first.encoder),
            example.numpy(),
            encoder.save,
            rescore=lambda champ: loso_score(champ, tune_recs, k),
            rescored_on="the same tune subjects",
            load=load_encoder,
            retest=lambda folder: loso_score(load_encoder(folder), ev_recs, k),
        )
        return Registration(
            Score(
                "tune_loso_bacc",
                first["tune_loso_bacc"],
                # the final encoder saw these people's EMG (not labels) in pre-training, as
                # every version's did: versions compare like with like
                f"tune subjects {tune_names} (unlabelled in pre-training) {where}",
                chance(self.tune),
            ),
            Score(
                "eval_loso_bacc",
                first["eval_loso_bacc"],
                f"evaluation cohort {ev_names} {where}",
                chance(self.evaluation),
            ),
            [export],
            {"tune_subjects": tune_names, "classes": ",".join(self.class_names)},
        )


def aemg_report(
    seeds: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    cfg: AEMGRunConfig,
    folder: str | Path,
) -> list[Path]:
    """A final run's artifacts from its per-seed values: ``confusion.csv``/``.png`` (the first
    seed's zero-shot LOSO probe, evaluation cohort, rows true), ``codebook_usage.csv``/``.png``
    (the first seed's per-epoch pre-training records: loss, perplexity, dead codes, masked
    accuracy) and ``few_shot.csv``/``.png`` (balanced accuracy against the share of the held-out
    person's sentences, probe and fine-tuned, mean +- std over seeds; 0 is zero-shot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    first = seeds[0]
    cm = np.asarray(first["confusion"])
    names = list(class_names)[: len(cm)] + [str(i) for i in range(len(class_names), len(cm))]
    rows = ["true\\predicted," + ",".join(names)]
    rows += [f"{n}," + ",".join(str(int(v)) for v in row) for n, row in zip(names, cm, strict=True)]
    (folder / "confusion.csv").write_text("\n".join(rows) + "\n")
    present = cm.sum(1) > 0
    fig, ax = plt.subplots(figsize=(5, 4.5))
    norm = cm[present][:, present] / cm[present].sum(1, keepdims=True)
    ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    kept = [n for n, p in zip(names, present, strict=True) if p]
    ax.set_xticks(range(len(kept)), kept, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(kept)), kept, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"zero-shot LOSO probe, bal. acc. {first['eval_loso_bacc']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "confusion.png", dpi=100)
    plt.close(fig)

    hist = first["history"]
    keys = ["loss", "reconstruction", "commitment", "masked_accuracy", "perplexity", "dead_codes"]
    lines = ["stage,epoch," + ",".join(keys)]
    lines += [
        f"{h['stage']},{h['epoch']}," + ",".join(f"{h.get(k, float('nan')):.6g}" for k in keys)
        for h in hist
    ]
    (folder / "codebook_usage.csv").write_text("\n".join(lines) + "\n")
    vq = [h for h in hist if h["stage"] == "vq"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    axes[0].plot([h["epoch"] for h in vq], [h["perplexity"] for h in vq])
    axes[0].set_title(f"perplexity of {cfg.model.codebook_size} codes", fontsize=9)
    axes[1].plot([h["epoch"] for h in vq], [h["dead_codes"] for h in vq])
    axes[1].set_title("unused codes", fontsize=9)
    for ax in axes:
        ax.set_xlabel("VQ epoch")
    fig.tight_layout()
    fig.savefig(folder / "codebook_usage.png", dpi=100)
    plt.close(fig)

    curve = ["fraction,probe_mean,probe_std,finetuned_mean,finetuned_std"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    points: dict[str, list[tuple[float, float, float]]] = {"probe": [], "finetuned": []}
    for f in (0.0, *cfg.few_shot):
        row = [f"{f:g}"]
        for kind, zero, few in (
            ("probe", "eval_loso_bacc", "eval_few_shot_{}"),
            ("finetuned", "eval_finetuned_loso_bacc", "eval_finetuned_few_shot_{}"),
        ):
            key = zero if f == 0 else few.format(pct(f))
            vals = [s[key] for s in seeds if key in s]
            m, sd = (float(np.mean(vals)), float(np.std(vals))) if vals else (np.nan, np.nan)
            row += [f"{m:.4f}", f"{sd:.4f}"]
            if vals:
                points[kind].append((f, m, sd))
        curve.append(",".join(row))
    for kind, pts in points.items():
        if pts:
            x, m, sd = (np.array(v) for v in zip(*pts, strict=True))
            ax.errorbar(100 * x, m, sd, marker="o", capsize=3, label=kind)
    ax.set_xlabel("% of the held-out person's sentences")
    ax.set_ylabel("balanced accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "few_shot.png", dpi=100)
    plt.close(fig)
    (folder / "few_shot.csv").write_text("\n".join(curve) + "\n")
    return [folder / n for n in (
        "confusion.csv", "confusion.png", "codebook_usage.csv", "codebook_usage.png",
        "few_shot.csv", "few_shot.png",
    )]  # fmt: skip


METHOD = Method(  # smoke: 6 simulated people (2 evaluation, 2 tune, 2 pre-training), 2 x 20 s
    name="aemg",
    config=AEMGRunConfig,
    preset="aemg-sim",
    smoke_preset="aemg-smoke",
    data="myo-cohorts",
    smoke_sim={"duration_s": 20.0, "n_subjects": 6},
    final_metric="eval_loso_bacc",
    final_label="evaluation LOSO balanced accuracy",
    trial=AEMGTrial,
    inference=SentenceEncoder.load,
    seed_metrics={"eval_loso_bacc": "max", "tune_loso_bacc": "max"},
    needs_kinematics=False,
    check_data=check_data,
)
