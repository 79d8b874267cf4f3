"""KinEMbed's baselines (Section 4, Appendix B): PCA, PLS, AE-Recon, AE-Super, CEBRA, ARIMA.

The representation baselines share one small interface with KinEMbed (:class:`Embedder`): fit on
training sessions ``[(x (N_i, F), y (N_i, J)), ...]`` (standardised features and DoA), then map
features to a ``d``-dimensional embedding that the shared TCN decodes. ARIMA is the exception the
paper makes: it sees only the DoA series and forecasts the held-out session directly.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from emgcore.nn import seeded

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


class CEBRAEmbedder:
    """CEBRA-Behaviour (offset10 model) with the DoA as the continuous auxiliary variable.

    Training sessions are concatenated into one series (CEBRA's multi-session mode would train a
    separate encoder per session, which cannot embed a new session).
    """

    def __init__(self, dim: int, params: dict[str, Any] | None = None):
        self.dim, self.params = dim, dict(CEBRA_CANONICAL if params is None else params)

    def fit(self, train: Segments, seed: int) -> None:
        import cebra

        # cebra draws from torch's and numpy's global generators; it offers no explicit ones
        torch.manual_seed(seed)
        np.random.seed(seed)  # noqa: NPY002
        x, y = _stack(train)
        self.model = cebra.CEBRA(
            model_architecture="offset10-model",
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(self.model.transform(x), dtype=np.float32)


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
