"""`reduce`: UMAP / PCA maps of an infer run's embeddings: Parquet, PNG and one HTML."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from hyrax_mlops.analysis.reducers import REDUCERS
from hyrax_mlops.config import Config
from hyrax_mlops.errors import ConfigError
from hyrax_mlops.tracking import (
    ArtifactCache,
    StageRun,
    StageSpec,
    get_run,
    input_run,
    run_stage,
    say,
)

SECTIONS = ("reduce",)
HOVER = ("flux", "r_half", "ra", "dec")


def check(cfg: Config) -> None:
    for method in cfg.reduce.methods:
        try:
            REDUCERS.get(method)
        except KeyError as exc:
            raise ConfigError(f"config key 'reduce.methods': {exc}") from None


def run(cfg: Config, embeddings: str, *, force: bool = False,
        parent_run_id: str | None = None) -> StageRun:
    check(cfg)
    dataset_run_id = input_run(get_run(embeddings, "infer"), "dataset")
    catalog = _catalog(cfg, dataset_run_id)
    color, note = _color_by(cfg, catalog)
    from hyrax_mlops.tracking import name_hint

    name = name_hint("reduce", "+".join(cfg.reduce.methods), cfg=cfg,
                     changed={"reduce.dims": "d", "reduce.umap_n_neighbors": "nn",
                              "reduce.umap_metric": "", "reduce.seed": "s"})
    spec = StageSpec("reduce", SECTIONS,
                     inputs={"embeddings": embeddings, "dataset": dataset_run_id}, name=name)

    def body(run_id: str) -> dict[str, str]:
        if note:
            import mlflow

            say(note)
            mlflow.set_tag("hyrax.note.color_by", note)
        return _reduce(cfg, embeddings, catalog, color)

    return run_stage(spec, cfg, body, force=force, parent_run_id=parent_run_id)


def _catalog(cfg: Config, dataset_run_id: str):
    from hyrax_mlops.data.dataset import ARTIFACT_DIR, Dataset
    from hyrax_mlops.tracking import ArtifactCache

    return Dataset(ArtifactCache.of(cfg).fetch(dataset_run_id, ARTIFACT_DIR)).catalog


def _color_by(cfg: Config, catalog) -> tuple[str | None, str | None]:
    """The column the maps are coloured by, and a note when `reduce.color_by` is not there."""
    import pandas as pd

    from hyrax_mlops.stages._columns import color_column

    numeric = [c for c in catalog.columns if pd.api.types.is_numeric_dtype(catalog[c])
               and not pd.api.types.is_bool_dtype(catalog[c]) and catalog[c].notna().any()]
    return color_column(cfg.reduce.color_by, catalog.columns, numeric)


def _reduce(cfg: Config, infer_run_id: str, catalog, color: str | None) -> dict[str, str]:
    import matplotlib.pyplot as plt
    import mlflow
    import pandas as pd

    from hyrax_mlops.analysis.maps import COORDS, map_png, maps_html
    from hyrax_mlops.stages.infer import read_embeddings

    ids, vectors = read_embeddings(infer_run_id, ArtifactCache.of(cfg))
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
                fit_size = getattr(REDUCERS.get(method), "fit_size", None)
                if fit_size is not None:  # fitted on a sample, the rest placed
                    mlflow.log_metric(f"{key}_fit_sample", fit_size(len(ids), cfg.reduce))
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
