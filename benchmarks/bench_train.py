"""Benchmark `train` (in-process) against a plain PyTorch loop: same model, same normalised
tensors already in memory, same batch size, epochs, optimiser and seed, in the same process.

Reports samples/s of the whole stage (MLflow run, per-epoch metrics and checkpoints, figures,
model logging included) and of its epochs alone, against the plain loop with and without its
validation passes. Goal: both ratios >= 0.95.

    .venv/bin/python benchmarks/bench_train.py [--size small|large]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, report, scratch  # noqa: E402

SIZES = {"small": {"epochs": 4}, "large": {"epochs": 30}}


def plain_loop(model, opt, train_x, val_x, epochs: int, batch_size: int, seed: int):
    """The reference: shuffled batches sliced from in-memory tensors, a val pass per epoch.
    Returns (seconds in training batches, seconds in total)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    train_s, start = 0.0, time.perf_counter()
    for _ in range(epochs):
        model.train()
        t0 = time.perf_counter()
        for idx in torch.randperm(len(train_x), generator=gen).split(batch_size):
            opt.zero_grad(set_to_none=True)
            loss = model.training_step({"image": train_x[idx]})
            loss.backward()
            opt.step()
        train_s += time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            for chunk in val_x.split(batch_size):
                model.training_step({"image": chunk})
    return train_s, time.perf_counter() - start


def main() -> None:
    ap = arguments(__doc__, SIZES)
    ap.add_argument("--epochs", type=int, help="override the size's epochs")
    args = ap.parse_args()
    epochs = args.epochs or SIZES[args.size]["epochs"]

    with scratch("train"):
        import mlflow
        import torch
        from mlflow.tracking import MlflowClient

        import hyrax_mlops as hm
        from hyrax_mlops.data.provider import DataProvider
        from hyrax_mlops.engine.loop import seed_everything
        from hyrax_mlops.models import build_model

        over = {"train.epochs": epochs, "train.early_stopping_patience": 0,
                "tracking.experiment": "bench"}
        dataset = hm.download(None, over).run_id
        cfg = hm.load_config(None, over)
        provider = DataProvider(dataset, cfg.data)
        images = torch.from_numpy(provider.normalizer.apply(
            provider.data.images(provider.rows())))
        train_x, val_x = images[provider.rows("train")], images[provider.rows("val")]

        def plain() -> tuple[float, float]:
            seed_everything(cfg.train.seed)
            model = build_model(cfg.model, provider.input_shape)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr,
                                    weight_decay=cfg.train.weight_decay)
            return plain_loop(model, opt, train_x, val_x, epochs, cfg.data.batch_size,
                              cfg.train.seed)

        plain_runs = [plain()]
        start = time.perf_counter()
        run = hm.train(None, over, dataset=dataset, force=True)
        stage_s = time.perf_counter() - start
        plain_runs.append(plain())  # before and after, so drift shows up
        epochs_s = sum(m.value for m in MlflowClient().get_metric_history(run.run_id,
                                                                          "epoch_time_s"))
        epochs_run = int(mlflow.get_run(run.run_id).data.metrics["epochs_run"])

    n = len(train_x) * epochs_run
    plain_train = sum(r[0] for r in plain_runs) / len(plain_runs)
    plain_total = sum(r[1] for r in plain_runs) / len(plain_runs)
    results = {
        "hyrax": {"stage_samples_per_s": n / stage_s, "epoch_samples_per_s": n / epochs_s,
                  "stage_s": stage_s, "epochs_s": epochs_s},
        "plain_pytorch": {"samples_per_s": n / plain_total,
                          "train_only_samples_per_s": n / plain_train,
                          "total_s": plain_total, "train_only_s": plain_train,
                          "runs_s": [r[1] for r in plain_runs]},
    }
    ratios = {"stage_vs_plain": plain_total / stage_s, "epochs_vs_plain": plain_train / epochs_s}
    report("train", args.size,
           {"objects": len(images), "train_objects": len(train_x), "epochs": epochs_run,
            "batch_size": cfg.data.batch_size, "model": cfg.model.name,
            "torch_threads": torch.get_num_threads()},
           results, ratios, goals={k: ">= 0.95" for k in ratios},
           met={k: v >= 0.95 for k, v in ratios.items()})


if __name__ == "__main__":
    main()
