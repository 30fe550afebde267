"""Where runs go: the tracking store (MLFLOW_TRACKING_URI, else SQLite in the working
directory), made ready once per process, and the experiment a stage's runs go into."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from hyrax_mlops import run_context, store_lock
from hyrax_mlops.config import Config


def _quiet_environment() -> None:
    """No telemetry or network look-ups from the libraries we drive, and none of their noise
    on the terminal (artifact progress bars, type-hint warnings: `quiet.quiet_mlflow`)."""
    from hyrax_mlops.quiet import quiet_mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    quiet_mlflow()


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else a SQLite store in the working directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


_ready_stores: set[str] = set()
_SCHEMA_TRIES = 30  # half a second apart


def use_store() -> None:
    """Point MLflow at the tracking store, for code that only reads runs. The first use of
    a fresh SQLite store (MLflow creates its schema then) is serialised between processes:
    two doing it at once would leave a store that no command can open."""
    _quiet_environment()
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    db = store_lock.sqlite_file(uri)
    if uri not in _ready_stores and db is not None:
        from mlflow.tracking import MlflowClient

        with store_lock.schema_lock(uri):
            if not db.exists() or db.stat().st_size == 0:
                _create_sqlite_store(db)
            for attempt in range(_SCHEMA_TRIES):
                try:
                    MlflowClient(uri).search_experiments(max_results=1)
                    break
                except Exception as exc:  # noqa: BLE001 - sqlalchemy's error, by its text
                    # another program (`mlflow ui`, a notebook) is creating the schema
                    # without our lock: wait until it is done instead of failing
                    if "already exists" not in str(exc) or attempt == _SCHEMA_TRIES - 1:
                        raise
                    time.sleep(0.5)
        _ready_stores.add(uri)


def _schema_version(db: Path) -> str | None:
    """The alembic revision a SQLite store's schema is at (None: none yet, or unreadable)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None
    except sqlite3.Error:
        return None


def _create_sqlite_store(db: Path) -> None:
    """Make a fresh SQLite store whole, then put it in place: other programs (`mlflow ui`, a
    notebook) never see a half-made schema. If one of them creates the file meanwhile, wait
    for its schema to reach the same revision instead of migrating it at the same time."""
    from mlflow.tracking import MlflowClient

    tmp = db.with_name(f".{db.name}.{os.getpid()}.new")
    try:
        MlflowClient(f"sqlite:///{tmp}").search_experiments(max_results=1)
        head = _schema_version(tmp)
        try:
            os.link(tmp, db)  # atomic, and never over a file that appeared meanwhile
        except FileExistsError:
            deadline = time.monotonic() + 60
            while _schema_version(db) != head and time.monotonic() < deadline:
                time.sleep(0.25)
    finally:
        tmp.unlink(missing_ok=True)


def setup(cfg: Config) -> str:
    """Point MLflow at the store and return the experiment id the stage runs go into
    (creating the experiment if needed). Under `mlflow run` it is the one `mlflow run` chose.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    # MLflow 3 records an experiment's kind in this tag; hyrax's are model training ("Machine
    # learning": runs, metric charts, models), not GenAI (traces, evaluations).
    kind = {"mlflow.experimentKind": "custom_model_development"}

    def _mark_model_training(exp) -> None:  # experiments made before hyrax set it
        if "mlflow.experimentKind" not in (exp.tags or {}):  # never override a user's choice
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, *next(iter(kind.items())))

    use_store()
    launcher = run_context.current().launcher()
    if launcher:
        exp = mlflow.get_experiment(mlflow.get_run(launcher).info.experiment_id)
        _mark_model_training(exp)
        return exp.experiment_id
    name = cfg.tracking.experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        with store_lock.schema_lock(tracking_uri()):  # two processes may create it at once
            exp = mlflow.get_experiment_by_name(name)
            if exp is None:
                try:
                    return mlflow.create_experiment(name, tags=kind)
                except MlflowException:  # another process (on a server store) was first
                    exp = mlflow.get_experiment_by_name(name)
                    if exp is None:
                        raise
    _mark_model_training(exp)
    return exp.experiment_id
