"""The command line: `hyrax-mlops STAGE -c hyrax.toml --set train.epochs=5`.

MLproject entry points (`entrypoints/stage.py STAGE`) call `entrypoint(STAGE)`, which takes
`--config`, `--overrides`, `--force` and the stage's input runs as MLflow passes them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

from hyrax_mlops.errors import HyraxError
from hyrax_mlops.redact import redact
from hyrax_mlops.registry import KINDS, registry_of

# the kinds (registry.KINDS) peel's --help lists, and the singular names `list` also takes
_PEEL_KINDS = ("analyses",)
_KIND_ALIASES = {"source": "sources", "model": "models", "backbone": "backbones",
                 "augmentation": "augmentations", "backend": "backends",
                 "vector-backends": "backends", "vector_backends": "backends",
                 "vectors": "backends", "reducer": "reducers", "analysis": "analyses"}


def registered(kind: str) -> list[str]:
    return registry_of(kind).names()


class _Parser(argparse.ArgumentParser):
    """A parser whose --help ends with the registered names it takes (read when asked)."""

    def __init__(self, *args, kinds: tuple[str, ...] = (), **kw) -> None:
        kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kw)
        self.kinds = kinds

    def format_help(self) -> str:
        if self.kinds and not self.epilog:
            lines = ["registered (see also `hyrax-mlops list KIND`):"]
            for kind in self.kinds:
                try:
                    names = ", ".join(registered(kind))
                except Exception as exc:  # noqa: BLE001 - help must print anyway
                    names = f"(cannot list: {type(exc).__name__})"
                lines.append(f"  {kind} ({KINDS[kind].key}): {names}")
            self.epilog = "\n".join(lines)
        return super().format_help()


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="TOML config (default: shipped defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=5 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hyrax-mlops", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    from hyrax_mlops.stages.registry import ordered

    for stage in ordered():
        p = sub.add_parser(stage.name, help=f"run (or reuse) the {stage.name} stage",
                           kinds=stage.kinds)
        _config_args(p)
        p.add_argument("--force", action="store_true", help="re-run even if a matching run exists")
        for given in stage.inputs:
            p.add_argument(given.flag, dest=given.name, help=given.help)
        if stage.name == "export":
            _export_args(p)
    p = sub.add_parser("search", help="nearest neighbours from an index, pipeline or infer run")
    p.add_argument("--run", required=True, help="index, pipeline or infer run id")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--id", help="object_id to search from")
    group.add_argument("--vector", help=".npy file holding one embedding vector")
    group.add_argument("--ids", help="comma-separated object_ids: objects most like these "
                                     "(their centroid; --each for one table per id)")
    group.add_argument("--fits", help="a FITS cutout, embedded with the run's own model")
    group.add_argument("--spectrum", help="a spectrum (FITS table WAVE/FLUX, or CSV wave,flux), "
                                          "embedded with the run's own model")
    group.add_argument("--lightcurve", help="a light curve (CSV or Parquet: time, band, mag or "
                                            "flux), embedded with the run's own model")
    p.add_argument("--each", action="store_true", help="with --ids: neighbours of each id")
    p.add_argument("-k", type=int, default=10, help="number of neighbours (default 10)")
    p.add_argument("--columns", default="", help="catalog columns to show, comma-separated")
    _config_args(p)
    p = sub.add_parser("compare", help="rank infer (or analyse) runs by latent quality "
                                       "(quality.knn_purity, then silhouette), val_loss beside")
    p.add_argument("runs", nargs="+", metavar="RUN", help="infer or analyse run ids")
    p = sub.add_parser("peel", help="remove the top outliers (or a selection), retrain, "
                                    "analyse again; N rounds nested under one run",
                       kinds=_PEEL_KINDS)
    _config_args(p)
    p.add_argument("--analyse", help="analyse run to start from (default: make or reuse it "
                                     "from the config)")
    p.add_argument("--remove", help="CSV/Parquet/FITS with object_id: remove these in round 1 "
                                    "(e.g. a selection exported from the app)")
    p.add_argument("--rounds", type=int, default=1, help="rounds of remove/retrain/analyse")
    p.add_argument("--force", action="store_true", help="re-run even if a matching run exists")
    p = sub.add_parser("register", help="register a train/tune run's model in the MLflow "
                                        "Model Registry")
    p.add_argument("run_id", help="train or tune run id")
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--alias", help="alias to point at this version, e.g. champion")
    p = sub.add_parser("lineage", help="print the chain of runs behind a run")
    p.add_argument("run_id")
    p = sub.add_parser("config", help="print the resolved config")
    _config_args(p)
    p = sub.add_parser("list", help="list registered sources, models, backbones, "
                                    "augmentations, vector backends, reducers, analyses")
    p.add_argument("kind", nargs="?", metavar="KIND",
                   help=f"only these: {', '.join(KINDS)} (default: all)")
    p = sub.add_parser("app", help="open the web app (runs, explorer, compare)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--url-prefix", default="", help="serve every page under this path "
                                                    "(/hyrax/), for a reverse proxy that "
                                                    "passes it through")
    p.add_argument("--token-file", help="file holding the access token (or HYRAX_APP_TOKEN); "
                                        "required to bind beyond loopback")
    _config_args(p)
    return parser


def _export_args(p: argparse.ArgumentParser) -> None:
    """`export RUN` (an infer run: its table, as --embeddings) and `export TRAIN_RUN --onnx`
    (its model as ONNX, beside the MLflow model)."""
    p.add_argument("run", nargs="?", metavar="RUN",
                   help="an infer run (its table, as --embeddings), or with --onnx a train run")
    p.add_argument("--onnx", action="store_true",
                   help="export the train run's model to ONNX (onnx/model.onnx of that run), "
                        "checked with onnxruntime against PyTorch on real stamps")


def _export(args: argparse.Namespace) -> int | None:
    """`export` with a positional RUN or --onnx; None: the export stage as registered."""
    if not args.onnx:
        if args.run and args.embeddings and args.run != args.embeddings:
            raise HyraxError("export: give the infer run once (RUN or --embeddings)")
        args.embeddings = args.embeddings or args.run
        return None
    if not args.run or args.embeddings or args.analysis:
        raise HyraxError("export --onnx takes one train run: hyrax-mlops export TRAIN_RUN "
                         "--onnx (not --embeddings or --analysis)")
    import hyrax_mlops as hm

    exported = hm.export_onnx(args.run, args.config, args.overrides, force=args.force)
    print(redact(str(exported)))
    for line in exported.next_steps():
        print(f"  next: {line}")
    return 0


def _run_stage(args: argparse.Namespace) -> int:
    import hyrax_mlops as hm
    from hyrax_mlops.stages.registry import STAGES

    if args.command == "export":
        done = _export(args)
        if done is not None:
            return done
    kw = {"force": args.force}
    for given in STAGES.get(args.command).inputs:
        if getattr(args, given.name, None):
            kw[given.name] = getattr(args, given.name)
    result = getattr(hm, args.command)(args.config, args.overrides, **kw)
    if args.command == "pipeline":
        print(redact(result.summary()))
        print(_next_steps(result, _example_id(result, hm.load_config(args.config,
                                                                      args.overrides))))
    else:
        print(redact(str(result)))
        for line in _stage_next(result):
            print(f"  next: {line}")
    return 0


def _stage_next(result) -> list[str]:
    """What to run after a single stage, with its run id filled in."""
    rid = result.run_id
    if result.stage == "analyse":
        return _analyse_next(rid)
    from hyrax_mlops.stages.registry import STAGES

    if result.stage in STAGES:  # a stage may say itself what comes next
        own = getattr(STAGES.get(result.stage).code(), "next_steps", None)
        if own is not None:
            return own(rid)
    return {
        "download": [f"hyrax-mlops train --dataset {rid}"],
        "ingest": [f"hyrax-mlops train --dataset {rid}"],
        "train": [f"hyrax-mlops infer --train-run {rid}"],
        "tune": [f"hyrax-mlops infer --set infer.model=runs:/{rid}/model"],
        "infer": [f"hyrax-mlops index --embeddings {rid}",
                  f"hyrax-mlops reduce --embeddings {rid}"],
        "index": [f"hyrax-mlops search --run {rid} --id OBJECT_ID -k 10"],
        "reduce": ["hyrax-mlops app      # the maps, interactive"],
    }.get(result.stage, [])


def _analyse_next(rid: str) -> list[str]:
    """After an analyse run that measured stamp statistics: index them with its embeddings."""
    from hyrax_mlops.stages.index import measured_statistics
    from hyrax_mlops.tracking import TAG_INPUT, get_run

    run = get_run(rid)
    if not measured_statistics(run):
        return []
    return [f"hyrax-mlops index --embeddings {run.data.tags[TAG_INPUT + 'embeddings']} "
            f"--analysis {rid}   # look-alikes that depart the same way"]


def _example_id(result, cfg) -> str:
    """The first object of the pipeline's dataset: a search the user can paste as it is."""
    import pyarrow.parquet as pq

    from hyrax_mlops.tracking import ArtifactCache

    try:
        path = ArtifactCache.of(cfg).fetch(result["dataset"].run_id, "dataset/catalog.parquet")
        first = pq.ParquetFile(path).read_row_group(0, columns=["object_id"])
        return str(first.column(0)[0])
    except Exception:  # only a hint: never fail a finished pipeline over it
        return "OBJECT_ID"


def _experiment_id(run_id: str) -> str:
    import mlflow

    try:
        return mlflow.get_run(run_id).info.experiment_id
    except Exception:  # only a hint
        return "0"


def _next_steps(result, example_id: str = "OBJECT_ID") -> str:
    from hyrax_mlops.redact import redact
    from hyrax_mlops.tracking import tracking_uri

    # the store's address without its user:password@ (the terminal is often logged)
    idx, red, uri = result["index"].run_id, result["reduce"].run_id, redact(tracking_uri())
    # MLflow 3.17's UI opens experiments in its GenAI view unless the link asks for runs
    page = f"/#/experiments/{_experiment_id(result.run_id)}?workflowType=machine_learning"
    ui = (f"  open {uri.rstrip('/')}{page}      # the team's MLflow server\n"
          if uri.startswith("http") else
          f"  mlflow ui --backend-store-uri {uri}\n"
          f"  then open http://127.0.0.1:5000{page}\n")
    return (
        f"\npipeline run {result.run_id}\n"
        "Look at the results:\n"
        f"{ui}"
        f"  hyrax-mlops lineage {result.run_id}     # every run behind this one\n"
        f"  hyrax-mlops search --run {idx} --id {shlex.quote(example_id)} -k 10\n"
        f"  maps: artifacts of run {red} (reductions.html, plots/*.png)"
    )


def _search(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    import hyrax_mlops as hm
    from hyrax_mlops.search import Searcher
    from hyrax_mlops.tracking import say

    cfg = hm.load_config(args.config, args.overrides)
    searcher = Searcher(args.run, cfg)
    say(f"search: index run {searcher.index_run_id}, "
        + ("embeddings joined with their anomaly signature (look-alikes depart alike)"
           if searcher.signature is not None else "embeddings alone"))
    if args.id:
        tables = searcher.by_id([args.id], args.k)
    elif args.ids:
        tables = searcher.by_examples([i.strip() for i in args.ids.split(",") if i.strip()],
                                      args.k, each=args.each)
    elif args.fits:
        tables = [searcher.by_cutout(args.fits, args.k)]
    elif args.spectrum:
        tables = [searcher.by_spectrum(args.spectrum, args.k)]
    elif args.lightcurve:
        tables = [searcher.by_lightcurve(args.lightcurve, args.k)]
    else:
        tables = searcher.by_vector(np.load(args.vector, allow_pickle=False), args.k)
    cols = ["rank", "object_id", "distance"]
    from hyrax_mlops.analysis.outliers import RESIDUAL_MAP

    images = [RESIDUAL_MAP]  # PNG data URIs: for notebooks and the app, not the terminal
    shown_first = ["outlier_score", "outlier_why"]  # why a look-alike is one, when analysed
    for table in tables:
        table = table.assign(distance=table["distance"].clip(lower=0).round(6))  # float noise
        rest = [c for c in table.columns if c not in cols + images + shown_first]
        extra = [c for c in args.columns.split(",") if c] or (
            [c for c in shown_first if c in table.columns] + rest)[:4]
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(table[cols + [c for c in extra if c in table.columns]].to_string(index=False))
    return 0


def _app(args: argparse.Namespace) -> int:
    import importlib

    import hyrax_mlops as hm

    cfg = hm.load_config(args.config, args.overrides)
    try:  # the app is the outermost layer: imported only when asked for
        server = importlib.import_module("dash_app.server")
    except ImportError as exc:
        raise HyraxError(f"the app needs its extras ({exc}). Fix: pip install "
                         "'hyrax-mlops[app]'") from None
    server.serve(args.host, args.port, args.token_file, cfg, prefix=args.url_prefix or None)
    return 0


def _compare(args: argparse.Namespace) -> int:
    import pandas as pd

    import hyrax_mlops as hm

    table = hm.compare(args.runs)
    cols = ["rank", "run", "infer_run", "label", "knn_purity", "knn_purity_chance", "silhouette",
            "map_knn_purity", "val_loss", "model_run"]
    if (table["run"] == table["infer_run"]).all():
        cols.remove("infer_run")
    shown = table[cols].rename(columns={"knn_purity_chance": "chance"})
    shown = shown.rename(columns=lambda c: c.replace("_", " "))
    with pd.option_context("display.width", 250, "display.max_columns", 20,
                           "display.float_format", "{:.4f}".format):
        print(shown.to_string(index=False, na_rep="-"))
    labels = set(table["label"].dropna()) - {""}
    if len(labels) > 1:
        print(f"note: these runs were scored against different labels ({', '.join(labels)}): "
              "their purities are not comparable.")
    if table["knn_purity"].isna().any():
        print("note: runs without quality.knn_purity have not been analysed with \"quality\" "
              "(hyrax-mlops analyse --embeddings RUN --set analyse.analyses=[quality] "
              "--set analyse.label_column=COLUMN).")
    return 0


def _list(kind: str | None = None) -> int:
    """`list`: every registry, one line each; `list KIND`: that one's names, one a line."""
    if kind is None:
        for name in KINDS:
            title = "vector backends" if name == "backends" else name
            print(f"{title}: {', '.join(registered(name))}")
        return 0
    key = _KIND_ALIASES.get(kind.lower(), kind.lower())
    if key not in KINDS:
        raise HyraxError(f"`hyrax-mlops list {kind}`: no such kind. Fix: one of "
                         f"{', '.join(KINDS)} (or none, for all)")
    for name in registered(key):
        print(name)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from hyrax_mlops.quiet import quiet_mlflow

    quiet_mlflow()  # before any MLflow import: no artifact bars, no type-hint warnings
    args = build_parser().parse_args(argv)
    try:
        if args.command in _stage_names():
            return _run_stage(args)
        if args.command == "search":
            return _search(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "lineage":
            import hyrax_mlops as hm

            print(hm.lineage(args.run_id))
            return 0
        if args.command == "peel":
            import hyrax_mlops as hm

            print(redact(str(hm.peel(args.config, args.overrides, analyse=args.analyse,
                                     rounds=args.rounds, remove=args.remove,
                                     force=args.force))))
            return 0
        if args.command == "register":
            from hyrax_mlops.model_registry import register

            print(register(args.run_id, args.name, args.alias))
            return 0
        if args.command == "app":
            return _app(args)
        if args.command == "config":
            import hyrax_mlops as hm

            print(hm.load_config(args.config, args.overrides).to_toml())
            return 0
        return _list(args.kind)
    except HyraxError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:  # a library's own error: one line, no secrets (traceback on demand)
        if os.environ.get("HYRAX_TRACEBACK"):
            raise
        print(f"error: {redact(f'{type(exc).__name__}: {exc}')[:2000]}\n(unexpected: run "
              "again with HYRAX_TRACEBACK=1 for the traceback, and please report it)",
              file=sys.stderr)
        return 1


def _stage_names() -> list[str]:
    from hyrax_mlops.stages.registry import STAGES

    return STAGES.names()


def entrypoint(stage: str, argv: Sequence[str] | None = None) -> int:
    """MLproject entry point: `--config`, `--overrides "a.b=1 c.d=2"`, `--force true|false`
    and `--<input> RUN` for each input run the stage takes (stages.registry; "" = made or
    reused from the config), run as the CLI runs them."""
    return main(entrypoint_argv(stage, argv))


def entrypoint_argv(stage: str, argv: Sequence[str] | None = None) -> list[str]:
    """The CLI's arguments for an MLproject entry point's parameters."""
    from hyrax_mlops.stages.registry import STAGES

    inputs = STAGES.get(stage).inputs
    p = argparse.ArgumentParser(prog=f"entrypoints/stage.py {stage}")
    p.add_argument("--config", default="")
    p.add_argument("--overrides", default="")
    p.add_argument("--force", default="false")
    for given in inputs:
        p.add_argument(f"--{given.name}", default="", help=given.help)
    args = p.parse_args(argv)
    cli = [stage]
    for given in inputs:
        if getattr(args, given.name):
            cli += [given.flag, getattr(args, given.name)]
    for item in shlex.split(args.overrides.replace(";", " ")):
        cli += ["--set", item]
    if args.config:
        cli += ["--config", args.config]
    if args.force.lower() in ("1", "true", "yes"):
        cli.append("--force")
    return cli


if __name__ == "__main__":
    sys.exit(main())
