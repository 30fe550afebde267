"""Benchmark reading a dataset: cutouts/s through the DataProvider's loaders from shards with
the page cache dropped (cold), from shards in the page cache (warm), and from the in-memory
copy (`data.cache_gb`, every epoch after the first), against slicing the same normalised
arrays out of an in-memory numpy array; and the training step of the default model, to show
the loader is never what training waits for.

    .venv/bin/python benchmarks/bench_data.py [--size small|large]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, register_tiled_xdf, report, scratch  # noqa: E402

SIZES = {"small": 1408, "large": 50_000}


def drop_page_cache(files: list[Path]) -> None:
    """Ask the kernel to forget the shards' pages (no root needed for one's own files)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    ap = arguments(__doc__, SIZES)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    n = SIZES[args.size]

    with scratch("data"):
        import numpy as np
        import torch

        import hyrax_mlops as hm
        from hyrax_mlops.data.provider import DataProvider
        from hyrax_mlops.models import build_model

        source = "xdf" if n <= 1408 else register_tiled_xdf(n)
        over = {"download.source": source, "tracking.experiment": "bench",
                "data.batch_size": args.batch_size}
        dataset = hm.download(None, over).run_id
        cfg = hm.load_config(None, over)
        provider = DataProvider(dataset, cfg.data)
        shards = sorted((provider.data.root / "shards").glob("*.npy"))

        def rate(loader) -> float:
            start, seen = time.perf_counter(), 0
            for batch in loader:
                seen += len(batch["image"])
            return seen / (time.perf_counter() - start)

        def shuffled(cache: bool):
            return provider.dataloader(None, shuffle=True, seed=1, cache=cache)

        drop_page_cache(shards)
        cold = rate(shuffled(cache=False))
        warm = rate(shuffled(cache=False))
        start = time.perf_counter()
        first_epoch = rate(shuffled(cache=True))  # builds the in-memory copy
        load_s = time.perf_counter() - start
        cached = rate(shuffled(cache=True))

        memory = provider.normalizer.apply(provider.data.images(provider.rows()))

        def numpy_rate() -> float:
            order = np.random.default_rng(1).permutation(len(memory))
            start = time.perf_counter()
            for s in range(0, len(order), args.batch_size):
                torch.from_numpy(memory[np.sort(order[s:s + args.batch_size])])
            return len(order) / (time.perf_counter() - start)

        reference = max(numpy_rate() for _ in range(3))
        model = build_model(cfg.model, provider.input_shape)
        opt = torch.optim.AdamW(model.parameters())
        x = {"image": torch.from_numpy(memory[:args.batch_size])}
        for _ in range(2):
            opt.zero_grad()
            model.training_step(x).backward()
        start = time.perf_counter()
        for _ in range(10):
            opt.zero_grad()
            model.training_step(x).backward()
            opt.step()
        step_rate = 10 * args.batch_size / (time.perf_counter() - start)

    results = {"hyrax": {"cold_per_s": cold, "warm_per_s": warm, "cached_per_s": cached,
                         "first_cached_epoch_per_s": first_epoch, "load_s": load_s},
               "numpy_in_memory_per_s": reference, "model_train_step_per_s": step_rate}
    ratios = {"cached_vs_numpy": cached / reference, "warm_vs_numpy": warm / reference,
              "cold_vs_numpy": cold / reference,
              "cached_loader_over_model_step": cached / step_rate,
              "cold_loader_over_model_step": cold / step_rate}
    report("data", args.size,
           {"objects": n, "batch_size": args.batch_size, "shape": list(provider.input_shape),
            "shards": len(shards), "normalize": cfg.data.normalize},
           results, ratios,
           goals={"cached_loader_over_model_step": "> 1 (never the bottleneck)"},
           met={"cached_loader_over_model_step": ratios["cached_loader_over_model_step"] > 1,
                "cold_loader_over_model_step": ratios["cold_loader_over_model_step"] > 1})


if __name__ == "__main__":
    main()
