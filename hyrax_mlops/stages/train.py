"""`train`: fit a model on a dataset run; log curves, figures, checkpoint and MLflow model."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hyrax_mlops.config import Config
from hyrax_mlops.tracking import (
    DATASET_STAGES,
    ArtifactCache,
    StageRun,
    StageSpec,
    get_run,
    run_stage,
)

SECTIONS = ("data", "model", "train")
LAST = "checkpoints/last.pt"  # everything needed to continue, after every epoch
_RECON_EXAMPLES = 8


def check_config(cfg: Config) -> str | None:
    """What train checks from the config alone (run by `pipeline` before anything): the model
    and its arguments, and labels; returns a fingerprint of the labels file, if one is used."""
    from hyrax_mlops.config import require_path
    from hyrax_mlops.errors import ConfigError
    from hyrax_mlops.models import model_params, needs_labels
    from hyrax_mlops.stages._columns import check_label_columns

    model_params(cfg.model)
    if cfg.train.export_onnx:
        _check_exportable(cfg)
    if needs_labels(cfg.model) and not cfg.data.label_column:
        raise ConfigError(f"model '{cfg.model.name}' learns from labels: set data.label_column "
                          "to the catalog column holding each object's class (and "
                          "data.labels_file if the labels are in a separate table).")
    check_label_columns(cfg, None)
    if cfg.data.labels_file:
        from hyrax_mlops.data.dataset import sha256_file

        return sha256_file(require_path(cfg, "data.labels_file", "file"))
    return None


def _check_exportable(cfg: Config) -> None:
    """train.export_onnx for a model the ONNX export supports (by what its class reads)."""
    from hyrax_mlops.engine.onnx_export import require, unsupported
    from hyrax_mlops.errors import ConfigError
    from hyrax_mlops.models import resolve_model_class

    require("onnx", "onnxscript", "onnxruntime")  # before training, not after
    reason = unsupported(getattr(resolve_model_class(cfg.model.name), "modalities", ("image",)))
    if reason:
        raise ConfigError(f"train.export_onnx = true: {reason}. Fix: set "
                          f"train.export_onnx=false for model '{cfg.model.name}'.")


def check(cfg: Config, dataset_run_id: str) -> str | None:
    """Fail before any run exists; return a fingerprint of the labels file, if one is used."""
    labels = check_config(cfg)
    get_run(dataset_run_id, DATASET_STAGES)
    return labels


def run_name(cfg: Config, suffix: str = "") -> str:
    """e.g. "train-conv_autoencoder-ld16-e3", plus the train settings changed from the
    defaults and a suffix ("peel1" for peel's retrain in round 1)."""
    from hyrax_mlops.tracking import name_hint

    model = cfg.model.name.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
    latent = cfg.model.params().get("latent_dim")
    return name_hint("train", model, f"ld{latent}" if latent else "", f"e{cfg.train.epochs}",
                     cfg=cfg, changed={"train.lr": "lr", "data.batch_size": "bs",
                                       "train.seed": "s", "train.backend": ""}) + (
        f"-{suffix}" if suffix else "")


def run(cfg: Config, dataset: str, *, force: bool = False,
        parent_run_id: str | None = None, name_suffix: str = "") -> StageRun:
    labels = check(cfg, dataset)
    spec = StageSpec("train", SECTIONS, inputs={"dataset": dataset}, fingerprint=labels,
                     name=run_name(cfg, name_suffix))
    return run_stage(spec, cfg, lambda run_id: _train(cfg, dataset, run_id), force=force,
                     parent_run_id=parent_run_id)


def resume(run_id: str) -> StageRun:
    """Continue an interrupted train run, in the same run, from `checkpoints/last.pt`."""
    import mlflow
    import torch

    from hyrax_mlops.errors import LineageError
    from hyrax_mlops.tracking import TAG_INPUT, interrupted_run

    run, made_with = interrupted_run(run_id, "train")
    cfg = made_with.only(SECTIONS, "train")  # as the body saw it the first time
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=LAST)
    except Exception:
        raise LineageError(f"run '{run_id}' has no {LAST} yet (it stopped before its first "
                           "epoch ended): start it again instead.") from None
    state = torch.load(path, weights_only=True)
    dataset_run_id = run.data.tags[TAG_INPUT + "dataset"]
    spec = StageSpec("train", SECTIONS, inputs={"dataset": dataset_run_id})
    return run_stage(spec, cfg, lambda rid: _train(cfg, dataset_run_id, rid, state),
                     resume_run_id=run_id)


def _train(cfg: Config, dataset_run_id: str, run_id: str,
           resume_state: dict | None = None) -> dict[str, str]:
    import mlflow
    import torch

    from hyrax_mlops.data.provider import DataProvider
    from hyrax_mlops.engine import figures
    from hyrax_mlops.engine.inputs import serving_example
    from hyrax_mlops.engine.loop import evaluate_all, fit, resolve_device, seed_everything
    from hyrax_mlops.engine.serving import log_hyrax_model
    from hyrax_mlops.models import build_model, model_params

    seed_everything(cfg.train.seed)
    provider = DataProvider(dataset_run_id, cfg.data, cache=ArtifactCache.of(cfg))
    info = provider.data_info()
    params = model_params(cfg.model, info)
    model = build_model(cfg.model, provider.input_shape, info)
    sizes = {s: len(provider.rows(s)) for s in ("train", "val", "test")}
    mlflow.log_params({f"model_resolved.{k}": v for k, v in params.items()})
    if provider.labels is not None:
        mlflow.log_metric("n_unlabelled", provider.n_unlabelled)
    mlflow.log_params({"n_parameters": sum(p.numel() for p in model.parameters()),
                       "input_shape": list(provider.input_shape),
                       **{f"n_{s}": n for s, n in sizes.items()}})
    pin = resolve_device(cfg.train.device).type == "cuda"  # GPU copies overlap compute
    train_loader = provider.dataloader("train", shuffle=True, seed=cfg.train.seed,
                                       pin_memory=pin)
    val_loader = provider.dataloader("val", pin_memory=pin)

    def on_epoch(s) -> None:
        mlflow.log_metrics({"train_loss": s.train_loss, "val_loss": s.val_loss, "lr": s.lr,
                            "epoch_time_s": s.epoch_time_s, "samples_per_s": s.samples_per_s,
                            **s.extra}, step=s.epoch)

    with tempfile.TemporaryDirectory(prefix="hyrax-train-") as tmp:
        ckpt = Path(tmp) / "best.pt"
        if resume_state is not None:
            mlflow.set_tag("hyrax.resumed_from_epoch", str(resume_state["epoch"]))
        if cfg.train.backend == "ray":
            from hyrax_mlops.engine.ray_train import fit_on_ray
            from hyrax_mlops.tracking import tracking_uri

            result = fit_on_ray(cfg, provider, run_id, tracking_uri(), Path(tmp) / "ray", model,
                                resume_state)
            torch.save(model.state_dict(), ckpt)
        else:
            def on_state(state: dict) -> None:
                torch.save(state, Path(tmp) / "last.pt")
                mlflow.log_artifact(str(Path(tmp) / "last.pt"), "checkpoints")

            result = fit(model, train_loader, val_loader, cfg.train, ckpt, on_epoch,
                         resume=resume_state, on_state=on_state)
        mlflow.log_artifact(str(ckpt), "checkpoints")
        device = resolve_device(cfg.train.device)
        test = evaluate_all(model, provider.dataloader("test"), device)
        mlflow.log_metrics({"best_val_loss": result.best_val_loss, "best_epoch": result.best_epoch,
                            "test_loss": test.loss, "epochs_run": len(result.history),
                            "stopped_early": float(result.stopped_early),
                            **{f"test_{k}": v for k, v in test.parts.items()}})
        _log_figure(figures.loss_curve(result.history), "plots/loss_curve.png")
        _log_classification(model, provider, test, device)

        recon_fn = getattr(model, "reconstruct", None)
        if callable(recon_fn) and provider.input_shape:
            shown = (provider.rows("val") if sizes["val"] else provider.rows())[:_RECON_EXAMPLES]
            ds = provider.torch_dataset(None)
            x = torch.stack([ds[int(r)]["image"] for r in shown])
            model.eval()
            with torch.no_grad():
                y = recon_fn({"image": x.to(device)}).cpu()
            ids = provider.catalog["object_id"].to_numpy()[shown]
            _log_figure(figures.reconstructions(x.numpy(), y.numpy(), list(ids)),
                        "plots/reconstructions.png")

        model.cpu()
        # the model carries its best epoch's metrics (not the first's), best/test/final ones,
        # and two real raw stamps as input example (which gives it its signature)
        best = result.best_epoch if result.best_epoch >= 0 else len(result.history) - 1
        last = result.history[-1] if result.history else None
        info = log_hyrax_model(
            model, cfg.model.name, params, provider.input_shape, provider.normalizer, Path(tmp),
            cfg.train.register_as, step=max(best, 0),
            example=lambda: serving_example(provider, model),
            link_prefixes=("best_", "test_", "epochs_run", "stopped_early"),
            model_metrics={"final_train_loss": last.train_loss,
                           "final_val_loss": last.val_loss} if last else None)
    mlflow.set_tag("hyrax.model_uri", info.model_uri)
    if cfg.train.export_onnx:
        _export_onnx(model, provider, run_id, dataset_run_id, info.model_uri)
    return {"model_uri": info.model_uri}


def _export_onnx(model, provider, run_id: str, dataset_run_id: str, uri: str) -> None:
    """train.export_onnx: the model as onnx/model.onnx of this run, checked with onnxruntime
    against PyTorch on real objects of its dataset (a difference over the tolerance fails
    the run)."""
    from hyrax_mlops.engine import onnx_export
    from hyrax_mlops.tracking import say

    with tempfile.TemporaryDirectory(prefix="hyrax-onnx-") as tmp:
        exported = onnx_export.export(
            model, onnx_export.real_batch(provider), Path(tmp), normalizer=provider.normalizer,
            source={"run_id": run_id, "model_uri": uri, "dataset_run": dataset_run_id})
        onnx_export.log_export(run_id, exported)
    say(f"train: ONNX export {onnx_export.ARTIFACT} (max |onnx - torch| = "
        f"{exported.max_abs_diff:.2g} on {exported.info['check']['n_objects']} real objects, "
        f"tolerance {exported.tolerance:.2g})")


def _log_classification(model, provider, test, device) -> None:
    """Test metrics, confusion matrix and ROC of a classifier (on val if test is empty)."""
    import mlflow

    from hyrax_mlops.engine import figures
    from hyrax_mlops.engine.loop import evaluate_all
    from hyrax_mlops.engine.metrics import classification_metrics

    split = "test"
    if test.probs is None or not len(test.labels):
        split, test = "val", evaluate_all(model, provider.dataloader("val"), device)
    if test.probs is None or not len(test.labels):
        return
    classes = provider.classes
    mlflow.log_metrics(classification_metrics(test.probs, test.labels, classes,
                                              prefix=f"{split}_"))
    _log_figure(figures.confusion_matrix(test.labels, test.probs, classes,
                                         f"Confusion matrix ({split} split)"),
                "plots/confusion_matrix.png")
    _log_figure(figures.roc_curves(test.labels, test.probs, classes, f"ROC ({split} split)"),
                "plots/roc.png")


def _log_figure(fig, path: str) -> None:
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.log_figure(fig, path)
    plt.close(fig)
