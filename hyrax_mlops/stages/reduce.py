"""`reduce`: UMAP / PCA maps of an infer run's embeddings: Parquet, PNG and one HTML."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from hyrax_mlops.analysis.reducers import REDUCERS, umap_fit_size
from hyrax_mlops.config import Config
from hyrax_mlops.errors import ConfigError
from hyrax_mlops.tracking import StageRun, StageSpec, get_run, input_run, run_stage

SECTIONS = ("reduce",)
HOVER = ("flux", "r_half", "ra", "dec")


def check(cfg: Config) -> None:
    for method in cfg.reduce.methods:
        try:
            REDUCERS.get(method)
        except KeyError as exc:
            raise ConfigError(f"config key 'reduce.methods': {exc}") from None


def run(cfg: Config, infer_run_id: str, *, force: bool = False,
        parent_run_id: str | None = None) -> StageRun:
    check(cfg)
    dataset_run_id = input_run(get_run(infer_run_id, "infer"), "dataset")
    catalog = _catalog(cfg, dataset_run_id)
    if cfg.reduce.color_by and cfg.reduce.color_by not in catalog.columns:
        import difflib

        close = difflib.get_close_matches(cfg.reduce.color_by, list(catalog.columns), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"config key 'reduce.color_by' = '{cfg.reduce.color_by}' is not a "
                          f"catalog column.{hint} (columns: {', '.join(catalog.columns)})")
    spec = StageSpec("reduce", SECTIONS,
                     inputs={"embeddings": infer_run_id, "dataset": dataset_run_id})

    def body(run_id: str) -> dict[str, str]:
        return _reduce(cfg, infer_run_id, catalog)

    return run_stage(spec, cfg, body, force=force, parent_run_id=parent_run_id)


def _catalog(cfg: Config, dataset_run_id: str):
    from hyrax_mlops.data.dataset import ARTIFACT_DIR, Dataset
    from hyrax_mlops.tracking import fetch_artifacts

    return Dataset(fetch_artifacts(dataset_run_id, ARTIFACT_DIR, cfg)).catalog


def _reduce(cfg: Config, infer_run_id: str, catalog) -> dict[str, str]:
    import matplotlib.pyplot as plt
    import mlflow
    import pandas as pd

    from hyrax_mlops.analysis.maps import COORDS, map_png, maps_html
    from hyrax_mlops.stages.infer import read_embeddings

    ids, vectors = read_embeddings(infer_run_id, cfg)
    color = cfg.reduce.color_by or None
    extra_cols = [c for c in dict.fromkeys([color, *HOVER]) if c and c in catalog.columns]
    info = catalog.set_index("object_id")[extra_cols].loc[ids].reset_index()
    maps: dict[str, pd.DataFrame] = {}
    outputs: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="hyrax-reduce-") as tmp:
        for method in cfg.reduce.methods:
            for dims in cfg.reduce.dims:
                key = f"{method}_{dims}d"
                start = time.perf_counter()
                coords = REDUCERS.get(method)(vectors, dims, cfg.reduce)
                mlflow.log_metric(f"{key}_seconds", time.perf_counter() - start)
                if method == "umap":
                    mlflow.log_metric(f"{key}_fit_sample", umap_fit_size(len(ids), cfg.reduce))
                table = pd.DataFrame({"object_id": ids})
                for i in range(dims):
                    table[COORDS[i]] = coords[:, i]
                path = Path(tmp) / f"{key}.parquet"
                table.to_parquet(path, index=False)
                mlflow.log_artifact(str(path), "reductions")
                outputs[key] = f"reductions/{key}.parquet"
                shown = table.merge(info, on="object_id", how="left")
                maps[f"{method.upper()} {dims}D"] = shown
                fig = map_png(shown, f"{method.upper()} {dims}D of {len(ids)} objects", color)
                mlflow.log_figure(fig, f"plots/{key}.png")
                plt.close(fig)
        html = Path(tmp) / "reductions.html"
        html.write_text(maps_html(maps, color, HOVER), encoding="utf-8")
        mlflow.log_artifact(str(html))
    mlflow.log_metric("n_objects", len(ids))
    return outputs
