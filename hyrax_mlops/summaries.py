"""What each stage prints when it ends: a few lines about what its run made, read back from the
finished run (metrics, tags, params), and what to open next.

One formatter per stage, `fmt(run) -> list[str]`; a stage module may add its own with
`@formatter("stage")`. Formatters only read the run: a reused run summarises the same as a
fresh one. A formatter that fails gives no lines, never a failed command.
"""

from __future__ import annotations

import math
from collections.abc import Callable

FORMATTERS: dict[str, Callable[[object], list[str]]] = {}
# tags a peel run records, one per round: hyrax.peel.round<r>.<stage> = run id
TAG_PEEL_ROUND = "hyrax.peel.round"


def formatter(stage: str):
    def register(fn: Callable[[object], list[str]]):
        FORMATTERS[stage] = fn
        return fn

    return register


def summarize(stage: str, run_id: str) -> list[str]:
    """The summary lines of a finished run (none for a stage without a formatter)."""
    if stage not in FORMATTERS:  # a stage module may register its own: import it once
        import importlib

        try:
            importlib.import_module(f"hyrax_mlops.stages.{stage}")
        except ModuleNotFoundError:
            return []
    fn = FORMATTERS.get(stage)
    if fn is None:
        return []
    try:
        import mlflow

        return [line for line in fn(mlflow.get_run(run_id)) if line]
    except Exception as exc:  # noqa: BLE001 - a summary is a courtesy: never fail a finished
        from hyrax_mlops.redact import redact  # stage, but say why

        return [redact(f"(no summary: {type(exc).__name__}: {exc})")[:300]]


def num(value, digits: int = 4) -> str:
    """A metric as a short number: 0.01234, 1.2e-05, 300."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    value = float(value)
    if value.is_integer() and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.{digits}g}"


def _int(metrics: dict, key: str) -> int | None:
    v = metrics.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)


# --------------------------------------------------------------------------- datasets


def _dataset_lines(run) -> list[str]:
    m, t = run.data.metrics, run.data.tags
    n, asked, failed = _int(m, "n_objects"), _int(m, "n_requested"), _int(m, "n_failed")
    shape = t.get("hyrax.dataset.shape", "")
    line = f"{n} of {asked} objects" if asked is not None else f"{n} objects"
    if shape:
        line += f", stamps {shape}" + (f" ({t['hyrax.dataset.bands']})"
                                       if t.get("hyrax.dataset.bands") else "")
    if t.get("hyrax.dataset.mode") == "stream":
        line += ", streamed (cutouts fetched while training)"
    lines = [line]
    if failed:
        reasons = {k[len("n_failed."):]: int(v) for k, v in m.items()
                   if k.startswith("n_failed.")}
        why = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
        lines.append(f"failed: {failed}" + (f" ({why})" if why else "")
                     + "; every one with its reason in download/failures.csv or "
                     "dataset/manifest.json")
    else:
        lines.append("failed: 0")
    return lines


@formatter("download")
def _download(run) -> list[str]:
    source = run.data.params.get("download.source", "")
    lines = _dataset_lines(run)
    if source:
        lines[0] = f"{source}: {lines[0]}"
    return lines


@formatter("ingest")
def _ingest(run) -> list[str]:
    return _dataset_lines(run)


@formatter("filter")
def _filter(run) -> list[str]:
    removed = _int(run.data.metrics, "n_removed")
    return [f"removed {removed}; " + _dataset_lines(run)[0]]


# --------------------------------------------------------------------------- models

_CLASSIFIER = ("accuracy", "balanced_accuracy", "roc_auc")


def early_stop_reason(patience: int | str | None, metric: str = "val_loss") -> str:
    return f"no {metric} improvement in {patience} epochs (train.early_stopping_patience)"


@formatter("train")
def _train(run) -> list[str]:
    m, p = run.data.metrics, run.data.params
    ran, planned = _int(m, "epochs_run"), p.get("train.epochs", "?")
    line = f"epochs: {ran} of {planned}"
    if m.get("stopped_early"):
        line += f", stopped early: {early_stop_reason(p.get('train.early_stopping_patience'))}"
    lines = [line]
    if "best_val_loss" in m:
        best = _int(m, "best_epoch")
        lines.append(f"best: epoch {best} (of 0..{(ran or 1) - 1}), val_loss "
                     f"{num(m['best_val_loss'])}; test_loss {num(m.get('test_loss'))}")
    lines += _classifier_lines(m)
    uri = run.data.tags.get("hyrax.model_uri")
    if uri:
        lines.append(f"model: {uri}")
    onnx = run.data.tags.get("hyrax.onnx")
    if onnx:  # engine.onnx_export: beside the model, checked against PyTorch
        lines.append(f"onnx: {onnx} (max |onnx - torch| {num(m.get('onnx_max_abs_diff'), 2)}; "
                     "infer with --set infer.engine=onnx)")
    return lines


def _classifier_lines(m: dict) -> list[str]:
    for split in ("test", "val"):
        shown = [f"{k} {num(m[f'{split}_{k}'], 3)}" for k in _CLASSIFIER if f"{split}_{k}" in m]
        if shown:
            return [f"classifier ({split} split): " + ", ".join(shown)]
    return []


def _param(text: str) -> str:
    """A logged param as written, a long float shortened (0.0012520653814999472 -> 0.00125)."""
    try:
        value = float(text)
    except ValueError:
        return text
    return text if value.is_integer() or len(text) <= 8 else f"{value:.3g}"


@formatter("tune")
def _tune(run) -> list[str]:
    m, p = run.data.metrics, run.data.params
    counts = ", ".join(f"{_int(m, f'n_{s}')} {s}" for s in ("completed", "pruned", "failed")
                       if m.get(f"n_{s}"))
    metric = p.get("tune.metric", "val_loss")
    best = {k[len("best."):]: v for k, v in p.items() if k.startswith("best.")}
    lines = [f"trials: {_int(m, 'n_trials')} ({counts})"]
    if f"best_{metric}" in m:
        lines.append(f"best {metric} {num(m[f'best_{metric}'])} with "
                     + ", ".join(f"{k}={_param(v)}" for k, v in sorted(best.items())))
    lines.append("table: artifacts tune/results.csv and tune/parallel_coordinates.html")
    return lines


# --------------------------------------------------------------------------- embeddings


@formatter("infer")
def _infer(run) -> list[str]:
    m = run.data.metrics
    lines = [f"{_int(m, 'n_objects')} objects embedded, dim {_int(m, 'embedding_dim')} "
             "(embeddings.parquet)"]
    if m.get("samples_per_s"):
        lines[0] += f", {round(m['samples_per_s']):,} objects/s"
    predicted = {k[len("n_predicted_"):]: int(v) for k, v in m.items()
                 if k.startswith("n_predicted_")}
    if predicted:
        lines.append("predicted: " + ", ".join(f"{k} {v}" for k, v in sorted(predicted.items())))
    if m.get("stream_failed_objects"):
        lines.append(f"{_int(m, 'stream_failed_objects')} objects without a cutout left out")
    return lines


@formatter("index")
def _index(run) -> list[str]:
    import json

    m, p = run.data.metrics, run.data.params
    recall = next(((k, v) for k, v in m.items() if k.startswith("recall_at_")), None)
    where = json.loads(run.data.tags.get("hyrax.index.location", "{}") or "{}")
    backend = where.get("backend") or p.get("index.backend", "?")
    lines = [f"{_int(m, 'n_vectors')} vectors in {backend} ({p.get('index.metric', '?')})"]
    statistics = run.data.tags.get("hyrax.input.statistics")
    if run.data.tags.get("hyrax.index.vectors") == "joined" and statistics:
        lines.append(f"each the embedding joined with its anomaly signature (the stamp "
                     f"statistics of analyse run {statistics}): look-alikes of an artefact "
                     "are artefacts like it")
    if recall:
        lines.append(f"recall@{recall[0][len('recall_at_'):]} {num(recall[1], 3)} "
                     "against exact search")
    return lines


@formatter("reduce")
def _reduce(run) -> list[str]:
    m = run.data.metrics
    maps = sorted(k[:-len("_seconds")] for k in m if k.endswith("_seconds"))
    shown = ", ".join(k.replace("_", " ").upper() for k in maps)
    return [f"maps: {shown} of {_int(m, 'n_objects')} objects",
            "open: reductions.html (artifact of this run; plots/*.png, reductions/*.parquet)"]


# --------------------------------------------------------------------------- peel


def peel_rounds(run) -> dict[int, dict[str, str]]:
    """round -> {stage: run id} from a peel run's tags."""
    rounds: dict[int, dict[str, str]] = {}
    for key, value in run.data.tags.items():
        if key.startswith(TAG_PEEL_ROUND):
            r, _, stage = key[len(TAG_PEEL_ROUND):].partition(".")
            if r.isdigit():
                rounds.setdefault(int(r), {})[stage] = value
    return dict(sorted(rounds.items()))


@formatter("peel")
def _peel(run) -> list[str]:
    rounds = peel_rounds(run)
    m = run.data.metrics
    lines = []
    for r, ids in rounds.items():
        lines.append(f"round {r}: train {ids.get('train', '-')}  analyse "
                     f"{ids.get('analyse', '-')}  (removed {ids.get('removed', '?')})")
    start = run.data.tags.get("hyrax.input.analyse")
    analysed = [start] + [ids["analyse"] for ids in rounds.values() if "analyse" in ids]
    if len(analysed) > 1 and start:
        lines.append("compare the rounds: hyrax-mlops compare " + " ".join(analysed))
    if "val_loss" in m:
        lines.append(f"last round: val_loss {num(m['val_loss'])}"
                     + "".join(f", {k} {num(v, 3)}" for k, v in sorted(m.items())
                               if k.startswith("quality.")))
    lines.append("table: artifact peel/rounds.csv")
    return lines
