"""One TOML config, one table per stage, validated by a typed schema before any work starts.

Errors name the offending key and the closest valid one, so a typo never silently falls back
to a default. The resolved config is what every run logs (as a file and as flattened params).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import shlex
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hyrax_mlops.errors import ConfigError
from hyrax_mlops.redact import has_userinfo, redact

# Where the credentials of a URL-valued key belong instead of `user:password@` in the URL.
_CREDENTIALS_HOME = {
    "download.hsc.url": "HSC_SSP_CAS_USER / HSC_SSP_CAS_PASSWORD (download.hsc.user_env / "
                        "password_env), ~/.netrc or download.credentials_file",
    "download.rubin.url": "RSP_TOKEN (download.rubin.token_env), ~/.netrc or "
                          "download.credentials_file",
    "download.rubin.butler_repo": "the Butler's own credentials file (DAF_BUTLER_REPOSITORY_INDEX"
                                  ", ~/.lsst/db-auth.yaml) or AWS_* variables",
    "index.url": "CHROMA_TOKEN or CHROMA_TOKEN_FILE",
    "ray.address": "the cluster's own authentication (RAY_AUTH_TOKEN), not the address",
}


def _numeric(annotation: Any) -> bool:
    """int or float (possibly Optional): a TOML boolean must not pass for a number."""
    args = getattr(annotation, "__args__", None)
    if args:
        return any(_numeric(a) for a in args if a is not type(None))
    return annotation in (int, float)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools_as_numbers_or_secrets_in_urls(cls, value: Any, info: Any) -> Any:
        """`train.epochs = true` is not 1, and `http://user:pass@host` is never logged."""
        field = cls.model_fields.get(info.field_name)
        if isinstance(value, bool) and field is not None and _numeric(field.annotation):
            raise ValueError("this is a number, not true/false")
        if isinstance(value, str) and has_userinfo(value):
            key = _SECTION_KEYS.get(cls, "") + info.field_name
            home = _CREDENTIALS_HOME.get(key, "an environment variable or a credentials file")
            raise ValueError("must not hold credentials (user:password@ would be "
                             f"logged with every run): remove them from the URL and give "
                             f"them through {home}")
        return value


class TrackingConfig(_Section):
    experiment: str = Field("hyrax", min_length=1, pattern=r"\S")
    cache_dir: str = ".hyrax/cache"


class PipelineConfig(_Section):
    dataset: Literal["download", "ingest"] = "download"
    analyse: bool = False


class HSCConfig(_Section):
    """HSC-SSP `das_cutout` (PDR3): the service's own options."""

    url: str = "https://hsc-release.mtk.nao.ac.jp/das_cutout/pdr3"
    rerun: Literal["pdr3_wide", "pdr3_dud", "pdr3_dud_rev"] = "pdr3_wide"
    type: Literal["coadd", "coadd/bg"] = "coadd"
    rects_per_request: int = Field(990, ge=1, le=990)
    user_env: str = "HSC_SSP_CAS_USER"
    password_env: str = "HSC_SSP_CAS_PASSWORD"


class RubinConfig(_Section):
    """The Rubin Science Platform: ObsCore (TAP) -> DataLink -> SODA cutout, or a Butler."""

    url: str = "https://data.lsst.cloud"
    dataset_type: str = "deepCoadd_calexp"
    token_env: str = "RSP_TOKEN"
    butler_repo: str = ""
    butler_collections: list[str] = []


class DownloadConfig(_Section):
    source: str = "xdf"
    catalog: str = ""
    bands: list[str] = []
    layers: list[Literal["image", "mask", "variance"]] = ["image"]
    limit: int = Field(0, ge=0)
    stamp_size: int = Field(64, ge=8)
    pixel_scale: float = Field(0.0, ge=0)
    shard_size: int = Field(1024, ge=1)
    concurrency: int = Field(8, ge=1)
    retries: int = Field(6, ge=1)
    backoff_s: float = Field(0.5, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    credentials_file: str = ""
    hsc: HSCConfig = HSCConfig()
    rubin: RubinConfig = RubinConfig()
    detect_threshold: float = Field(3.0, gt=0)
    min_area: int = Field(8, ge=1)

    @field_validator("layers")
    @classmethod
    def _image_first(cls, v: list[str]) -> list[str]:
        if not v or v[0] != "image" or len(set(v)) != len(v):
            raise ValueError('layers must start with "image" and not repeat, e.g. '
                             '["image", "variance"]')
        return v


class IngestConfig(_Section):
    cutouts_dir: str = ""
    catalog: str = ""
    file_column: str = "file"
    bands: list[str] = []
    shape: list[int] = []
    nan_policy: Literal["reject", "zero"] = "reject"
    shard_size: int = Field(1024, ge=1)
    lightcurve_column: str = "lightcurve_file"
    spectrum_column: str = "spectrum_file"

    @field_validator("shape")
    @classmethod
    def _shape_is_chw(cls, v: list[int]) -> list[int]:
        if v and (len(v) != 3 or min(v) < 1):
            raise ValueError("shape must be [] or [bands, height, width] of positive integers")
        return v


class DataConfig(_Section):
    mode: Literal["dataset", "stream"] = "dataset"
    stream_cache_dir: str = ".hyrax/stream"
    stream_cache_gb: float = Field(5.0, gt=0)
    stream_prefetch: int = Field(4, ge=0)
    normalize: Literal["none", "asinh", "log", "zscore"] = "asinh"
    split: list[float] = [0.8, 0.1, 0.1]
    split_seed: int = 0
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(0, ge=0)
    cache_gb: float = Field(2.0, ge=0)
    label_column: str = ""
    labels_file: str = ""
    features: list[str] = []
    lightcurve_points: int = Field(128, ge=2)
    spectrum_grid: list[float] = [3500.0, 10500.0, 512]

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, v: list[float]) -> list[float]:
        if len(v) != 3 or min(v) < 0 or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError("split must be three fractions [train, val, test] that sum to 1")
        return v

    @field_validator("spectrum_grid")
    @classmethod
    def _grid_is_min_max_pixels(cls, v: list[float]) -> list[float]:
        if len(v) != 3 or not 0 < v[0] < v[1] or v[2] < 2 or v[2] != int(v[2]):
            raise ValueError("spectrum_grid must be [min Å, max Å, pixels] with 0 < min < max "
                             "and a whole number of pixels >= 2, e.g. [3500.0, 10500.0, 512]")
        return v

    @field_validator("features")
    @classmethod
    def _features_are_columns_or_log10(cls, v: list[str]) -> list[str]:
        bad = [f for f in v if ":" in f and not f.startswith("log10:")]
        if bad:
            raise ValueError(f"features {bad}: give a catalog column or log10:COLUMN; the "
                             "only transform is log10")
        return v


class ModelConfig(BaseModel):
    """`name` picks the model; every other key is a constructor argument of that model.

    Those extra keys are checked against the model's signature by `models.check_model_config`.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str = "conv_autoencoder"

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RayConfig(_Section):
    address: str = ""
    num_cpus: int = Field(0, ge=0)


class TrainConfig(_Section):
    backend: Literal["local", "ray"] = "local"
    workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    max_failures: int = Field(0, ge=-1)
    epochs: int = Field(20, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["none", "cosine", "step"] = "cosine"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.5, gt=0)
    early_stopping_patience: int = Field(5, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    seed: int = 42
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    register_as: str = ""


class SearchParam(_Section):
    """One dimension of a sweep: uniform/loguniform/int over [low, high], or a choice."""

    type: Literal["uniform", "loguniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @field_validator("values")
    @classmethod
    def _non_empty(cls, v):
        if v is not None and not v:
            raise ValueError("a choice needs at least one value")
        return v

    def model_post_init(self, _context: Any) -> None:
        if self.type == "choice" and self.values is None:
            raise ValueError("type 'choice' needs values = [...]")
        if self.type != "choice" and (self.low is None or self.high is None
                                      or self.low >= self.high):
            raise ValueError(f"type '{self.type}' needs low < high")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs low > 0")


class TuneConfig(_Section):
    num_samples: int = Field(8, ge=1)
    max_concurrent: int = Field(2, ge=1)
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    seed: int = 0
    grace_period: int = Field(1, ge=1)
    reduction_factor: int = Field(2, ge=2)
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    register_as: str = ""
    space: dict[str, SearchParam] = {}


class InferConfig(_Section):
    backend: Literal["local", "ray"] = "local"
    workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    model: str = ""
    batch_size: int = Field(256, ge=1)
    device: Literal["cpu", "cuda", "auto"] = "cpu"


class IndexConfig(_Section):
    backend: str = "chroma"
    url: str = ""
    path: str = ""
    metric: Literal["cosine", "l2", "ip"] = "cosine"
    vectors: Literal["auto", "embeddings"] = "auto"
    ef_construction: int = Field(200, ge=1)
    ef_search: int = Field(200, ge=1)
    max_neighbors: int = Field(32, ge=2)
    ivf_min_rows: int = Field(50_000, ge=1)
    ivf_partitions: int = Field(0, ge=0)
    pq_sub_vectors: int = Field(0, ge=0)
    nprobes: int = Field(20, ge=1)
    refine_factor: int = Field(10, ge=1)
    metadata_columns: list[str] = []


class ReduceConfig(_Section):
    methods: list[str] = ["umap", "pca"]
    dims: list[int] = [2, 3]
    color_by: str = "flux"
    seed: int = 42
    umap_n_neighbors: int = Field(15, ge=2)
    umap_min_dist: float = Field(0.1, ge=0)
    umap_metric: str = "cosine"
    umap_fit_sample: int = Field(100_000, ge=100)
    umap_batch: int = Field(100_000, ge=1)

    @field_validator("methods")
    @classmethod
    def _some_methods(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError('methods must list each reducer once, at least one, e.g. '
                             '["umap", "pca"]: a reduce run without a map cannot be opened')
        return v

    @field_validator("dims")
    @classmethod
    def _dims_2_or_3(cls, v: list[int]) -> list[int]:
        if not v or any(d not in (2, 3) for d in v):
            raise ValueError("dims must be a non-empty list of 2 and/or 3")
        return v


class AnalyseConfig(_Section):
    """What `analyse` computes from an infer run: outliers, clusters, crossmatch, quality."""

    analyses: list[str] = ["outliers", "clusters"]
    seed: int = 42
    # outliers
    outlier_methods: list[Literal["auto", "knn", "lof", "iforest", "recon", "residual",
                                  "pixels"]] = ["auto"]
    outlier_k: int = Field(10, ge=1)
    top_fraction: float = Field(0.05, gt=0, le=1)
    gallery: int = Field(25, ge=0)
    # clusters
    cluster_method: Literal["hdbscan", "dbscan"] = "hdbscan"
    cluster_on: Literal["auto", "latent", "map", "catalog"] = "auto"
    cluster_columns: list[str] = []
    cluster_umap_first: bool = False
    min_cluster_size: int = Field(10, ge=2)
    eps: float = Field(0.5, gt=0)
    min_samples: int = Field(5, ge=1)
    # crossmatch
    reference: str = ""
    reference_ra: str = Field("ra", min_length=1)
    reference_dec: str = Field("dec", min_length=1)
    match_radius_arcsec: float = Field(1.0, gt=0)
    match_method: Literal["nearest", "greedy"] = "nearest"
    reference_label: str = ""
    reference_mag: str = ""
    catalog_mag: str = ""
    # quality
    label_column: str = ""
    quality_k: int = Field(10, ge=1)

    @field_validator("analyses", "outlier_methods", "cluster_columns")
    @classmethod
    def _unique(cls, v: list[str], info) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"{info.field_name} repeats a name: {v}")
        if info.field_name != "cluster_columns" and not v:
            raise ValueError(f"{info.field_name} needs at least one name")
        return v

    @field_validator("outlier_methods")
    @classmethod
    def _auto_alone(cls, v: list[str]) -> list[str]:
        if "auto" in v and len(v) > 1:
            raise ValueError('"auto" chooses the methods itself: use it alone, or list methods')
        return v

    @model_validator(mode="after")
    def _consistent(self) -> AnalyseConfig:
        if self.cluster_on == "catalog" and not self.cluster_columns:
            raise ValueError('cluster_on = "catalog" needs analyse.cluster_columns, the catalog '
                             'columns to cluster on, e.g. ["ra", "dec", "redshift"]')
        if self.cluster_umap_first and self.cluster_on != "catalog":
            raise ValueError('analyse.cluster_umap_first applies to cluster_on = "catalog" '
                             "only (a map is already 2D; cluster_on = \"auto\" clusters a UMAP "
                             "map of the latent space)")
        if self.catalog_mag and not self.reference_mag:
            raise ValueError("analyse.catalog_mag is compared with the reference's magnitude: "
                             "set analyse.reference_mag too")
        return self


class Config(_Section):
    tracking: TrackingConfig = TrackingConfig()
    ray: RayConfig = RayConfig()
    pipeline: PipelineConfig = PipelineConfig()
    download: DownloadConfig = DownloadConfig()
    ingest: IngestConfig = IngestConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()
    infer: InferConfig = InferConfig()
    index: IndexConfig = IndexConfig()
    reduce: ReduceConfig = ReduceConfig()
    analyse: AnalyseConfig = AnalyseConfig()

    def section_hash(self, sections: Iterable[str]) -> str:
        """A short, stable hash of the named sections: the identity of a stage's settings."""
        payload = {name: getattr(self, name).model_dump(mode="json") for name in sorted(sections)}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_toml(self) -> str:
        return dump_toml(self.model_dump(mode="json"))

    def flat(self, sections: Iterable[str] | None = None) -> dict[str, str]:
        """`section.key -> value` strings, for MLflow params."""
        data = self.model_dump(mode="json")
        names = sorted(sections) if sections is not None else list(data)
        return {
            f"{sec}.{key}": json.dumps(val) if isinstance(val, (list, dict)) else str(val)
            for sec in names
            for key, val in data[sec].items()
        }


def _section_keys() -> dict[type, str]:
    """Each section class -> its dotted prefix (`download.hsc.`), for messages."""
    out: dict[type, str] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, _Section):
                out.setdefault(ann, f"{prefix}{name}.")
                walk(ann, f"{prefix}{name}.")

    walk(Config, "")
    return out


_SECTION_KEYS: dict[type, str] = {}


# --------------------------------------------------------------------------- loading


def default_config_text() -> str:
    return resources.files("hyrax_mlops").joinpath("defaults.toml").read_text()


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | Iterable[str] | str | None = None,
) -> Config:
    """Shipped defaults, then the user's TOML file, then overrides; validated as a whole.

    `overrides` is a mapping (`{"train.epochs": 5}`), a list of `KEY=VALUE` strings or one
    string of them separated by spaces or semicolons (the MLproject parameter).
    """
    data = tomllib.loads(default_config_text())
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' does not exist. Fix: pass an existing TOML file.")
        try:
            user = tomllib.loads(p.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"config file '{p}' is not valid TOML: it is not UTF-8 text. "
                              "Fix: pass a TOML text file.") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file '{p}' is not valid TOML: {exc}") from exc
        _merge(data, user, prefix="")
    for key, value in _parse_overrides(overrides).items():
        _set_dotted(data, key, value)
    return validate(data)


def with_overrides(cfg: Config, overrides: Mapping[str, Any] | Iterable[str] | str | None
                   ) -> Config:
    """`cfg` with `overrides` applied, validated as a whole like a loaded config."""
    if not overrides:
        return cfg
    data = cfg.model_dump(mode="json")
    for key, value in _parse_overrides(overrides).items():
        _set_dotted(data, key, value)
    return validate(data)


def validate(data: Mapping[str, Any]) -> Config:
    if not _SECTION_KEYS:
        _SECTION_KEYS.update(_section_keys())
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, data)) from None
    check_registered(cfg)
    return cfg


# keys that name registered components: key -> (registry module, attribute); plugins included
REGISTERED_KEYS = {
    "download.source": ("hyrax_mlops.sources", "SOURCES"),
    "model.name": ("hyrax_mlops.models", "MODELS"),  # or an import path, package.module:Class
    "index.backend": ("hyrax_mlops.vectors", "VECTOR_BACKENDS"),
    "reduce.methods": ("hyrax_mlops.analysis.reducers", "REDUCERS"),
    "analyse.analyses": ("hyrax_mlops.analysis.analyses", "ANALYSES"),
}


def check_registered(cfg: Config) -> None:
    """Every name a key gives is registered (built-in or a plugin's), when the config loads:
    `index.backend = "chromaa"` fails here, naming the key and what exists."""
    import importlib

    for key, (module, attr) in REGISTERED_KEYS.items():
        section, field = key.split(".")
        value = getattr(getattr(cfg, section), field)
        names = value if isinstance(value, list) else [value]
        if key == "model.name":  # an import path is resolved when the model is built
            names = [n for n in names if ":" not in n]
        if not names:
            continue
        registry = getattr(importlib.import_module(module), attr)
        for name in names:
            try:
                registry.get(name)  # its error names what is registered
            except KeyError as exc:
                raise ConfigError(f"config key '{key}': {exc.args[0]}") from None


def _merge(base: dict, new: Mapping, prefix: str) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value, f"{prefix}{key}.")
        else:
            base[key] = value


def _parse_overrides(overrides: Mapping[str, Any] | Iterable[str] | str | None) -> dict[str, Any]:
    if not overrides:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    if isinstance(overrides, str):
        overrides = [p for chunk in overrides.split(";") for p in shlex.split(chunk)]
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override '{item}' is not KEY=VALUE. Fix: write it like train.epochs=5."
            )
        key, raw = item.split("=", 1)
        out[key.strip()] = parse_value(raw.strip())
    return out


def parse_value(raw: str) -> Any:
    """A TOML literal (5, 1e-3, true, [16, 32], "text"), else the raw text as a string.

    A list of bare words, `[umap,pca]` (what a shell leaves of `['umap','pca']`), is a list of
    strings.
    """
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if raw.startswith("[") and raw.endswith("]"):
            inner = raw[1:-1].strip()
            return [parse_value(item.strip()) for item in inner.split(",")] if inner else []
        return raw


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            if child is None:
                hint = _closest(part, [k for k, v in node.items() if isinstance(v, dict)])
                raise ConfigError(f"unknown config table '{where}' in override '{key}'{hint}")
            raise ConfigError(f"'{where}' is a value, not a table, in override '{key}'")
        node = child
    node[parts[-1]] = value


def _closest(word: str, options: Iterable[str], prefix: str = "") -> str:
    options = sorted(options)
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    if match:
        return f". Did you mean '{prefix}{match[0]}'?"
    return f". Valid keys: {', '.join(options)}" if options else ""


def _explain(exc: ValidationError, data: Mapping[str, Any]) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc)
        if err["type"] == "extra_forbidden":
            parent = _schema_for(loc[:-1])
            valid = list(parent.model_fields) if parent else []
            where = f"[{'.'.join(loc[:-1])}]" if len(loc) > 1 else "the top level"
            prefix = ".".join(loc[:-1]) + "." if len(loc) > 1 else ""
            lines.append(
                f"unknown config key '{key}'{_closest(loc[-1], valid, prefix)} "
                f"(valid keys in {where}: {', '.join(valid)})"
            )
        else:
            given = err.get("input")  # a whole table (a check across keys) is not repeated
            got = "" if isinstance(given, Mapping) else f" (got {redact(repr(given))})"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"config key '{key}': {msg}{got}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _schema_for(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type):
            return None
        if not issubclass(field.annotation, BaseModel):
            return None
        model = field.annotation
    return model


# --------------------------------------------------------------------------- helpers


def dump_toml(data: Mapping[str, Any]) -> str:
    """TOML for our config shape: one table per section, values inline (None is left out)."""
    out: list[str] = []
    for table, body in data.items():
        out.append(f"[{table}]")
        out += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in body.items() if v is not None]
        out.append("")
    return "\n".join(out)


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return json.dumps(v)  # JSON numbers and basic strings are valid TOML
    if isinstance(v, Mapping):
        items = [f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


def require_path(cfg: Config, key: str, kind: Literal["file", "dir"]) -> Path:
    """Check a path-valued key before any run is created; return it resolved."""
    section, name = key.split(".")
    value = getattr(getattr(cfg, section), name)
    if not value:
        raise ConfigError(f"config key '{key}' is required for this stage. Fix: --set {key}=PATH")
    p = Path(value).expanduser().resolve()
    ok = p.is_file() if kind == "file" else p.is_dir()
    if not ok:
        raise ConfigError(
            f"config key '{key}' points to '{value}', which is not an existing {kind}. "
            f"Fix: --set {key}=PATH to an existing {kind}."
        )
    return p
