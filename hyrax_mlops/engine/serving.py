"""The trained model as an MLflow pyfunc: raw inputs in, embeddings (and class probabilities)
out. A model of images takes cutouts (below); one that reads catalog features, spectra or
light curves takes a table, one row per object (`engine.inputs.request_inputs`).

`mlflow models serve -m models:/NAME@champion --env-manager local` then answers
`POST /invocations` with {"inputs": [[[[...]]]]}, raw cutouts as a float32 (n, bands, h, w) array
(the model's signature says which bands, h, w; its `serving_input_example.json` is two real
stamps), and returns {"predictions": [{"object": 0, "embedding": [...], ...}, ...]}. Raw pixels
are normalised with the transform fitted at training time, as in `infer`. A request MLflow or the
model cannot take is answered with a JSON {"error_code": ..., "message": ...} saying why.
Models logged before they had a signature also take {"dataframe_split": {"columns": ["fits"],
"data": [["<base64 FITS>"], ...]}}; the signature's tensor schema rules that out for new ones.

The model is logged as MLflow "models from code" (`pyfunc_model.py`): nothing is pickled, and
loading it rebuilds the network from its spec and loads the weights with `weights_only=True`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from hyrax_mlops.engine.bundle import write_bundle
from hyrax_mlops.engine.inputs import fits_cube

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
ACCEPTED = ('an array (n, bands, h, w) or (bands, h, w) as {"inputs": ...}, or a table with a '
            '"fits" column of base64-encoded FITS files (one cutout each, first image HDU or a '
            '(bands, h, w) cube) as {"dataframe_split": ...}')


def cutouts_from(model_input: Any) -> np.ndarray:
    """The request's cutouts as float32 (n, bands, h, w)."""
    import pandas as pd

    if isinstance(model_input, dict):
        model_input = model_input.get("image", model_input.get("inputs"))
    if isinstance(model_input, pd.DataFrame):
        if "fits" in model_input.columns:
            return np.stack([fits_cube(v) for v in model_input["fits"]])
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
        from mlflow.exceptions import MlflowException

        from hyrax_mlops.engine.inference import embed_cutouts
        from hyrax_mlops.engine.inputs import model_kinds

        kinds = model_kinds(self.model)
        if kinds != ("image",):
            return self._predict_table(model_input, kinds)
        # an MlflowException is answered as a JSON message; anything else as a stack trace
        try:
            x = cutouts_from(model_input)
        except ValueError as e:
            raise MlflowException.invalid_parameter_value(str(e)) from None
        shape = tuple(self.spec["input_shape"])
        if x.shape[1:] != shape:
            raise MlflowException.invalid_parameter_value(
                f"cutouts of shape {list(x.shape[1:])}; this model takes {list(shape)} "
                "(bands, h, w)")
        z, p = embed_cutouts(self.model, self.normalizer, x)
        return self._answer(z, p)

    def _predict_table(self, model_input, kinds):
        """A model that reads catalog features, spectra or light curves (and maybe images):
        a table, one row per object (`engine.inputs.request_inputs`)."""
        import pandas as pd
        from mlflow.exceptions import MlflowException

        from hyrax_mlops.engine.inputs import embed_raw, request_inputs

        try:
            table = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(
                model_input)
            z, p = embed_raw(self.model, self.normalizer, len(table),
                             **request_inputs(table.reset_index(drop=True), kinds))
        except (ValueError, KeyError, TypeError) as e:
            raise MlflowException.invalid_parameter_value(
                f"{e}. This model reads {', '.join(kinds)}: send a table as "
                '{"dataframe_split": {"columns": [...], "data": [...]}} (see the model\'s '
                "serving_input_example.json)") from None
        return self._answer(z, p)

    def _answer(self, z, p):
        import pandas as pd

        out = pd.DataFrame({"object": np.arange(len(z)),
                            "embedding": [row.tolist() for row in z]})
        if p is not None:
            out["probabilities"] = [row.tolist() for row in p]
            best = p.argmax(axis=1)
            out["predicted_class"] = ([self.classes[i] for i in best] if self.classes
                                      else best.tolist())
        return out


def log_hyrax_model(model, name: str, params: dict[str, Any], input_shape, normalizer,
                    tmp: Path, registered_model_name: str | None = None, *,
                    example=None, step: int = 0,
                    link_prefixes: tuple[str, ...] = (),
                    model_metrics: dict[str, float] | None = None):
    """Log the model as `model` of the active run (pyfunc from code + the hyrax bundle).

    `example`: a function giving a few raw cutouts (n, bands, h, w); with them the model gets
    an input example and a signature (inferred by running the model on them). The run's
    metrics at `step` (the best epoch: its val_loss, train_loss, ...) are linked to the logged
    model, and so are its latest metrics whose names start with one of `link_prefixes`
    (best_val_loss, test_loss, ...); `model_metrics` (final_val_loss, ...) are logged to the
    run and linked to the model."""
    import torch
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    bundle = tmp / "bundle"
    write_bundle(model, name, params, input_shape, normalizer, bundle)
    kwargs = {}
    if example is not None:
        try:
            given = example()  # raw cutouts, or a request table for a multimodal model
            if given is not None:
                kwargs["input_example"] = (given if hasattr(given, "columns") else
                                           np.ascontiguousarray(given, dtype=np.float32))
        except Exception as e:  # noqa: BLE001 - a model without an example is still a model
            import logging

            logging.getLogger(__name__).warning("model logged without input example: %s", e)
    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(MODEL_CODE), artifacts={"bundle": str(bundle)},
        pip_requirements=[f"torch>={torch.__version__.split('+')[0]}",
                          f"numpy>={np.__version__}", "hyrax-mlops"],
        registered_model_name=registered_model_name or None, step=step, **kwargs)
    run_id = mlflow.active_run().info.run_id
    client = MlflowClient()
    linked = [Metric(m.key, m.value, m.timestamp, m.step, model_id=info.model_id)
              for key in client.get_run(run_id).data.metrics if key.startswith(link_prefixes)
              for m in client.get_metric_history(run_id, key)[-1:]]
    if linked:  # the same metric values, now also on the model (not a second point in the run)
        client.log_batch(run_id, metrics=linked)
    if model_metrics:
        mlflow.log_metrics(model_metrics, model_id=info.model_id)
    return info
