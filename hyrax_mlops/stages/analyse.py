"""`analyse`: outliers, clusters, crossmatch and latent quality of an infer run, as one run.

Artifacts: one table per analysis under `analysis/` (Parquet keyed by object_id, summaries as
CSV), plots under `plots/`, and `analysis/columns.parquet`, every per-object column the
analyses made (outlier_score, cluster, ref_label, ...) in one row per object. Quality metrics
(`quality.*`) stay on the analyse run; `compare` finds an infer run's newest one.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from hyrax_mlops.analysis.analyses import ANALYSES, AnalysisContext
from hyrax_mlops.config import Config, with_overrides
from hyrax_mlops.errors import ConfigError, HyraxError, LineageError
from hyrax_mlops.summaries import formatter
from hyrax_mlops.tracking import (
    ArtifactCache,
    StageRun,
    StageSpec,
    get_run,
    input_run,
    run_of_input,
    run_stage,
    say,
)

SECTIONS = ("analyse",)
COLUMNS = "analysis/columns.parquet"
QUALITY = "quality."
TAG_MAP = "hyrax.analyse.map"
TAG_NOTES = "hyrax.analyse.notes"
CROSSMATCH_LABEL = "ref_label"


def check(cfg: Config) -> Path | str | None:
    """Names, keys and paths, before any run exists; the reference catalog if one is used."""
    a = cfg.analyse
    for name in a.analyses:
        try:
            fn = ANALYSES.get(name)
        except KeyError as exc:
            raise ConfigError(f"config key 'analyse.analyses': {exc}") from None
        _check_contract(name, fn)
    if "quality" in a.analyses and a.label_column == CROSSMATCH_LABEL:
        before = a.analyses[:a.analyses.index("quality")]
        if "crossmatch" not in before or not a.reference_label:
            raise ConfigError("config key 'analyse.label_column' = 'ref_label' is the label a "
                              "crossmatch carries over: list \"crossmatch\" before \"quality\" "
                              "in analyse.analyses and set analyse.reference_label")
    if "crossmatch" in a.analyses:
        from hyrax_mlops.data.catalogs import require_catalog

        return require_catalog(a.reference, "analyse.reference")
    return None


def _check_contract(name: str, fn) -> None:
    """An analysis (a plugin's too) is called as `fn(ctx) -> AnalysisResult`: one whose
    signature cannot take that fails here, naming it, before any run exists."""
    import inspect

    try:
        inspect.signature(fn).bind(None)
    except (TypeError, ValueError):
        where = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
        raise ConfigError(f"analysis '{name}' ({where}) cannot be called as analysis(ctx) -> "
                          f"AnalysisResult: its signature is {inspect.signature(fn)}. Fix: "
                          "take one argument, the AnalysisContext (README: Plugins)") from None


def _run_one(name: str, ctx):
    """Run one analysis; a plugin's failure is reported as the plugin's, not hyrax's."""
    fn = ANALYSES.get(name)
    if getattr(fn, "__module__", "").startswith("hyrax_mlops."):
        return fn(ctx)
    try:
        return fn(ctx)
    except HyraxError:
        raise
    except Exception as exc:
        raise HyraxError(f"analysis '{name}' (plugin {fn.__module__}) failed: "
                         f"{type(exc).__name__}: {exc}") from exc


def fallback_label(columns) -> str | None:
    """The label column a catalog (its `columns`) carries for judging latent spaces (the
    demo's), if any."""
    from hyrax_mlops.sources.xdf import LABEL_COLUMN

    return LABEL_COLUMN if LABEL_COLUMN in set(columns) else None


def quality_label(cfg: Config, columns) -> Config:
    """`analyse.label_column` for "quality": as set, or (when empty) the label column the
    dataset carries for judging latent spaces (the demo's `colour`), as `compare` does; a
    ConfigError when there is neither. `columns`: the catalog's columns (None: not known)."""
    a = cfg.analyse
    if "quality" not in a.analyses or a.label_column or columns is None:
        return cfg
    label = fallback_label(columns)
    if label is None:
        raise ConfigError("config key 'analyse.label_column' is required for the \"quality\" "
                          "analysis. Fix: --set analyse.label_column=COLUMN (a catalog column, "
                          "or ref_label from a crossmatch)")
    return with_overrides(cfg, {"analyse.label_column": label})


def run(cfg: Config, embeddings: str, *, map: str | None = None,
        force: bool = False, parent_run_id: str | None = None) -> StageRun:
    from hyrax_mlops.data.catalogs import catalog_digest

    reference = check(cfg)
    infer = get_run(embeddings, "infer")
    cfg = resolve_auto_methods(cfg, infer)
    dataset_run_id = input_run(infer, "dataset")
    inputs = {"embeddings": embeddings, "dataset": dataset_run_id}
    if map:
        inputs["map"] = run_of_input(map, "reduce", "embeddings", embeddings).info.run_id
    elif cfg.analyse.cluster_on == "map" and "clusters" in cfg.analyse.analyses:
        raise ConfigError("config key 'analyse.cluster_on' = \"map\" needs a reduce run: pass "
                          "--map RUN (map= in Python), or cluster_on = \"auto\" (a UMAP map "
                          "made here)")
    dataset = _dataset(cfg, dataset_run_id)
    cfg = quality_label(cfg, dataset.catalog.columns)
    _check_columns(cfg, dataset.catalog)
    if _wants(cfg, "pixels") and not _has_pixels(dataset):
        raise ConfigError("config key 'analyse.outlier_methods': \"pixels\" needs the "
                          "dataset's pixels, which this dataset does not store. Fix: drop "
                          "\"pixels\" from analyse.outlier_methods")
    model = _reconstructing_model(cfg, infer)
    table = _reference(cfg, reference)
    spec = StageSpec("analyse", SECTIONS, inputs=inputs,
                     fingerprint=catalog_digest(reference) if reference else None,
                     name="analyse-" + "+".join(cfg.analyse.analyses))

    def body(run_id: str) -> dict[str, str]:
        return _analyse(cfg, embeddings, dataset_run_id, dataset, map, model,
                        table)

    result = run_stage(spec, cfg, body, force=force, parent_run_id=parent_run_id)
    result.summary = summary(result.run_id, cfg)  # printed under the run's headline
    return result


SUMMARY_TOP = 5  # top outliers named in the summary
STATISTICS_TABLE = "analysis/stamp_statistics.parquet"
STATISTICS_METRIC = "stamp_statistics"  # how many an analyse run measured (index joins them)


@formatter("analyse")
def _summary_lines(run) -> list[str]:
    return summary(run.info.run_id, Config())


def summary(run_id: str, cfg: Config) -> list[str]:
    """What an analyse run found, in a few lines: its top outliers, clusters, crossmatch and
    quality numbers, and where its outlier gallery is (a reused run says the same)."""
    import json

    import mlflow
    import pandas as pd

    from hyrax_mlops.analysis.clusters import SPACE_TAG
    from hyrax_mlops.analysis.outliers import GALLERY, OUTLIERS_TABLE
    from hyrax_mlops.redact import redact
    from hyrax_mlops.tracking import ArtifactCache

    run = mlflow.get_run(run_id)
    m, params = run.data.metrics, run.data.params
    lines = [f"{int(m.get('n_objects', 0))} objects analysed "
             f"({', '.join(json.loads(params.get('analyse.analyses', '[]')))})"]
    if "outliers.n_flagged" in m:
        top = pd.read_parquet(ArtifactCache.of(cfg).fetch(run_id, OUTLIERS_TABLE)).head(SUMMARY_TOP)
        named = ", ".join(f"{oid} ({score:.3f})" for oid, score in
                          zip(top["object_id"], top["outlier_score"], strict=True))
        lines.append(f"outliers: {int(m['outliers.n_flagged'])} flagged (top "
                     f"{params.get('analyse.top_fraction', '?')}); strongest: {named}")
        if "explained_by" in top:
            why = top["explained_by"].str.split(": ").str[-1]
            lines.append("  ranked by: " + ", ".join(
                f"{oid} {w}" for oid, w in zip(top["object_id"], why, strict=True)))
    if "clusters.n_clusters" in m:
        silhouette = (f", silhouette {m['clusters.silhouette']:.3f}"
                      if "clusters.silhouette" in m else "")
        space = run.data.tags.get(SPACE_TAG, "")
        lines.append(f"clusters: {int(m['clusters.n_clusters'])} clusters, "
                     f"{m['clusters.noise_fraction']:.0%} noise{silhouette}"
                     + (f" ({params.get('analyse.cluster_method', '').upper()} on {space})"
                        if space else ""))
    if "crossmatch.n_matched" in m:
        lines.append(f"crossmatch: {int(m['crossmatch.n_matched'])} matched "
                     f"({m.get('crossmatch.match_fraction', 0):.0%}) within "
                     f"{params.get('analyse.match_radius_arcsec', '?')}\"")
    if f"{QUALITY}n_labelled" in m:
        label = params.get("analyse.label_column", "")
        if f"{QUALITY}knn_purity" in m:
            found = (f"kNN purity {m[QUALITY + 'knn_purity']:.3f} (chance "
                     f"{m[QUALITY + 'knn_purity_chance']:.3f})")
            if f"{QUALITY}silhouette" in m:
                found += f", silhouette {m[QUALITY + 'silhouette']:.3f}"
            if f"{QUALITY}map_knn_purity" in m:
                found += f", on the map {m[QUALITY + 'map_knn_purity']:.3f}"
        else:
            found = "too few classes to score"
        lines.append(f"quality against '{label}': {found}")
    if GALLERY in {f.path for f in mlflow.MlflowClient().list_artifacts(run_id, "plots")}:
        path = ArtifactCache.of(cfg).fetch(run_id, GALLERY)
        lines.append(f"gallery of the top outliers: {GALLERY} of run {run_id}")
        lines.append(f"  open {redact(str(path))}  (an image viewer, or the MLflow UI: the "
                     "run's Artifacts tab)")
    return lines


def _dataset(cfg: Config, dataset_run_id: str):
    from hyrax_mlops.data.dataset import ARTIFACT_DIR, Dataset
    from hyrax_mlops.tracking import ArtifactCache

    return Dataset(ArtifactCache.of(cfg).fetch(dataset_run_id, ARTIFACT_DIR))


def _check_columns(cfg: Config, catalog) -> None:
    """Catalog columns the config names exist (a typo fails here, not after the work)."""
    import difflib

    a = cfg.analyse
    wanted: list[tuple[str, str]] = []
    if "clusters" in a.analyses and a.cluster_on == "catalog":
        wanted += [("cluster_columns", c) for c in a.cluster_columns]
    if "quality" in a.analyses and a.label_column != CROSSMATCH_LABEL:
        wanted.append(("label_column", a.label_column))
    if "crossmatch" in a.analyses and a.catalog_mag:
        wanted.append(("catalog_mag", a.catalog_mag))
    for key, col in wanted:
        if col not in catalog.columns:
            close = difflib.get_close_matches(col, list(map(str, catalog.columns)), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"config key 'analyse.{key}': '{col}' is not a catalog column."
                              f"{hint} (columns: {', '.join(map(str, catalog.columns))})")


def _reference(cfg: Config, path: Path | str | None):
    """The reference catalog, its columns checked before any run exists (None: no crossmatch)."""
    if path is None:
        return None
    from hyrax_mlops.analysis.crossmatch import read_reference

    a = cfg.analyse
    return read_reference(path, a.reference_ra, a.reference_dec, a.reference_label,
                          a.reference_mag)


def resolve_auto_methods(cfg: Config, infer) -> Config:
    """`outlier_methods = ["auto"]`: for a model that reconstructs its input, "residual" (the
    most significant statistic of its residual and pixels: on the discovery benchmark's
    injected artefacts the latent-space scores found few), else the latent kNN, LOF and
    isolation-forest scores."""
    a = cfg.analyse
    if "outliers" not in a.analyses or a.outlier_methods != ["auto"]:
        return cfg
    from hyrax_mlops.engine.bundle import load_bundle
    from hyrax_mlops.engine.inference import can_reconstruct

    recon = can_reconstruct(load_bundle(infer.data.tags.get("hyrax.model_uri", "")).model)
    methods = ["residual"] if recon else ["knn", "lof", "iforest"]
    return cfg.model_copy(update={"analyse": a.model_copy(update={"outlier_methods": methods})})


def _wants(cfg: Config, *methods: str) -> bool:
    """Whether the outlier analysis runs with any of these methods."""
    a = cfg.analyse
    return "outliers" in a.analyses and any(m in a.outlier_methods for m in methods)


def _has_pixels(dataset) -> bool:
    """Whether the dataset's pixels are stored (galleries and pixel statistics read them)."""
    return bool(dataset.shape) and not dataset.streamed


def _reconstructing_model(cfg: Config, infer):
    """The infer run's model, when the "recon" or "residual" outlier score needs it."""
    if not _wants(cfg, "recon", "residual"):
        return None
    wanted = [m for m in ("recon", "residual") if m in cfg.analyse.outlier_methods]
    from hyrax_mlops.engine.bundle import load_bundle
    from hyrax_mlops.engine.inference import can_reconstruct

    uri = infer.data.tags.get("hyrax.model_uri", "")
    loaded = load_bundle(uri)
    if not can_reconstruct(loaded.model):
        raise ConfigError(f"config key 'analyse.outlier_methods': \"{wanted[0]}\" needs a "
                          f"model with a reconstruct() method; '{loaded.spec['name']}' ({uri}) "
                          f"has none. Fix: drop \"{wanted[0]}\" from analyse.outlier_methods "
                          "(\"pixels\" scores the pixels alone)")
    return loaded


def measure_statistics(cfg: Config, loaded, infer_run_id: str, dataset_run_id: str, ids):
    """In one pass over the pixels: `reconstruction_error` when `loaded` (a reconstructing
    model) is given, and the stamp statistics (analysis.stamp_statistics, of the residual
    too with a model) when "residual" or "pixels" scores them: a DataFrame in the order of
    `ids`. The stamps are read and batched as the infer run read them."""
    import pandas as pd

    from hyrax_mlops.analysis.stamp_statistics import stamp_statistics
    from hyrax_mlops.data.provider import DataProvider
    from hyrax_mlops.engine.inference import batch_statistics
    from hyrax_mlops.stages.infer import how_embedded

    data, embedded = how_embedded(get_run(infer_run_id))
    provider = DataProvider(dataset_run_id, data, cache=ArtifactCache.of(cfg),
                            normalizer=loaded.normalizer if loaded is not None else None)
    loader = provider.dataloader(None, batch_size=embedded.batch_size, cache=False)
    wanted = _wants(cfg, "residual", "pixels")
    stretch = provider.normalizer.method

    def statistics(images, residuals):
        return stamp_statistics(images, residuals, stretch=stretch) if wanted else {}

    values = batch_statistics(loader, statistics,
                              loaded.model if loaded is not None else None, embedded.device,
                              desc="reconstruct" if loaded is not None else "statistics")
    order = provider.catalog["object_id"].astype(str).to_numpy()
    return pd.DataFrame(values, index=order).reindex(ids).reset_index(drop=True)


def residual_maps(loaded, dataset, rows):
    """rows of the analysed objects -> their residuals (reconstruction - input, normalised)."""
    import numpy as np
    import torch

    def residuals(local):
        cubes = dataset.images(rows[np.asarray(local)]).astype(np.float32)
        device = next(loaded.model.parameters()).device
        x = torch.from_numpy(np.ascontiguousarray(loaded.normalizer.apply(cubes))).to(device)
        with torch.no_grad():
            return (loaded.model.reconstruct({"image": x}) - x).float().cpu().numpy()
    return residuals


def read_map(cfg: Config, reduce_run_id: str):
    """(object_ids, (n, 2) coordinates, name) of a reduce run's first 2D map."""
    import json

    import mlflow
    import pandas as pd

    from hyrax_mlops.tracking import ArtifactCache

    params = mlflow.get_run(reduce_run_id).data.params
    methods = json.loads(params.get("reduce.methods", "[]"))
    if 2 not in json.loads(params.get("reduce.dims", "[2]")):
        raise LineageError(f"reduce run '{reduce_run_id}' made no 2D map (reduce.dims = "
                           f"{params.get('reduce.dims')}): use one made with reduce.dims "
                           "including 2.")
    problems = []
    for method in methods:
        try:
            path = ArtifactCache.of(cfg).fetch(reduce_run_id, f"reductions/{method}_2d.parquet")
        except Exception as exc:  # this method's map is missing: try the next, say why at the end
            problems.append(f"{method}: {type(exc).__name__}: {exc}")
            continue
        table = pd.read_parquet(path)
        return (table["object_id"].astype(str).to_numpy(), table[["x", "y"]].to_numpy(),
                f"{method.upper()} 2D")
    from hyrax_mlops.redact import redact

    why = f" ({redact('; '.join(problems))[:500]})" if problems else ""
    raise LineageError(f"reduce run '{reduce_run_id}' holds no readable reductions/*_2d.parquet"
                       f"{why}. Fix: pass --map with a reduce run made with reduce.dims "
                       "including 2, or re-run its reduce stage.")


def _analyse(cfg: Config, infer_run_id: str, dataset_run_id: str, dataset,
             reduce_run_id: str | None, model, reference):
    import matplotlib.pyplot as plt
    import mlflow
    import numpy as np
    import pandas as pd

    from hyrax_mlops.stages.infer import read_embeddings

    ids, vectors = read_embeddings(infer_run_id, ArtifactCache.of(cfg))
    catalog = dataset.catalog.assign(object_id=dataset.catalog["object_id"].astype(str))
    rows = pd.Series(np.arange(len(catalog)), index=catalog["object_id"]).loc[ids].to_numpy()
    ctx = AnalysisContext(cfg.analyse, ids, vectors, catalog.iloc[rows].reset_index(drop=True),
                          reference=reference)
    if reduce_run_id:
        map_ids, xy, ctx.map_name = read_map(cfg, reduce_run_id)
        found = pd.DataFrame(xy, index=map_ids).reindex(ids)
        if found.isna().any(axis=None):
            raise LineageError(f"reduce run '{reduce_run_id}' has no map position for some "
                               "embedded objects.")
        ctx.map = found.to_numpy()
        mlflow.set_tag(TAG_MAP, ctx.map_name)
    if _has_pixels(dataset):  # pixels on disk: galleries can show them
        ctx.images = lambda local: dataset.images(rows[np.asarray(local)])
    if model is not None or _wants(cfg, "pixels"):
        start = time.perf_counter()
        ctx.statistics = measure_statistics(cfg, model, infer_run_id, dataset_run_id, ids)
        if "reconstruction_error" in ctx.statistics:
            ctx.columns["reconstruction_error"] = ctx.statistics["reconstruction_error"]
            ctx.residuals = residual_maps(model, dataset, rows)
        with tempfile.TemporaryDirectory(prefix="hyrax-statistics-") as tmp:
            _log_table(ctx.statistics.assign(object_id=ids), STATISTICS_TABLE, Path(tmp))
        mlflow.log_metric("statistics_seconds", time.perf_counter() - start)
        measured = [c for c in ctx.statistics.columns if c != "reconstruction_error"]
        if measured:
            mlflow.log_metric(STATISTICS_METRIC, len(measured))

    outputs: dict[str, str] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hyrax-analyse-") as tmp:
        for name in cfg.analyse.analyses:
            start = time.perf_counter()
            result = _run_one(name, ctx)
            for path, table in result.tables.items():
                outputs[Path(path).with_suffix("").as_posix()] = path
                _log_table(table, path, Path(tmp))
            for path, fig in result.figures.items():
                mlflow.log_figure(fig, path)
                plt.close(fig)
                outputs[Path(path).with_suffix("").as_posix()] = path
            mlflow.log_metrics({**result.metrics,
                                f"{name}_seconds": time.perf_counter() - start})
            if result.tags:
                mlflow.set_tags(result.tags)
            for column, values in result.columns.items():
                ctx.columns[column] = values
            for note in result.notes:
                say(note)
            notes += result.notes
        _log_table(ctx.columns, COLUMNS, Path(tmp))
        outputs["analysis/columns"] = COLUMNS
    if notes:
        mlflow.set_tag(TAG_NOTES, "; ".join(notes)[:4000])
    mlflow.log_metric("n_objects", len(ids))
    return outputs


def _log_table(table, path: str, tmp: Path) -> None:
    import mlflow

    local = tmp / path
    local.parent.mkdir(parents=True, exist_ok=True)
    if local.suffix == ".csv":
        table.to_csv(local, index=False)
    else:
        table.to_parquet(local, index=False)
    mlflow.log_artifact(str(local), str(Path(path).parent))

