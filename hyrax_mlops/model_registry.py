"""Promote trained models through the MLflow Model Registry: `hyrax-mlops register RUN_ID
--name NAME --alias champion`, then `infer.model = "models:/NAME@champion"` or
`mlflow models serve -m models:/NAME@champion --env-manager local`."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from hyrax_mlops.errors import LineageError


@dataclass
class Registered:
    name: str
    version: str
    alias: str | None
    model_uri: str  # what was registered
    run_id: str

    def __str__(self) -> str:
        target = f"models:/{self.name}@{self.alias}" if self.alias else \
            f"models:/{self.name}/{self.version}"
        return (f"registered {self.model_uri} (run {self.run_id}) as {self.name} version "
                f"{self.version}: {target}")


def register(run_id: str, name: str, alias: str | None = None) -> Registered:
    """Register the model of a train or tune run under `name`; point `alias` at it."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from hyrax_mlops.tracking import TAG_INPUT, TAG_STAGE, get_run, use_store

    use_store()
    run = get_run(run_id, ("train", "tune"))
    uri = run.data.tags.get("hyrax.model_uri")
    if not uri:
        raise LineageError(f"run '{run_id}' logged no model (no hyrax.model_uri tag).")
    # MLflow prints "Successfully registered…"/"Created version…" itself: the terminal gets
    # our one line (the caller's), with the URI to use; errors are raised, not printed
    with contextlib.redirect_stderr(io.StringIO()):
        version = mlflow.register_model(uri, name, tags={
            "hyrax.run_id": run_id, "hyrax.stage": run.data.tags.get(TAG_STAGE, ""),
            "hyrax.dataset": run.data.tags.get(TAG_INPUT + "dataset", "")})
    if alias:
        MlflowClient().set_registered_model_alias(name, alias, version.version)
    return Registered(name, str(version.version), alias, uri, run_id)
