"""The same training loop inside a Ray Train `TorchTrainer`: DDP across workers (gloo on
CPU, nccl on GPU), the dataset sharded, checkpoints through Ray Train, metrics logged from
rank 0 into the stage's MLflow run. With one worker it reproduces the in-process loop."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hyrax_mlops.config import Config
from hyrax_mlops.engine.loop import EpochStats, TrainResult

STATE_FILE = "state.pt"


class _Step(nn.Module):
    """Routes `training_step` through `forward`, so DDP sees (and syncs) it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.model.training_step(batch)


def _worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    from mlflow.tracking import MlflowClient

    from hyrax_mlops.data.normalize import Normalizer
    from hyrax_mlops.data.provider import DataProvider
    from hyrax_mlops.engine.loop import fit, seed_everything
    from hyrax_mlops.models import build_model

    cfg = Config.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    seed_everything(cfg.train.seed)
    provider = DataProvider(config["dataset_run_id"], cfg.data,
                            Normalizer.from_dict(config["normalizer"]), config["dataset_dir"])
    model = build_model(cfg.model, provider.input_shape, provider.data_info())
    step = ray.train.torch.prepare_model(_Step(model))
    train_loader = ray.train.torch.prepare_data_loader(
        provider.dataloader("train", shuffle=True, seed=cfg.train.seed, prefetch=False))
    val_loader = ray.train.torch.prepare_data_loader(provider.dataloader("val", prefetch=False))

    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a restart after a failure: Ray Train's own latest checkpoint
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / STATE_FILE, weights_only=True)
    elif config.get("resume_file"):  # `train --resume`: the state last logged to MLflow
        resume = torch.load(config["resume_file"], weights_only=True)
    client = MlflowClient(config["tracking_uri"]) if rank == 0 else None
    if client and resume:  # say in the run that it survived a failure, and from where
        client.set_tag(config["run_id"], "hyrax.resumed_from_epoch", str(resume["epoch"]))

    def on_epoch(s: EpochStats) -> None:
        if client:
            for key in ("train_loss", "val_loss", "lr", "epoch_time_s", "samples_per_s"):
                client.log_metric(config["run_id"], key, getattr(s, key), step=s.epoch)
            for key, value in s.extra.items():
                client.log_metric(config["run_id"], key, value, step=s.epoch)

    def on_state(state: dict) -> None:
        last = state["history"][-1]
        metrics = {**{k: v for k, v in last.items() if k != "extra"}, **last.get("extra", {})}
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / STATE_FILE)
            (Path(d) / "last.pt").hardlink_to(Path(d) / STATE_FILE)
            client.log_artifact(config["run_id"], str(Path(d) / "last.pt"), "checkpoints")
            (Path(d) / "last.pt").unlink()
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    with tempfile.TemporaryDirectory() as d:
        fit(model, train_loader, val_loader, cfg.train, Path(d) / "best.pt", on_epoch,
            step=step, resume=resume, on_state=on_state, progress=rank == 0)


def fit_on_ray(cfg: Config, provider, run_id: str, tracking_uri: str,
               storage: Path, model: nn.Module, resume: dict | None = None) -> TrainResult:
    """Train `model`'s architecture on Ray; load the best weights into `model` and return
    the history. `provider` is the driver's DataProvider (its normaliser is shared)."""
    from hyrax_mlops.engine.ray_env import init_ray, quiet_ray_environment

    quiet_ray_environment()  # before Ray is imported
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    init_ray(cfg)
    t = cfg.train
    use_gpu = t.gpus_per_worker > 0
    resources = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if use_gpu else {})}
    resume_file = None
    if resume is not None:
        resume_file = storage / "resume.pt"
        storage.mkdir(parents=True, exist_ok=True)
        torch.save(resume, resume_file)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={
            "cfg": cfg.as_dict(), "dataset_run_id": provider.run_id,
            "dataset_dir": str(provider.data.root), "normalizer": provider.normalizer.to_dict(),
            "run_id": run_id, "tracking_uri": tracking_uri,
            "resume_file": str(resume_file) if resume_file else None,
        },
        scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=f"hyrax-train-{run_id}", storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, weights_only=True)
    model.load_state_dict(state["best_model"])
    history = [EpochStats(**h) for h in state["history"]]
    stopped = len(history) < t.epochs
    return TrainResult(state["best_epoch"], state["best_val_loss"], stopped, history)
