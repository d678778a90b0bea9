"""A trained run as an MLflow pyfunc model: ``mlflow.pyfunc.load_model(uri).predict(frames)``.

The model is logged "from code" (``pyfunc_entry.py``), so loading it unpickles nothing: the
checkpoint travels as an artifact and is read by the weights-only loader, and ``predict`` runs
the same training-matched preprocessing and tiled inference as ``temseg-segment``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

try:  # the base class only matters when MLflow loads the model; keep this module importable
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is a core dependency
    PythonModel = object  # type: ignore[misc,assignment]

#: artifact key (and file name inside the model's ``artifacts/``) of the checkpoint
CHECKPOINT_KEY = "best.ckpt"
#: predict() parameters with their defaults (also the signature's parameter schema)
PARAMS: dict[str, Any] = {"particles": "dark", "pixel_size_nm": 0.0, "threshold": "otsu",
                          "output": "mask"}


def _threshold(value: Any) -> str | float:
    text = str(value).strip().lower()
    if text == "otsu":
        return "otsu"
    t = float(text)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"threshold must be 'otsu' or in [0, 1], got {value!r}")
    return t


class SegmentationModel(PythonModel):
    """Frames (N, H, W), float32 raw intensities -> masks or probabilities (N, H, W), float32.

    Parameters (``predict(..., params={...})``): ``particles`` ``"dark"`` (bright-field TEM) or
    ``"bright"`` (HAADF); ``pixel_size_nm`` the frames' pixel size (nm/px; 0 = no rescaling to
    the model's training pixel size); ``threshold`` ``"otsu"`` (per frame) or a probability;
    ``output`` ``"mask"`` (0/1) or ``"prob"`` (particle probability).
    """

    def load_context(self, context: Any) -> None:  # noqa: D102
        from ..models.io import load_checkpoint

        self.model = load_checkpoint(Path(context.artifacts[CHECKPOINT_KEY]), map_location="cpu")

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None
                ) -> np.ndarray:  # noqa: D102
        from .infer import segment_frames

        p = {**PARAMS, **(params or {})}
        if p["output"] not in ("mask", "prob"):
            raise ValueError(f"output must be 'mask' or 'prob', got {p['output']!r}")
        frames = np.asarray(model_input, dtype=np.float32)
        if frames.ndim not in (2, 3):
            raise ValueError(f"expected frames (N, H, W) or (H, W), got shape {frames.shape}")
        px = float(p["pixel_size_nm"] or 0.0)
        prob, masks = segment_frames(self.model, frames, particles=str(p["particles"]),
                                     pixel_size_nm=px if px > 0 else None, rescale=px > 0,
                                     threshold=_threshold(p["threshold"]))
        return prob if p["output"] == "prob" else masks.astype(np.float32)


def save_pyfunc(checkpoint: str | Path, path: str | Path, example_size: int = 64) -> Path:
    """Write checkpoint ``checkpoint`` as a pyfunc model folder at ``path`` (must not exist).

    The folder holds the MLmodel file with a tensor signature, the predict parameters, an
    input example (a (1, ``example_size``, ``example_size``) frame) and explicit pip
    requirements (this package, torch and MLflow at the running versions).
    """
    import mlflow
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    from .. import __version__

    example = np.random.default_rng(0).normal(100.0, 10.0, (1, example_size, example_size))
    example = example.astype(np.float32)
    model = SegmentationModel()
    model.load_context(type("Context", (), {"artifacts": {CHECKPOINT_KEY: str(checkpoint)}})())
    frames = TensorSpec(np.dtype(np.float32), (-1, -1, -1))  # any number and size of frames
    signature = ModelSignature(
        inputs=Schema([frames]), outputs=Schema([frames]),
        params=ParamSchema([ParamSpec(k, "double" if isinstance(v, float) else "string", v)
                            for k, v in PARAMS.items()]))
    model.predict(None, example)  # fail here, not in a user's session, if the example breaks
    requirements = [f"temseg-ablation=={__version__}",
                    f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]
    mlflow.pyfunc.save_model(
        path=str(path), python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
        artifacts={CHECKPOINT_KEY: str(checkpoint)}, signature=signature,
        input_example=(example, PARAMS), pip_requirements=requirements)
    return Path(path)


def log_pyfunc(client: Any, run_id: str, checkpoint: str | Path, artifact_path: str = "model"
               ) -> str:
    """Save the pyfunc model of ``checkpoint`` and upload it into run ``run_id``; its artifact URI."""
    with tempfile.TemporaryDirectory(prefix="temseg-pyfunc-") as tmp:
        folder = save_pyfunc(checkpoint, Path(tmp) / artifact_path)
        client.log_artifacts(run_id, str(folder), artifact_path)
    return f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
