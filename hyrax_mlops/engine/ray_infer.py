"""Embedding with Ray Data: `map_batches` over row numbers on a pool of actors, each holding
the model and the dataset; the result is in dataset order, like the in-process path."""

from __future__ import annotations

from typing import Any

import numpy as np

from hyrax_mlops.config import Config, DataConfig


class _Embedder:
    """One actor: the model (weights only, no unpickling) and the dataset's pixels."""

    def __init__(self, model_uri: str, tracking_uri: str, dataset_run_id: str,
                 dataset_dir: str, cfg: dict[str, Any], data: dict[str, Any]) -> None:
        import mlflow

        from hyrax_mlops.data.provider import DataProvider
        from hyrax_mlops.engine.bundle import load_bundle
        from hyrax_mlops.engine.loop import resolve_device

        mlflow.set_tracking_uri(tracking_uri)
        config = Config.model_validate(cfg)
        loaded = load_bundle(model_uri)
        self.device = resolve_device(config.infer.device)
        self.model = loaded.model.to(self.device).eval()
        self.provider = DataProvider(dataset_run_id, DataConfig.model_validate(data),
                                     loaded.normalizer, dataset_dir)
        self.rows = self.provider.torch_dataset(None, cache=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from hyrax_mlops.engine.inference import model_outputs
        from hyrax_mlops.engine.loop import to_device

        rows = batch["id"].astype(np.int64)
        # every modality the dataset holds (stamps, catalog features, series), as `infer` reads
        inputs = self.rows.__getitems__(rows.tolist())
        inputs.pop("label", None)
        with torch.no_grad():
            z, probs = model_outputs(self.model, to_device(inputs, self.device))
        out = {"row": rows, "embedding": z.float().cpu().numpy()}
        if probs is not None:
            out["probabilities"] = probs.float().cpu().numpy()
        return out


def embed_on_ray(cfg: Config, model_uri: str, provider, tracking_uri: str
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 (n, dim) embeddings in dataset order, computed by an actor pool, and the class
    probabilities of a model that predicts."""
    from hyrax_mlops.engine.ray_env import init_ray, quiet_ray_environment

    quiet_ray_environment()
    import ray.data

    init_ray(cfg)
    inf = cfg.infer
    ds = ray.data.range(len(provider.data)).map_batches(
        _Embedder, batch_size=inf.batch_size, concurrency=inf.workers, num_cpus=inf.cpus_per_worker,
        num_gpus=inf.gpus_per_worker or None, batch_format="numpy",
        fn_constructor_kwargs={"model_uri": model_uri, "tracking_uri": tracking_uri,
                               "dataset_run_id": provider.run_id,
                               "dataset_dir": str(provider.data.root),
                               "cfg": cfg.as_dict(),
                               "data": provider.settings.model_dump(mode="json")})
    out = ds.to_pandas()
    order = np.argsort(out["row"].to_numpy())
    emb = np.stack(out["embedding"].to_numpy()[order]).astype(np.float32)
    probs = (np.stack(out["probabilities"].to_numpy()[order]).astype(np.float32)
             if "probabilities" in out.columns else None)
    return emb, probs
