"""Vector stores for embeddings, one module per backend, looked up by name.

An index is keyed by the infer run whose embeddings it holds *and* by the settings that change
what the collection holds (backend, metric, graph/IVF parameters):
`hyrax-<infer run id>-<backend>-<metric>-<hash of those settings>`. Two index runs of the same
embeddings with other settings therefore never share, and never overwrite, a collection.
Readers use the name an index run recorded (tag `hyrax.index.collection`), not this function.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING

from hyrax_mlops.registry import Registry
from hyrax_mlops.vectors.base import CollectionNotFound, IndexUnreachable, VectorIndex

if TYPE_CHECKING:
    from hyrax_mlops.config import IndexConfig

# Built in: chroma (HNSW), lancedb (IVF-Flat or IVF-PQ, on disk or object storage), qdrant
# (embedded or a server); a plugin registers more under its own name.
VECTOR_BACKENDS: Registry[type[VectorIndex]] = Registry(
    "vector_backend", builtins=("hyrax_mlops.vectors.chroma", "hyrax_mlops.vectors.lance",
                                "hyrax_mlops.vectors.qdrant"))

__all__ = ["VECTOR_BACKENDS", "CollectionNotFound", "IndexUnreachable", "VectorIndex",
           "collection_name", "legacy_collection_name"]

_MAX_NAME = 512  # Chroma: 3-512 characters of [A-Za-z0-9._-], alphanumeric at both ends


def collection_name(infer_run_id: str, cfg: IndexConfig, statistics_run_id: str | None = None
                    ) -> str:
    """The collection for `infer_run_id`'s embeddings indexed with `cfg` (joined with the
    statistics of `statistics_run_id`, when given): its name changes with every setting that
    changes the collection's content (see each backend's `identity`)."""
    backend = VECTOR_BACKENDS.get(cfg.backend)
    settings = {"backend": cfg.backend, **backend.identity(cfg)}
    if statistics_run_id:
        settings["statistics"] = statistics_run_id
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", cfg.backend)[:40]
    return f"hyrax-{infer_run_id}-{safe}-{cfg.metric}-{digest}"[:_MAX_NAME]


def legacy_collection_name(infer_run_id: str) -> str:
    """What index runs made before the settings were part of the name called theirs."""
    return f"hyrax-{infer_run_id}"
