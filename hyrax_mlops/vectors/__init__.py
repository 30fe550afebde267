"""Vector stores for embeddings, one module per backend, looked up by name.

An index is keyed by the infer run whose embeddings it holds (collection `hyrax-<run_id>`).
"""

from __future__ import annotations

from hyrax_mlops.registry import Registry
from hyrax_mlops.vectors.base import VectorIndex

VECTOR_BACKENDS: Registry[type[VectorIndex]] = Registry("vector_backend")

from hyrax_mlops.vectors import chroma, lance  # noqa: E402,F401  (built-ins register themselves)


def collection_name(infer_run_id: str) -> str:
    return f"hyrax-{infer_run_id}"
