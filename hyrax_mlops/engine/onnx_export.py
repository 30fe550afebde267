"""A trained model as ONNX, beside its MLflow model: what `infer` computes (`embed`, and
`predict` for a classifier; `inference.model_outputs`) exported with named inputs and outputs
and a dynamic batch axis, then run with onnxruntime on real inputs of the model's dataset and
checked against PyTorch before it is kept.

The graph takes what the model takes in `infer`: stamps normalised with the model's own
transform (`normalization` in the export's JSON, the same as the bundle's), not raw pixels.
Supported: models that read stamps alone (one input, "stamps", (batch, bands, h, w)) or
catalog features alone ("tabular" and "tabular_mask", (batch, features)); the multimodal fusion
model, which reads several series with masks, is refused with a message saying so.

Files, as artifacts of the train run under `onnx/`:
    model.onnx   the graph, weights inside (one file)
    model.json   input/output names and shapes, opset, versions, the tolerance, the measured
                 difference and the transform
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hyrax_mlops.errors import ConfigError, HyraxError

ONNX_DIR = "onnx"
MODEL_FILE, INFO_FILE = "model.onnx", "model.json"
ARTIFACT, INFO_ARTIFACT = f"{ONNX_DIR}/{MODEL_FILE}", f"{ONNX_DIR}/{INFO_FILE}"
TAG = "hyrax.onnx"  # on the train run: the export's artifact path
METRIC = "onnx_max_abs_diff"  # on the train run: max |onnx - torch| over the check
# The check: each output of onnxruntime within TOLERANCE x max(1, max |torch output|) of
# PyTorch's, on N_CHECK real objects at each of CHECK_BATCHES (and all N_CHECK at once).
# Measured (float32 rounding): the demo's trained conv_autoencoder 1e-5 at output scale 16
# (6.6e-7 of it), untrained image and tabular models 2e-8..1.2e-6 at scales 0.04..3: the
# margin is >= 150x.
TOLERANCE = 1e-4
N_CHECK = 64
CHECK_BATCHES = (1, 7)
OUTPUTS = ("embedding", "probabilities")
# the batch keys a model reads, by what it reads, and each one's ONNX input name
_BATCH_KEYS = {"image": ("image",), "tabular": ("tabular", "tabular_mask")}
_INPUT_NAMES = {"image": "stamps"}
SUPPORTED = ("models that read stamps alone (conv_autoencoder, simclr, byol, stamp_classifier "
             "and your own image models) or catalog features alone (tabular_classifier)")


class OnnxError(HyraxError):
    """A model that cannot be exported to ONNX, or whose export disagrees with PyTorch."""


def require(*modules: str) -> None:
    """The optional ONNX libraries, or a HyraxError saying how to install them."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise HyraxError(f"ONNX needs {', '.join(missing)}, not installed here. Fix: pip install "
                         "'hyrax-mlops[onnx]'")


def unsupported(kinds: Sequence[str]) -> str | None:
    """Why a model reading `kinds` cannot be exported (None: it can)."""
    kinds = tuple(kinds)
    if len(kinds) == 1 and kinds[0] in _BATCH_KEYS:
        return None
    return (f"a model reading {' + '.join(kinds) or 'nothing'} cannot be exported to ONNX: "
            f"supported are {SUPPORTED}")


def input_keys(model: nn.Module) -> list[tuple[str, str]]:
    """(batch key, ONNX input name) of each input the model's graph takes, in order."""
    from hyrax_mlops.engine.inputs import model_kinds

    kinds = model_kinds(model)
    reason = unsupported(kinds)
    if reason:
        raise OnnxError(reason + ". Fix: use infer.engine=torch for this model.")
    return [(key, _INPUT_NAMES.get(key, key)) for key in _BATCH_KEYS[kinds[0]]]


class _Outputs(nn.Module):
    """The model as infer calls it: positional tensors in, (embedding[, probabilities]) out."""

    def __init__(self, model: nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.model, self.keys = model, tuple(keys)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from hyrax_mlops.engine.inference import model_outputs

        z, probs = model_outputs(self.model, dict(zip(self.keys, inputs, strict=True)))
        return (z,) if probs is None else (z, probs)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's progress prints and its warnings about optional ops off the terminal."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    levels = {n: logging.getLogger(n).level for n in names}
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


@dataclass
class OnnxExport:
    """An export written to `folder` (model.onnx, model.json) and its check."""

    folder: Path
    info: dict[str, Any]

    @property
    def max_abs_diff(self) -> float:
        return float(self.info["check"]["max_abs_diff"])

    @property
    def tolerance(self) -> float:
        return float(self.info["check"]["tolerance"])


def export(model: nn.Module, batch: dict[str, torch.Tensor], folder: Path, *,
           normalizer: Any = None, source: dict[str, Any] | None = None) -> OnnxExport:
    """Export `model` (as infer calls it) to `folder`/model.onnx, check it with onnxruntime
    against PyTorch on `batch` (real objects, prepared as infer prepares them; two or more),
    and write model.json; raise OnnxError when they differ by more than the tolerance."""
    require("onnx", "onnxscript", "onnxruntime")
    import onnx

    keys = input_keys(model)
    model = model.cpu().eval()
    args = tuple(batch[k].detach().cpu().float().contiguous() for k, _ in keys)
    if len(args[0]) < 2:
        raise OnnxError("the ONNX export needs two or more real objects to check it on (a "
                        "batch of one would fix the batch size in the graph)")
    wrapped = _Outputs(model, [k for k, _ in keys]).eval()
    with torch.no_grad():
        n_outputs = len(wrapped(*args))
    names, outputs = [n for _, n in keys], list(OUTPUTS[:n_outputs])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODEL_FILE
    batch_axis = torch.export.Dim("batch", min=1)
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(wrapped, args, str(path), input_names=names, output_names=outputs,
                              dynamo=True, external_data=False,
                              dynamic_shapes=(tuple({0: batch_axis} for _ in args),))
    except Exception as exc:  # torch.export cannot trace the model (data-dependent code...)
        first = next((line for line in str(exc).splitlines() if "Error" in line), str(exc))
        raise OnnxError(f"torch.onnx.export failed on model {type(model).__name__}: "
                        f"{first.strip()[:500]}. Fix: use infer.engine=torch for this model."
                        ) from exc
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    opset = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))

    def io_spec(values) -> list[dict[str, Any]]:
        return [{"name": v.name, "dtype": "float32",
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]}
                for v in values]

    check = verify(path, wrapped, args, names)
    info = {
        "file": MODEL_FILE,
        "inputs": [{**spec, "batch_key": key} for spec, (key, _) in
                   zip(io_spec(graph.graph.input), keys, strict=True)],
        "outputs": io_spec(graph.graph.output),
        "opset": int(opset),
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "check": check,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "normalization": None if normalizer is None else normalizer.to_dict(),
        "note": ("inputs are prepared as infer prepares them: stamps normalised with "
                 "`normalization` (raw pixels in, per band), catalog features standardised"),
        **(source or {}),
    }
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
    if not check["max_abs_diff"] <= check["tolerance"]:
        raise OnnxError(
            f"the ONNX export differs from PyTorch by up to {check['max_abs_diff']:.3g} on "
            f"{check['n_objects']} real objects (tolerance {check['tolerance']:.3g}): it is "
            "not kept. Fix: use infer.engine=torch for this model, and report it.")
    return OnnxExport(folder, info)


def verify(path: Path, wrapped: nn.Module, args: Sequence[torch.Tensor],
           names: Sequence[str]) -> dict[str, Any]:
    """onnxruntime against PyTorch on `args` whole and on its first 1 and 7 objects: the
    largest absolute difference of any output, and the tolerance it is held to."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    n = len(args[0])
    sizes = sorted({*(s for s in CHECK_BATCHES if s < n), n})
    diffs: dict[str, float] = {}
    scale = 0.0
    for size in sizes:
        part = [a[:size] for a in args]
        with torch.no_grad():
            expected = [t.float().numpy() for t in wrapped(*part)]
        try:
            got = session.run(None, {name: a.numpy()
                                     for name, a in zip(names, part, strict=True)})
        except Exception as exc:  # e.g. a batch axis the trace fixed to the example's size
            raise OnnxError(f"onnxruntime cannot run the ONNX export on a batch of {size} "
                            f"({str(exc).splitlines()[0][:300]}): it is not kept. Fix: use "
                            "infer.engine=torch for this model.") from exc
        for want, have in zip(expected, got, strict=True):
            if tuple(have.shape) != tuple(want.shape):
                raise OnnxError(f"the ONNX export gives shape {list(have.shape)} where PyTorch "
                                f"gives {list(want.shape)} (batch of {size})")
        diffs[str(size)] = max(float(np.max(np.abs(h - w), initial=0.0))
                               for w, h in zip(expected, got, strict=True))
        scale = max([scale] + [float(np.max(np.abs(w), initial=0.0)) for w in expected])
    worst = max(diffs.values())
    return {"n_objects": n, "batch_sizes": sizes, "max_abs_diff": worst,
            "max_abs_diff_by_batch": diffs, "output_scale": scale,
            "tolerance": TOLERANCE * max(1.0, scale),
            "rule": f"max|onnx - torch| <= {TOLERANCE:g} * max(1, max|torch|), every output",
            "onnxruntime": ort.__version__}


def check_rows(n_rows: int, n: int = N_CHECK) -> np.ndarray:
    """Up to `n` row numbers spread over a dataset of `n_rows`: the objects the check runs on
    (bright to faint in a catalog sorted by flux)."""
    return np.unique(np.linspace(0, n_rows - 1, min(n, n_rows)).astype(np.int64))


def real_batch(provider, n: int = N_CHECK) -> dict[str, torch.Tensor]:
    """Up to `n` real objects of a provider's dataset, spread over it, prepared as infer
    prepares them (the provider's transform): what an export is checked on."""
    rows = check_rows(len(provider.rows()), n)
    return provider.torch_dataset(None, cache=False, drop_failed=True).__getitems__(list(rows))


def log_export(run_id: str, exported: OnnxExport) -> None:
    """The export's files as artifacts `onnx/` of `run_id`, its difference as a metric and
    its path as a tag (the run may be finished: logged through the client)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.log_artifacts(run_id, str(exported.folder), ONNX_DIR)
    client.log_metric(run_id, METRIC, exported.max_abs_diff)
    client.set_tag(run_id, TAG, ARTIFACT)


def find_export(run_id: str) -> dict[str, Any] | None:
    """The model.json of a run's ONNX export, or None when it has none."""
    import tempfile

    import mlflow
    from mlflow.tracking import MlflowClient

    from hyrax_mlops.tracking.artifacts import local_artifact

    names = {Path(f.path).name for f in MlflowClient().list_artifacts(run_id, ONNX_DIR)}
    if not {MODEL_FILE, INFO_FILE} <= names:
        return None
    local = local_artifact(run_id, INFO_ARTIFACT)
    if local is not None:
        return json.loads(local.read_text())
    with tempfile.TemporaryDirectory(prefix="hyrax-onnx-") as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=INFO_ARTIFACT,
                                                   dst_path=tmp)
        return json.loads(Path(path).read_text())


def missing_export(uri: str, run_id: str) -> str:
    """What to do about a model that has no ONNX export."""
    return (f"model '{uri}' has no ONNX export ({ARTIFACT} of run {run_id}). Fix: "
            f"hyrax-mlops export {run_id} --onnx (or train with --set train.export_onnx=true), "
            "or set infer.engine=torch.")


def session(run_id: str, device: str = "cpu"):
    """An onnxruntime session of a run's model.onnx (its bytes checked against model.json);
    CUDA where asked for and onnxruntime has it."""
    import tempfile

    require("onnxruntime")
    import mlflow
    import onnxruntime as ort

    from hyrax_mlops.tracking.artifacts import local_artifact

    info = find_export(run_id)
    if info is None:
        raise OnnxError(missing_export(f"runs:/{run_id}/model", run_id))
    local = local_artifact(run_id, ARTIFACT)
    if local is not None:
        data = local.read_bytes()
    else:
        with tempfile.TemporaryDirectory(prefix="hyrax-onnx-") as tmp:
            data = Path(mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=ARTIFACT, dst_path=tmp)).read_bytes()
    if hashlib.sha256(data).hexdigest() != info.get("sha256"):
        raise OnnxError(f"{ARTIFACT} of run {run_id} is not the file its {INFO_FILE} describes "
                        f"(changed since). Fix: hyrax-mlops export {run_id} --onnx --force")
    available = ort.get_available_providers()
    providers = ["CPUExecutionProvider"]
    if device in ("cuda", "auto") and "CUDAExecutionProvider" in available:
        providers.insert(0, "CUDAExecutionProvider")
    elif device == "cuda":
        raise ConfigError("infer.device=cuda with infer.engine=onnx, but this onnxruntime has "
                          "no CUDA provider. Fix: pip install onnxruntime-gpu, or set "
                          "infer.device=cpu.")
    return ort.InferenceSession(data, providers=providers), info


def embed_all_onnx(sess, info: dict[str, Any], loader) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 (n, dim) embeddings in the loader's order, and (n, classes) probabilities when
    the export has them (else None): `inference.embed_all`, run by onnxruntime."""
    from hyrax_mlops.data.prefetch import prefetch
    from hyrax_mlops.progress import tqdm

    inputs = [(i["batch_key"], i["name"]) for i in info["inputs"]]
    chunks: list[list[np.ndarray]] = [[] for _ in info["outputs"]]
    for batch in tqdm(prefetch(loader), desc="infer (onnx)", unit="batch", total=len(loader)):
        feed = {name: batch[key].numpy().astype(np.float32, copy=False) for key, name in inputs}
        for out, value in zip(chunks, sess.run(None, feed), strict=True):
            out.append(value)
    joined = [np.concatenate(c).astype(np.float32) for c in chunks]
    emb = joined[0].reshape(len(joined[0]), -1)
    return emb, (joined[1] if len(joined) > 1 else None)
