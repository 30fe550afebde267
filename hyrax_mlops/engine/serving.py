"""The trained model as an MLflow pyfunc: cutouts in, embeddings (and class probabilities) out.

`mlflow models serve -m models:/NAME@champion --env-manager local` then answers
`POST /invocations` with either
    {"inputs": [[[[...]]]]}                          cutouts as a (n, bands, h, w) array, or
    {"dataframe_split": {"columns": ["fits"], "data": [["<base64 FITS>"], ...]}}
and returns {"predictions": [{"object": 0, "embedding": [...], ...}, ...]}. Raw pixels are
normalised with the transform fitted at training time, as in `infer`.

The model is logged as MLflow "models from code" (`pyfunc_model.py`): nothing is pickled, and
loading it rebuilds the network from its spec and loads the weights with `weights_only=True`.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from hyrax_mlops.engine.bundle import write_bundle

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
ACCEPTED = ('an array (n, bands, h, w) or (bands, h, w) as {"inputs": ...}, or a table with a '
            '"fits" column of base64-encoded FITS files (one cutout each, first image HDU or a '
            '(bands, h, w) cube) as {"dataframe_split": ...}')


def _fits_cube(data: str | bytes) -> np.ndarray:
    from astropy.io import fits

    raw = base64.b64decode(data) if isinstance(data, str) else bytes(data)
    with fits.open(io.BytesIO(raw), memmap=False) as hdul:
        image = next((h.data for h in hdul if h.is_image and h.data is not None), None)
    if image is None:
        raise ValueError("a FITS file in the request has no image HDU with data")
    cube = np.asarray(image, dtype=np.float32)
    return cube[None] if cube.ndim == 2 else cube


def cutouts_from(model_input: Any) -> np.ndarray:
    """The request's cutouts as float32 (n, bands, h, w)."""
    import pandas as pd

    if isinstance(model_input, dict):
        model_input = model_input.get("image", model_input.get("inputs"))
    if isinstance(model_input, pd.DataFrame):
        if "fits" in model_input.columns:
            return np.stack([_fits_cube(v) for v in model_input["fits"]])
        if "image" in model_input.columns:
            return np.stack([np.asarray(v, np.float32) for v in model_input["image"]])
        raise ValueError(f"unknown columns {list(model_input.columns)}: send {ACCEPTED}")
    x = np.asarray(model_input, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"cutouts of shape {list(x.shape)}: send {ACCEPTED}")
    return x


class HyraxPyfunc(mlflow.pyfunc.PythonModel):
    """Embeds cutouts with the weights of a hyrax train run."""

    def load_context(self, context) -> None:
        from hyrax_mlops.engine.bundle import read_bundle

        self.model, self.normalizer, self.spec = read_bundle(Path(context.artifacts["bundle"]))
        self.classes = list(self.spec["params"].get("classes") or [])

    def predict(self, context, model_input, params=None):  # untyped: arrays or tables
        import pandas as pd

        from hyrax_mlops.engine.inference import embed_cutouts

        x = cutouts_from(model_input)
        shape = tuple(self.spec["input_shape"])
        if x.shape[1:] != shape:
            raise ValueError(f"cutouts of shape {list(x.shape[1:])}; this model takes "
                             f"{list(shape)} (bands, h, w)")
        z, p = embed_cutouts(self.model, self.normalizer, x)
        out = pd.DataFrame({"object": np.arange(len(x)),
                            "embedding": [row.tolist() for row in z]})
        if p is not None:
            out["probabilities"] = [row.tolist() for row in p]
            best = p.argmax(axis=1)
            out["predicted_class"] = ([self.classes[i] for i in best] if self.classes
                                      else best.tolist())
        return out


def log_hyrax_model(model, name: str, params: dict[str, Any], input_shape, normalizer,
                    tmp: Path, registered_model_name: str | None = None):
    """Log the model as `model` of the active run (pyfunc from code + the hyrax bundle)."""
    import torch

    bundle = tmp / "bundle"
    write_bundle(model, name, params, input_shape, normalizer, bundle)
    return mlflow.pyfunc.log_model(
        name="model", python_model=str(MODEL_CODE), artifacts={"bundle": str(bundle)},
        pip_requirements=[f"torch>={torch.__version__.split('+')[0]}",
                          f"numpy>={np.__version__}", "hyrax-mlops"],
        registered_model_name=registered_model_name or None)
