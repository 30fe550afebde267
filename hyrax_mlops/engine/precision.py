"""How a model computes on its device: mixed precision (`bf16`/`fp16` autocast, with a gradient
scaler for fp16), `channels_last` stamps, pinned host memory: what keeps a GPU busy.

One `Compute` carries those choices from the config (`train.precision`, `infer.precision`,
`*.channels_last`) to the training loop, inference and `benchmarks/gpu_check.py`, so the three
compute alike. On a CPU `bf16` and `fp16` run through CPU autocast (slower than fp32 on most
CPUs, but the same code path the GPU takes, which is what the tests exercise).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Compute:
    """Where and how a model computes."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision '{self.precision}': use one of {', '.join(PRECISIONS)}")

    @property
    def pin_memory(self) -> bool:
        """Page-locked host batches, so copies to the GPU overlap compute."""
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's precision (a no-op for fp32)."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 gradients scaled against underflow; disabled (a pass-through) otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on the device, in channels_last layout when asked."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A batch on the device (non-blocking from pinned memory); 4-D stamps channels_last."""
        out = {}
        for k, v in batch.items():
            v = v.to(self.device, non_blocking=self.pin_memory)
            if self.channels_last and v.dim() == 4:
                v = v.contiguous(memory_format=torch.channels_last)
            out[k] = v
        return out

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """No gradients, in the chosen precision."""
        with torch.inference_mode(), self.autocast():
            yield


def compute_for(device: torch.device, section) -> Compute:
    """The `Compute` a config section (`TrainConfig`, `InferConfig`) asks for on `device`."""
    return Compute(device, section.precision, section.channels_last)
