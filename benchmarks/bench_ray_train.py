"""Benchmark: Ray Train overhead with one worker, and the speed-up with two, against the
in-process loop and a plain PyTorch loop on the same work (real XDF stamps, same model, same
epochs), all in one run. Reports wall-clock seconds of the whole train stage and of the epochs
alone, and ratios to the in-process loop.

    .venv/bin/python benchmarks/bench_ray_train.py [--size small|large] [--epochs N]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, report, scratch  # noqa: E402

SIZES = {"small": 5, "large": 60}  # epochs over the 1,408 XDF galaxies


def plain_pytorch(provider, cfg) -> float:
    """The reference: a bare AdamW loop over the same loaders, no tracking, no hooks."""
    import torch

    from hyrax_mlops.models import build_model

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, provider.input_shape)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr,
                            weight_decay=cfg.train.weight_decay)
    train = provider.dataloader("train", shuffle=True, seed=cfg.train.seed)
    start = time.perf_counter()
    for _ in range(cfg.train.epochs):
        model.train()
        for batch in train:
            opt.zero_grad()
            loss = model.training_step(batch)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for batch in provider.dataloader("val"):
                model.training_step(batch)
    return time.perf_counter() - start


def main() -> None:
    ap = arguments(__doc__, SIZES)
    ap.add_argument("--epochs", type=int, help="override the size's epochs")
    ap.add_argument("--objects", type=int, default=1408)
    args = ap.parse_args()
    epochs = args.epochs or SIZES[args.size]
    with scratch("ray-train"):
        results = run_all(args.objects, epochs)
    ref = results["in_process"]
    ratios = {
        "plain_pytorch_wall": results["plain_pytorch"]["wall_s"] / ref["wall_s"],
        "ray_1_worker_wall": results["ray_1_worker"]["wall_s"] / ref["wall_s"],
        "ray_1_worker_epochs": results["ray_1_worker"]["epochs_s"] / ref["epochs_s"],
        "ray_2_workers_speedup_wall": ref["wall_s"] / results["ray_2_workers"]["wall_s"],
        "ray_2_workers_speedup_epochs": ref["epochs_s"] / results["ray_2_workers"]["epochs_s"],
    }
    report("ray_train", args.size if not args.epochs else f"{epochs}epochs",
           {"objects": args.objects, "epochs": epochs}, results, ratios,
           goals={"ray_1_worker_wall": "< 1.10 for a run of a few minutes"},
           met={"ray_1_worker_wall": ratios["ray_1_worker_wall"] < 1.10})


def run_all(objects: int, epochs: int) -> dict:
    import mlflow
    from mlflow.tracking import MlflowClient

    import hyrax_mlops as hm
    from hyrax_mlops.data.provider import DataProvider

    base = {"download.limit": objects, "train.epochs": epochs,
            "train.early_stopping_patience": 0, "tracking.experiment": "bench"}
    dataset = hm.download(None, base).run_id
    cfg = hm.load_config(None, base)
    provider = DataProvider(dataset, cfg.data)

    def epochs_seconds(run_id: str) -> float:
        return sum(m.value for m in MlflowClient().get_metric_history(run_id, "epoch_time_s"))

    results = {"plain_pytorch": {"wall_s": plain_pytorch(provider, cfg)}}
    print("plain PyTorch", results["plain_pytorch"], flush=True)
    variants = {
        "in_process": {"train.backend": "local"},
        "ray_1_worker": {"train.backend": "ray", "train.workers": 1, "train.cpus_per_worker": 2},
        "ray_2_workers": {"train.backend": "ray", "train.workers": 2,
                          "train.cpus_per_worker": 1},
    }
    for name, extra in variants.items():
        start = time.perf_counter()
        run = hm.train(None, {**base, **extra}, dataset=dataset, force=True)
        wall = time.perf_counter() - start
        results[name] = {"wall_s": wall, "epochs_s": epochs_seconds(run.run_id),
                         "best_val_loss": mlflow.get_run(run.run_id).data.metrics[
                             "best_val_loss"]}
        print(name, results[name], flush=True)
    return results


if __name__ == "__main__":
    main()
