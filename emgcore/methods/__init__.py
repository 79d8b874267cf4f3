"""The methods a sweep can run, by name: the one registry everything else reads.

``python orchestration/sweep.py <name>`` offers exactly these, ``search_spaces/<name>.yaml``
addresses ``METHODS[name].config``, and the Train workers run ``METHODS[name].trial``. Adding a
method is a module here ending in a :class:`~emgcore.methods.base.Method`, a line below, a
bundled preset and a search space (README, "Adding a method"); nothing in ``orchestration/``
names a method.
"""

from __future__ import annotations

from pathlib import Path

from emgcore.errors import InvalidValueError, MissingFieldError
from emgcore.methods import aemg, jepa, kinembed, posealign
from emgcore.methods.base import INFERENCE_FILE, NO_INFERENCE_FILE, Inference, Method

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        kinembed.METHOD,
        posealign.MAE_METHOD,
        posealign.CPEP_METHOD,
        posealign.EMBRIDGE_METHOD,
        jepa.METHOD,
        aemg.METHOD,
    )
}


def load_inference(path: str | Path) -> Inference:
    """A registered version's whole inference path, ready for raw EMG (README, "Using a
    champion"): ``path`` is the version's folder as ``mlflow.artifacts.download_artifacts(
    "models:/<name>@champion")`` returns it, its ``extra_files`` folder, or the
    ``inference.pt`` file itself. ``.predict(emg (T, C), fs)`` then gives the method's output.

    Raises :class:`~emgcore.errors.MissingFieldError` naming the folder when it holds no
    inference file (a version registered before the pipelines were exported: run the sweep
    again), :class:`~emgcore.errors.InvalidValueError` for a method this checkout lacks.
    """
    import torch

    p = Path(path)
    for candidate in (p, p / INFERENCE_FILE, p / "extra_files" / INFERENCE_FILE):
        if candidate.is_file():
            break
    else:
        raise MissingFieldError(_why_no_inference(p), source=str(p), field=INFERENCE_FILE)
    payload = torch.load(candidate, map_location="cpu", weights_only=True)
    method = METHODS.get(payload.get("method", ""))
    if method is None or method.inference is None:
        raise InvalidValueError(
            f"method {payload.get('method')!r} has no inference here; known: "
            f"{sorted(n for n, m in METHODS.items() if m.inference)}",
            source=str(candidate),
            field="method",
        )
    return method.inference(payload)


def _why_no_inference(folder: Path) -> str:
    """Why ``folder`` holds no inference file: what a weights-only export wrote
    (:func:`~emgcore.methods.base.save_no_inference`), else a version registered before
    inference files existed."""
    for note in (folder / NO_INFERENCE_FILE, folder / "extra_files" / NO_INFERENCE_FILE):
        if note.is_file():
            return f"no {INFERENCE_FILE} here: {note.read_text().strip()}"
    return (
        f"no {INFERENCE_FILE} here: this version was registered without its inference "
        "pipeline (before it was exported); register it again with a new sweep"
    )


__all__ = ["METHODS", "Method", "load_inference"]
