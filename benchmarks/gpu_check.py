"""Does the platform's training and inference run at the speed of the model on a GPU?

One script, under 8 minutes on one GPU, needing only torch and the project's engine and models
(no MLflow, no vector store): the conv autoencoder and SimCLR trained and run over the XDF's
real galaxy stamps (the 1,408 the demo uses, shown in random dihedral orientations to make a
working set of `--objects`), each twice in the same process:

- **hyrax**: `engine.loop.fit` (the train stage's loop: AdamW, schedule, clipping, best
  checkpoint, validation every epoch) and `engine.inference.embed_all` (infer's), with
  `--precision` (bf16/fp16 autocast), `--channels-last` and pinned memory;
- **plain**: a bare PyTorch loop over the same batches with the same autocast: zero_grad,
  forward, backward, step; and `inference_mode()` over the same loader for inference.

It prints one JSON object (and writes it with `--out`): samples/s of each, the ratios
hyrax / plain, the mean GPU utilisation sampled while each phase ran (`torch.cuda.utilization`,
needs pynvml; null with the reason when it cannot be read), peak GPU memory, and whether the
two inference paths gave the same embeddings. On a CPU it runs too (`--smoke`: a few hundred
objects, one short epoch): the tests run it that way.

    python benchmarks/gpu_check.py --device cuda --precision bf16 --channels-last
    python benchmarks/gpu_check.py --smoke            # CPU, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyrax_mlops.config import ModelConfig, TrainConfig  # noqa: E402
from hyrax_mlops.data.normalize import fit_normalizer  # noqa: E402
from hyrax_mlops.engine.inference import embed_all  # noqa: E402
from hyrax_mlops.engine.loop import fit, resolve_device, seed_everything  # noqa: E402
from hyrax_mlops.engine.precision import Compute  # noqa: E402
from hyrax_mlops.models import build_model  # noqa: E402
from hyrax_mlops.sources.xdf import xdf_stamps  # noqa: E402

MODELS = ("conv_autoencoder", "simclr")


class Stamps(torch.utils.data.Dataset):
    """`n` views of the real stamps: stamp i % len(stamps) in dihedral orientation i // len."""

    def __init__(self, stamps: np.ndarray, n: int) -> None:
        self.stamps, self.n = torch.from_numpy(stamps), n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.stamps[i % len(self.stamps)]
        turn = (i // len(self.stamps)) % 8
        x = torch.rot90(x, turn % 4, dims=(1, 2))
        return {"image": torch.flip(x, dims=(2,)) if turn >= 4 else x}


class Utilisation:
    """Mean GPU utilisation (%) sampled every 0.1 s while the block runs."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.samples, self.error = device, [], None
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.samples.append(float(torch.cuda.utilization(self.device)))
            except Exception as exc:  # no pynvml / no NVML: say why, once
                self.error = f"{type(exc).__name__}: {exc}"[:200]
                return

    def __enter__(self) -> Utilisation:
        if self.device.type == "cuda":
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self.error = "not a CUDA device"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.device.type == "cuda":
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(float(np.mean(self.samples)), 1) if self.samples else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loaders(stamps: np.ndarray, n: int, batch: int, pin: bool, seed: int, workers: int):
    """Train (shuffled), validation and inference loaders over views of the stamps; `workers`
    processes prepare batches so that the GPU is not kept waiting."""
    kw = {"batch_size": batch, "pin_memory": pin, "num_workers": workers,
          "persistent_workers": workers > 0}
    train = torch.utils.data.DataLoader(Stamps(stamps, n), shuffle=True, drop_last=True,
                                        generator=torch.Generator().manual_seed(seed), **kw)
    val = torch.utils.data.DataLoader(Stamps(stamps, max(batch, n // 10)), **kw)
    infer = torch.utils.data.DataLoader(Stamps(stamps, n), **kw)
    return train, val, infer


def plain_train(model: torch.nn.Module, loader, compute: Compute, epochs: int, lr: float
                ) -> list[float]:
    """The reference: a bare loop, same batches and precision; samples/s of each epoch."""
    compute.prepare(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    scaler = compute.grad_scaler()
    rates = []
    for _ in range(epochs):
        _sync(compute.device)
        start, seen = time.perf_counter(), 0
        for batch in loader:
            batch = compute.batch(batch)
            opt.zero_grad(set_to_none=True)
            with compute.autocast():
                out = model.training_step(batch)
            loss = out["loss"] if isinstance(out, dict) else out
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            seen += len(batch["image"])
        _sync(compute.device)
        rates.append(seen / (time.perf_counter() - start))
    return rates


def plain_infer(model: torch.nn.Module, loader, compute: Compute) -> tuple[np.ndarray, float]:
    compute.prepare(model).eval()
    chunks = []
    _sync(compute.device)
    start = time.perf_counter()
    with compute.inference():
        for batch in loader:
            chunks.append(model.embed(compute.batch(batch)).float().cpu())
    _sync(compute.device)
    elapsed = time.perf_counter() - start
    emb = torch.cat(chunks).reshape(sum(len(c) for c in chunks), -1).numpy()
    return emb, len(emb) / elapsed


def check_model(name: str, stamps: np.ndarray, args, device: torch.device) -> dict:
    compute = Compute(device, args.precision, args.channels_last)
    train_dl, val_dl, infer_dl = loaders(stamps, args.objects, args.batch_size,
                                         compute.pin_memory, args.seed, args.workers)
    cfg = TrainConfig(epochs=args.epochs, lr=1e-3, device=device.type, precision=args.precision,
                      channels_last=args.channels_last, early_stopping_patience=0,
                      schedule="none", seed=args.seed)
    shape = tuple(stamps.shape[1:])
    out: dict = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # the platform's loop (the first epoch warms up: cudnn autotuning, allocator)
    seed_everything(args.seed)
    model = build_model(ModelConfig(name=name), shape)
    with tempfile.TemporaryDirectory() as tmp, Utilisation(device) as util:
        result = fit(model, train_dl, val_dl, cfg, Path(tmp) / "best.pt", progress=False)
    hyrax_rates = [h.samples_per_s for h in result.history]
    out["train_hyrax_samples_per_s"] = _steady(hyrax_rates)
    out["train_hyrax_gpu_util"] = util.mean
    if util.mean is None:
        out["gpu_util_note"] = util.error or "no sample"

    seed_everything(args.seed)
    reference = build_model(ModelConfig(name=name), shape)
    with Utilisation(device) as util:
        plain_rates = plain_train(reference, train_dl, compute, args.epochs, cfg.lr)
    out["train_plain_samples_per_s"] = _steady(plain_rates)
    out["train_plain_gpu_util"] = util.mean
    out["train_ratio"] = round(out["train_hyrax_samples_per_s"]
                               / out["train_plain_samples_per_s"], 3)

    # inference: the same trained weights through both paths (the loader's workers started
    # first, so neither path pays for their start-up)
    next(iter(infer_dl))
    _sync(device)
    start = time.perf_counter()
    with Utilisation(device) as util:
        emb, _ = embed_all(model, infer_dl, device.type, args.precision, args.channels_last)
    _sync(device)
    out["infer_hyrax_samples_per_s"] = round(len(emb) / (time.perf_counter() - start), 1)
    out["infer_hyrax_gpu_util"] = util.mean
    with Utilisation(device) as util:
        plain_emb, rate = plain_infer(model, infer_dl, compute)
    out["infer_plain_samples_per_s"] = round(rate, 1)
    out["infer_plain_gpu_util"] = util.mean
    out["infer_ratio"] = round(out["infer_hyrax_samples_per_s"] / rate, 3)
    scale = max(1.0, float(np.abs(plain_emb).max()))
    out["same_embeddings"] = bool(emb.shape == plain_emb.shape and np.allclose(
        emb, plain_emb, rtol=0, atol=(1e-5 if args.precision == "fp32" else 2e-2) * scale))
    out["final_train_loss"] = round(result.history[-1].train_loss, 5)
    out["loss_finite"] = all(math.isfinite(h.train_loss) for h in result.history)
    if device.type == "cuda":
        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def _steady(rates: list[float]) -> float:
    """Samples/s after the first (warm-up) epoch, when there is more than one."""
    steady = rates[1:] if len(rates) > 1 else rates
    return round(float(np.mean(steady)), 1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--objects", type=int, default=50_000, help="stamps per epoch")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true",
                    help="a few hundred objects, two short epochs, fp32 on the CPU: seconds")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device, args.objects, args.epochs, args.batch_size = "cpu", 96, 2, 32
        args.workers = 0
        if args.precision == "bf16" and "--precision" not in (argv or sys.argv):
            args.precision = "fp32"
    device = resolve_device(args.device)
    started = time.perf_counter()
    stamps = xdf_stamps(64)
    normalizer = fit_normalizer("asinh", stamps)
    stamps = normalizer.apply(stamps, inplace=True).astype(np.float32)
    report = {"device": str(device), "gpu": (torch.cuda.get_device_name(device)
                                            if device.type == "cuda" else None),
              "torch": torch.__version__, "precision": args.precision,
              "channels_last": args.channels_last, "objects": args.objects,
              "epochs": args.epochs, "batch_size": args.batch_size, "workers": args.workers,
              "real_stamps": int(len(stamps)), "models": {}}
    for name in args.models.split(","):
        report["models"][name] = check_model(name, stamps, args, device)
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
