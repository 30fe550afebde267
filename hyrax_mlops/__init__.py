"""hyrax-mlops: experiment-tracking-first machine learning for astronomical survey data.

    import hyrax_mlops as hm
    hm.pipeline("hyrax.toml", overrides={"train.epochs": 5})

Heavy libraries (torch, mlflow, chromadb, umap) are imported only when a stage needs them.
"""

from hyrax_mlops._version import __version__
from hyrax_mlops.api import (
    analyse,
    compare,
    download,
    explore,
    export_onnx,
    index,
    infer,
    ingest,
    lineage,
    load_config,
    lookup,
    peel,
    pipeline,
    reduce,
    register,
    results,
    search_by_cutout,
    search_by_id,
    search_by_lightcurve,
    search_by_spectrum,
    search_by_vector,
    train,
    tune,
)

__all__ = [
    "__version__",
    "analyse",
    "compare",
    "download",
    "explore",
    "export_onnx",
    "ingest",
    "infer",
    "index",
    "lineage",
    "load_config",
    "lookup",
    "peel",
    "pipeline",
    "reduce",
    "register",
    "results",
    "search_by_cutout",
    "search_by_id",
    "search_by_lightcurve",
    "search_by_spectrum",
    "search_by_vector",
    "train",
    "tune",
]


def __getattr__(name: str):
    """`hm.<stage>` for a registered stage without a door of its own in `api`."""
    from hyrax_mlops import api

    return getattr(api, name)
