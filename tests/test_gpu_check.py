"""The GPU path, exercised on the CPU: `benchmarks/gpu_check.py` runs end to end (its hyrax and
plain loops, both models, on the real XDF stamps), and the training loop trains in bf16 and in
fp16 (with its gradient scaler) and channels_last, as it would on a GPU."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

from hyrax_mlops.config import ModelConfig, TrainConfig
from hyrax_mlops.engine.inference import embed_all
from hyrax_mlops.engine.loop import fit
from hyrax_mlops.models import build_model
from hyrax_mlops.sources.xdf import xdf_stamps

ROOT = Path(__file__).resolve().parents[1]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_runs_on_the_cpu_and_reports_both_loops(tmp_path):
    gpu_check = load_gpu_check()
    report = gpu_check.main(["--smoke", "--out", str(tmp_path / "gpu.json")])
    assert (tmp_path / "gpu.json").read_text().strip().startswith("{")
    assert report["device"] == "cpu" and report["real_stamps"] == 1408
    assert set(report["models"]) == {"conv_autoencoder", "simclr"}
    for name, m in report["models"].items():
        for key in ("train_hyrax_samples_per_s", "train_plain_samples_per_s",
                    "infer_hyrax_samples_per_s", "infer_plain_samples_per_s"):
            assert m[key] > 0, (name, key)
        assert m["train_ratio"] == round(m["train_hyrax_samples_per_s"]
                                         / m["train_plain_samples_per_s"], 3)
        assert m["same_embeddings"] and m["loss_finite"], name
        assert m["gpu_util_note"] == "not a CUDA device"


def test_mixed_precision_and_channels_last_train_and_embed(tmp_path):
    stamps = torch.from_numpy(xdf_stamps(32, limit=64) / 255.0).float()
    data = [{"image": stamps[i:i + 16]} for i in range(0, 64, 16)]
    losses = {}
    for precision, channels_last in (("fp32", False), ("bf16", True), ("fp16", False)):
        torch.manual_seed(0)
        model = build_model(ModelConfig(name="conv_autoencoder"), (3, 32, 32))
        cfg = TrainConfig(epochs=3, lr=3e-3, precision=precision, channels_last=channels_last,
                          schedule="none", early_stopping_patience=0)
        result = fit(model, data, data[:1], cfg, tmp_path / f"{precision}.pt", progress=False)
        history = [h.train_loss for h in result.history]
        assert all(math.isfinite(v) for v in history) and history[-1] < history[0], precision
        emb, _ = embed_all(model, data, "cpu", precision, channels_last)
        assert emb.dtype.name == "float32" and emb.shape[0] == 64
        losses[precision] = history[-1]
    # the same model in another precision learns the same thing, to its rounding
    assert abs(losses["bf16"] - losses["fp32"]) < 0.1 * losses["fp32"]
