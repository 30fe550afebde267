"""MLflow "models from code" entry point for hyrax models (see `serving.py`): MLflow runs this
file to get the model object, so nothing about the model is ever pickled."""

import mlflow

from hyrax_mlops.engine.serving import HyraxPyfunc

mlflow.models.set_model(HyraxPyfunc())
