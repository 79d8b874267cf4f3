"""KinEMbed's baselines (Section 4, Appendix B): PCA, PLS, AE-Recon, AE-Super, CEBRA, ARIMA,
and two that are not in the paper but that a user tries first: the raw features through the same
TCN (:class:`IdentityEmbedder`) and ridge regression on lagged features (:class:`LagRidge`).

The representation baselines share one small interface with KinEMbed (:class:`Embedder`): fit on
training sessions ``[(x (N_i, F), y (N_i, J)), ...]`` (standardised features and DoA), then map
features to a ``d``-dimensional embedding that the shared TCN decodes. Every embedding is causal:
row ``t`` depends on windows ``<= t`` only (CEBRA's convolution is shifted to make it so). ARIMA is
the exception the paper makes: it sees only the DoA series and forecasts the held-out session
directly; :class:`LagRidge` maps features to DoA itself, with no TCN.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from emgcore.models.nn import seeded

Segments = Sequence[tuple[np.ndarray, np.ndarray]]


class Embedder(Protocol):
    """What the evaluation needs from a representation method."""

    def fit(self, train: Segments, seed: int) -> None: ...

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``(N, F) -> (N, d)`` float32, rows in time order."""
        ...


def _stack(train: Segments) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])


class PCAEmbedder:
    """Unsupervised linear: the first ``d`` principal components of the features."""

    def __init__(self, dim: int):
        self.dim = dim

    def fit(self, train: Segments, seed: int) -> None:
        from sklearn.decomposition import PCA

        self.model = PCA(n_components=self.dim, random_state=seed).fit(_stack(train)[0])

    def transform(self, x: np.ndarray) -> np.ndarray:
        return self.model.transform(x).astype(np.float32)


class PLSEmbedder:
    """Supervised linear: the ``d`` PLS x-scores that best covary with the DoA."""

    def __init__(self, dim: int):
        self.dim = dim

    def fit(self, train: Segments, seed: int) -> None:
        from sklearn.cross_decomposition import PLSRegression

        x, y = _stack(train)
        self.model = PLSRegression(n_components=self.dim, scale=False).fit(x, y)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return self.model.transform(x).astype(np.float32)


@dataclass(frozen=True)
class AEConfig:
    """Autoencoder baselines (App. B): MLP F -> 128 -> 64 -> d and mirror, Adam 1e-4, MSE."""

    hidden: tuple[int, ...] = (128, 64)
    epochs: int = 600
    lr: float = 1e-4
    batch_size: int = 256


class AutoEncoder(nn.Module):
    def __init__(self, n_in: int, hidden: Sequence[int], dim: int, n_dof: int):
        super().__init__()
        enc: list[nn.Module] = []
        width = n_in
        for h in hidden:
            enc += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.encoder = nn.Sequential(*enc, nn.Linear(width, dim))
        dec: list[nn.Module] = []
        width = dim
        for h in reversed(hidden):
            dec += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.decoder = nn.Sequential(*dec, nn.Linear(width, n_in))
        self.head = nn.Linear(dim, n_dof)  # used by AE-Super only


class AEEmbedder:
    """AE-Recon (``alpha = 0``) and AE-Super: ``L = MSE(x_hat, x) + alpha * MSE(head(z), y)``.

    The paper's input width is 144 (an alternative feature group); ours is the feature width in
    use (256 for 16 channels), with the paper's 128 -> 64 -> d encoder.
    """

    def __init__(self, dim: int, alpha: float = 0.0, cfg: AEConfig | None = None):
        self.dim, self.alpha, self.cfg = dim, alpha, cfg or AEConfig()

    def fit(self, train: Segments, seed: int) -> None:
        with seeded(seed) as gen:
            self._fit(train, gen)

    def _fit(self, train: Segments, gen: torch.Generator) -> None:
        x, y = (torch.as_tensor(a, dtype=torch.float32) for a in _stack(train))
        self.model = AutoEncoder(x.shape[1], self.cfg.hidden, self.dim, y.shape[1])
        opt = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr)
        n, batch = len(x), min(self.cfg.batch_size, len(x))
        for _ in range(self.cfg.epochs):
            order = torch.randperm(n, generator=gen)
            for b in range(0, n, batch):
                idx = order[b : b + batch]
                z = self.model.encoder(x[idx])
                loss = nn.functional.mse_loss(self.model.decoder(z), x[idx])
                if self.alpha:
                    loss = loss + self.alpha * nn.functional.mse_loss(self.model.head(z), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    @torch.no_grad()
    def transform(self, x: np.ndarray) -> np.ndarray:
        return self.model.encoder(torch.as_tensor(x, dtype=torch.float32)).numpy()


# Appendix B.4's Optuna grid for CEBRA and its canonical (mode-across-subjects) values.
CEBRA_GRID: dict[str, tuple[Any, ...]] = {
    "max_iterations": (1000, 3000, 5000, 10000),
    "batch_size": (256, 512, 1024),
    "learning_rate": (1e-4, 5e-4, 1e-3),
    "temperature": (0.5, 1.0, 2.0),
    "time_offsets": (5, 10, 20),
}
CEBRA_CANONICAL: dict[str, Any] = {
    "max_iterations": 1000,
    "batch_size": 512,
    "learning_rate": 1e-3,
    "temperature": 2.0,
    "time_offsets": 10,
}


CEBRA_MODEL = "offset10-model"  # CEBRA's convolutional encoder, receptive field 10 windows


class CEBRAEmbedder:
    """CEBRA-Behaviour (offset10 model) with the DoA as the continuous auxiliary variable, causal.

    Training sessions are concatenated into one series (CEBRA's multi-session mode would train a
    separate encoder per session, which cannot embed a new session).

    Causality (every method must feed the TCN decoder the same causal input): the offset10 model
    is a symmetric convolution; cebra pads 5 windows before and 4 after, so its row ``t`` sees
    windows ``t-5 .. t+4``, ~210 ms of the future at a 52 ms stride. We keep the model (Appendix C
    describes CEBRA's encoder as convolutional; a pointwise ``offset1-model`` would drop what
    makes it CEBRA) and shift it by its look-ahead ``L = offset.right - 1 = 4``: row ``t`` of
    :meth:`transform` is the model on windows ``t-9 .. t`` (the start replicates window 0, as
    cebra's own padding does), and training pairs each receptive field with the DoA at its *last*
    window (labels shifted by ``L`` within each session), so the shift costs no lag. The TCN sees
    windows ``<= t`` either way; CEBRA's extra 10-window context is all past.
    """

    def __init__(self, dim: int, params: dict[str, Any] | None = None):
        self.dim, self.params = dim, dict(CEBRA_CANONICAL if params is None else params)

    @staticmethod
    def lookahead(n_features: int) -> int:
        """Windows of future :data:`CEBRA_MODEL` sees when cebra centres it (offset10: 4)."""
        import cebra.models

        return cebra.models.init(CEBRA_MODEL, n_features, 2, 2).get_offset().right - 1

    def fit(self, train: Segments, seed: int) -> None:
        import cebra

        # cebra draws from torch's and numpy's global generators; it offers no explicit ones
        torch.manual_seed(seed)
        np.random.seed(seed)  # noqa: NPY002
        self.shift = self.lookahead(train[0][0].shape[1])
        x = np.concatenate([xs for xs, _ in train])
        # the DoA at each receptive field's last window (held at a session's end)
        y = np.concatenate([_lead(ys, self.shift) for _, ys in train])
        self.model = cebra.CEBRA(
            model_architecture=CEBRA_MODEL,
            output_dimension=self.dim,
            conditional="time_delta",
            device="cpu",
            verbose=False,
            **self.params,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.fit(x, y)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``(N, F) -> (N, d)``; row ``t`` depends on windows ``t-9 .. t`` only."""
        x = np.asarray(x)
        padded = np.concatenate([np.repeat(x[:1], self.shift, axis=0), x])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            z = self.model.transform(padded)  # row j sees padded[j-5 .. j+4] = x[j-9 .. j]
        return np.asarray(z[: len(x)], dtype=np.float32)


def _lead(y: np.ndarray, k: int) -> np.ndarray:
    """``y`` moved ``k`` rows earlier: row ``t`` holds ``y[t + k]``, the last row repeated."""
    if k == 0:
        return y
    return np.concatenate([y[k:], np.repeat(y[-1:], min(k, len(y)), axis=0)])[: len(y)]


class IdentityEmbedder:
    """No embedding: the standardised handcrafted features themselves go to the TCN (not in the
    paper; the first baseline a user tries, and what every embedding must add to)."""

    def fit(self, train: Segments, seed: int) -> None:
        pass

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)


def lag_stack(x: np.ndarray, lags: int) -> np.ndarray:
    """Causal temporal context: ``(N, F) -> (N, (lags + 1) F)``, row ``t`` = ``[x_t, x_{t-1}, ...,
    x_{t-lags}]``; before the session's first window, window 0 is repeated (never the future)."""
    x = np.asarray(x, dtype=np.float32)
    padded = np.concatenate([np.repeat(x[:1], lags, axis=0), x])
    n = len(x)
    return np.concatenate([padded[lags - k : lags - k + n] for k in range(lags + 1)], axis=1)


class LagRidge:
    """Ridge regression from the current and ``lags`` previous windows' features to the DoA
    (sklearn's ``Ridge``; not in the paper). ``lags`` and ``alpha`` are chosen by the same session
    CV as every other method's hyper-parameters. Lags never cross a session boundary.

    ``fit(train [(x (N_i, F), y (N_i, J))])``; ``predict(x (N, F)) -> (N, J)`` in ``y``'s unit.
    """

    def __init__(self, lags: int, alpha: float):
        if lags < 0 or alpha < 0:
            raise ValueError(f"LagRidge needs lags >= 0 and alpha >= 0, got {lags}, {alpha}")
        self.lags, self.alpha = int(lags), float(alpha)

    def fit(self, train: Segments, seed: int) -> None:
        from sklearn.linear_model import Ridge

        x = np.concatenate([lag_stack(xs, self.lags) for xs, _ in train])
        y = np.concatenate([ys for _, ys in train])
        self.model = Ridge(alpha=self.alpha).fit(x, y)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(lag_stack(x, self.lags)).astype(np.float32)


def arima_forecast(history: np.ndarray, horizon: int) -> tuple[np.ndarray, list[tuple]]:
    """Per-DoA ARIMA (App. B.3): orders by BIC with a stepwise search, no seasonality.

    ``history (M, J)`` is the DoA series the orders and coefficients are fitted on (the final 20%
    of the last training session); the forecast ``(horizon, J)`` continues it across the held-out
    session with no further observations: ARIMA never sees EMG.
    """
    import pmdarima

    preds, orders = [], []
    for j in range(history.shape[1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = pmdarima.auto_arima(
                history[:, j],
                information_criterion="bic",
                stepwise=True,
                seasonal=False,
                suppress_warnings=True,
                error_action="ignore",
            )
            preds.append(np.asarray(model.predict(n_periods=horizon)))
        orders.append(tuple(int(o) for o in model.order))
    return np.stack(preds, axis=1).astype(np.float32), orders
