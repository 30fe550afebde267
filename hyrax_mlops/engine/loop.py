"""The in-process training loop: AdamW, a schedule, early stopping, clipping; seeded.

It knows nothing of MLflow: the caller gets each epoch's numbers through `on_epoch`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hyrax_mlops.config import TrainConfig
from hyrax_mlops.engine.precision import Compute, compute_for
from hyrax_mlops.progress import tqdm


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    val_loss: float
    lr: float
    epoch_time_s: float
    samples_per_s: float
    extra: dict[str, float] = field(default_factory=dict)  # train_<name>, val_<metric>, ...


@dataclass
class TrainResult:
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    history: list[EpochStats] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():  # CPU kernels are deterministic already; the switch costs
        torch.use_deterministic_algorithms(True, warn_only=True)  # an import of ~1 s


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA GPU is visible. "
                           "Fix: --set train.device=cpu (or auto).")
    return torch.device(name)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    return None


def _sum_across_workers(total: float, count: int) -> tuple[float, int]:
    """Sums over all DDP workers (a no-op in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return total, count
    t = torch.tensor([total, float(count)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0]), int(t[1])


def split_output(out) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A step's result as (total loss, other named values): a tensor, or a dict with "loss"."""
    if isinstance(out, dict):
        if "loss" not in out:
            raise ValueError(f"training_step returned {sorted(out)}: a dict must hold the "
                             "total under 'loss'")
        return out["loss"], {k: v for k, v in out.items() if k != "loss"}
    return out, {}


def _gather(array: np.ndarray) -> np.ndarray:
    """Concatenate an array across DDP workers (itself in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return array
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


@dataclass
class Evaluation:
    loss: float
    parts: dict[str, float]
    probs: np.ndarray | None = None  # (n, classes) when the model predicts and batches have labels
    labels: np.ndarray | None = None


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def evaluate_all(model: torch.nn.Module, loader, device: torch.device,
                 compute: Compute | None = None) -> Evaluation:
    """Mean loss and named values per sample over a loader (all workers' shards; nan for an
    empty one), and the predicted probabilities of a classifier with their labels; in the
    precision of `compute` (fp32 without one)."""
    compute = compute or Compute(device)
    model.eval()
    total, n, sums = 0.0, 0, {}
    predict = getattr(model, "predict", None)
    probs, labels = [], []
    with torch.no_grad():
        for batch in loader:
            if "row" in batch and not len(batch["row"]):
                continue  # every streamed cutout of it failed: nothing to evaluate
            batch = compute.batch(batch)
            size = len(next(iter(batch.values())))
            with compute.autocast():
                loss, parts = split_output(model.training_step(batch))
                pred = predict(batch) if callable(predict) and "label" in batch else None
            total += float(loss) * size
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) * size
            n += size
            if pred is not None:
                probs.append(pred.float().cpu().numpy())
                labels.append(batch["label"].cpu().numpy())
    total, count = _sum_across_workers(total, n)
    parts = {k: _sum_across_workers(v, n)[0] / max(count, 1) for k, v in sums.items()}
    result = Evaluation(total / count if count else math.nan, parts)
    if callable(predict) and labels:
        result.probs, result.labels = _gather(np.concatenate(probs)), _gather(
            np.concatenate(labels))
    return result


def evaluate(model: torch.nn.Module, loader, device: torch.device) -> float:
    """Mean loss per sample over a loader (all workers' shards; nan for an empty one)."""
    return evaluate_all(model, loader, device).loss


def _close_bar(bar, result: TrainResult, cfg: TrainConfig, progress: bool) -> None:
    """Close the bar where training ended (an early stop: at that epoch, not frozen short of
    the planned total), with the best epoch beside it and, after an early stop, a note why."""
    ran = len(result.history)
    if result.stopped_early:
        bar.total = bar.n
        bar.set_description("train (stopped early)", refresh=False)
    bar.close()
    if progress and result.stopped_early:
        import sys

        tqdm.write(f"[hyrax] train: stopped early after {ran} of {cfg.epochs} epochs (no "
                   f"val_loss improvement in {cfg.early_stopping_patience}); best epoch "
                   f"{result.best_epoch} (of 0..{ran - 1}), val_loss "
                   f"{result.best_val_loss:.4g}", file=sys.stderr)


def fit(model: torch.nn.Module, train_loader, val_loader, cfg: TrainConfig,
        checkpoint: Path, on_epoch: Callable[[EpochStats], None] | None = None, *,
        step: Callable | None = None, resume: dict | None = None,
        on_state: Callable[[dict], None] | None = None, progress: bool = True) -> TrainResult:
    """Train, keep the best weights (by val loss; train loss without a val split) in
    `checkpoint` and leave them loaded in `model`.

    `step(batch) -> loss` replaces `model.training_step` (a DDP wrapper under Ray Train);
    `on_state(state)` receives everything needed to continue after each epoch, and
    `resume=state` continues from it. `train.precision` (bf16/fp16 autocast, fp16 with a
    gradient scaler) and `train.channels_last` say how it computes.
    """
    device = resolve_device(cfg.device)
    compute = compute_for(device, cfg)
    compute.prepare(model)
    scaler = compute.grad_scaler()
    step = step or model.training_step
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _scheduler(opt, cfg)
    result = TrainResult(best_epoch=-1, best_val_loss=math.inf, stopped_early=False)
    stale, first = 0, 0
    if resume:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        if sched is not None and resume.get("scheduler"):
            sched.load_state_dict(resume["scheduler"])
        result.best_val_loss, result.best_epoch = resume["best_val_loss"], resume["best_epoch"]
        result.history = [EpochStats(**h) for h in resume["history"]]
        stale, first = resume["stale"], resume["epoch"] + 1
        torch.save(resume["best_model"], checkpoint)
    sampler = getattr(train_loader, "sampler", None)
    after_step = getattr(model, "after_step", None)
    # counted by hand: a bar being iterated closes itself at a `break`, short of the epoch
    # that stopped it
    bar = tqdm(total=cfg.epochs - first, desc="train", unit="epoch", disable=not progress)
    for epoch in range(first, cfg.epochs):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # a DistributedSampler reshuffles per epoch
        model.train()
        start, total, seen, sums = time.perf_counter(), 0.0, 0, {}
        for batch in train_loader:
            if "row" in batch and not len(batch["row"]) and not _distributed():
                continue  # every streamed cutout of it failed (DDP ranks must all step)
            batch = compute.batch(batch)
            opt.zero_grad(set_to_none=True)
            with compute.autocast():
                loss, parts = split_output(step(batch))
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {float(loss.detach())} at epoch {epoch}. Fix: lower train.lr or "
                    "check the data normalisation (data.normalize)."
                )
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(opt)  # clip the true gradients (a no-op unless fp16)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            if after_step is not None:
                after_step()
            size = len(next(iter(batch.values())))
            total += float(loss.detach()) * size
            for k, v in parts.items():
                value = v.detach() if isinstance(v, torch.Tensor) else v
                sums[k] = sums.get(k, 0.0) + float(value) * size
            seen += size
        elapsed = time.perf_counter() - start
        local_seen = seen
        total, seen = _sum_across_workers(total, seen)
        train_loss = total / max(seen, 1)
        extra = {f"train_{k}": _sum_across_workers(v, local_seen)[0] / max(seen, 1)
                 for k, v in sums.items()}
        val = evaluate_all(model, val_loader, device, compute)
        val_loss = val.loss
        extra.update({f"val_{k}": v for k, v in val.parts.items()})
        if val.probs is not None and len(val.labels):
            from hyrax_mlops.engine.metrics import classification_metrics

            extra.update(classification_metrics(val.probs, val.labels,
                                                getattr(model, "classes", None)
                                                or [str(i) for i in range(val.probs.shape[1])],
                                                prefix="val_"))
        score = train_loss if math.isnan(val_loss) else val_loss
        stats = EpochStats(epoch, train_loss, val_loss, opt.param_groups[0]["lr"], elapsed,
                           seen / elapsed if elapsed > 0 else 0.0, extra)
        result.history.append(stats)
        if sched is not None:
            sched.step()
        if score < result.best_val_loss:
            result.best_val_loss, result.best_epoch, stale = score, epoch, 0
            torch.save(model.state_dict(), checkpoint)
        else:
            stale += 1
        if on_epoch:
            on_epoch(stats)
        if on_state:
            on_state({"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                      "scheduler": sched.state_dict() if sched is not None else None,
                      "best_val_loss": result.best_val_loss, "best_epoch": result.best_epoch,
                      "stale": stale, "history": [vars(h) for h in result.history],
                      "best_model": torch.load(checkpoint, weights_only=True)})
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}",
                        best=f"{result.best_val_loss:.4f}@{result.best_epoch}", refresh=False)
        bar.update(1)
        if cfg.early_stopping_patience and stale >= cfg.early_stopping_patience:
            result.stopped_early = True
            break
    _close_bar(bar, result, cfg, progress)
    model.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))
    return result
