"""One TOML config, one table per stage, validated by a typed schema before any work starts.

Errors name the offending key and the closest valid one, so a typo never silently falls back
to a default. The resolved config is what every run logs (as a file and as flattened params).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import json
import shlex
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import tomllib
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from hyrax_mlops.errors import ConfigError
from hyrax_mlops.redact import has_userinfo, redact
from hyrax_mlops.registry import KINDS

# Where the credentials of a URL-valued key belong instead of `user:password@` in the URL.
_CREDENTIALS_HOME = {
    "download.hsc.url": "HSC_SSP_CAS_USER / HSC_SSP_CAS_PASSWORD (download.hsc.user_env / "
                        "password_env), ~/.netrc or download.credentials_file",
    "download.rubin.url": "RSP_TOKEN (download.rubin.token_env), ~/.netrc or "
                          "download.credentials_file",
    "download.rubin.butler_repo": "the Butler's own credentials file (DAF_BUTLER_REPOSITORY_INDEX"
                                  ", ~/.lsst/db-auth.yaml) or AWS_* variables",
    "index.url": "CHROMA_TOKEN or CHROMA_TOKEN_FILE (chroma), QDRANT_API_KEY or "
                 "QDRANT_API_KEY_FILE (qdrant)",
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


def unique_names(v: list[str], key: str) -> list[str]:
    """A list of names given once each, at least one (analyses, outlier methods)."""
    if len(set(v)) != len(v):
        raise ValueError(f"{key} repeats a name: {v}")
    if not v:
        raise ValueError(f"{key} needs at least one name")
    return v


class ComponentConfig(_Section):
    """The keys a component owns (a source, a vector backend, an analysis, a plugin's),
    declared as its `config_class`: types, ranges and defaults, checked by `load_config`."""


class _Components(_Section):
    """A section some of whose keys belong to registered components (plugins included):
    each component's `config_class` (a ComponentConfig) declares, checks and defaults them.

    `_selector` names the key that picks one component, whose keys alone are allowed (as
    `index.backend`); without one, every registered component's keys are (as `analyse`,
    which runs a list of analyses). `_nested`: each component's keys sit in a sub-table
    named after it (`[download.hsc]`)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    _kind: ClassVar[str]  # the extension point (registry.KINDS) whose components own keys
    _selector: ClassVar[str | None] = None
    _nested: ClassVar[bool] = False

    def _registered(self):
        from hyrax_mlops.registry import registry_of

        return registry_of(self._kind)

    def _owners(self, every: bool = False) -> dict[str, type[BaseModel]]:
        """component name -> its config class: the selected one, or every registered one."""
        registry = self._registered()
        names = registry.names() if every or not self._selector \
            else [getattr(self, self._selector)]
        found = ((name, getattr(registry.get(name), "config_class", None)) for name in names)
        return {name: cls for name, cls in found if cls is not None}

    @model_validator(mode="after")
    def _component_keys(self) -> _Components:
        prefix = _SECTION_KEYS.get(type(self), "")
        given = dict(self.__pydantic_extra__ or {})
        try:
            owners = self._owners()
        except KeyError as exc:  # the selector names nothing registered: say what is
            raise ValueError(f"config key '{prefix}{self._selector}': {exc}") from None
        values: dict[str, Any] = {}
        for name, cls in owners.items():
            _SECTION_KEYS[cls] = f"{prefix}{name}." if self._nested else prefix  # messages
            if self._nested:
                mine, where = given.get(name) or {}, f"{prefix}{name}."
                if not isinstance(mine, Mapping):
                    raise ValueError(f"'{prefix}{name}' is a table of {name}'s keys, not a value")
            else:
                mine, where = {k: v for k, v in given.items() if k in cls.model_fields}, prefix
            try:
                obj = cls.model_validate(mine)
            except ValidationError as exc:
                raise ValueError(_component_errors(exc, where, name)) from None
            if self._nested:
                values[name] = obj
            else:
                values.update(obj.model_dump())
        unknown = sorted(set(given) - set(values))
        if unknown:
            raise ValueError(self._unknown(unknown, owners, prefix))
        self.__pydantic_extra__.clear()
        self.__pydantic_extra__.update(values)
        return self

    def _unknown(self, unknown: list[str], owners: dict[str, type[BaseModel]],
                 prefix: str) -> str:
        elsewhere = {k: name for name, cls in self._owners(every=True).items()
                     if name not in owners for k in ([name] if self._nested else cls.model_fields)}
        lines = []
        moved = {k: name for name, cls in self._owners(every=True).items()
                 for k in cls.model_fields} if self._nested else {}
        for key in unknown:
            if key in moved:  # a component's key given at the section's top level
                lines.append(f"'{prefix}{key}' is now '{prefix}{moved[key]}.{key}': move it "
                             f"into the [{prefix}{moved[key]}] table (its owner's keys)")
            elif key in elsewhere and self._selector:
                lines.append(f"'{prefix}{key}' is a key of {self._selector} "
                             f"'{elsewhere[key]}', not of '{getattr(self, self._selector)}'")
            else:
                owned = owners if self._nested else [k for c in owners.values()
                                                     for k in c.model_fields]
                valid = [*type(self).model_fields, *owned]
                lines.append(f"unknown config key '{prefix}{key}'"
                             f"{_closest(key, valid, prefix)}")
        return "; ".join(lines)


def _component_errors(exc: ValidationError, prefix: str, owner: str) -> str:
    out = []
    for err in exc.errors():
        key = prefix + ".".join(str(p) for p in err["loc"]) if err["loc"] \
            else prefix.rstrip(".")  # a check across keys
        if err["type"] == "extra_forbidden":
            out.append(f"unknown config key '{key}' ({owner} has no such key)")
        else:
            given = err.get("input")
            got = "" if isinstance(given, Mapping) else f" (got {redact(repr(given))})"
            out.append(f"config key '{key}' ({owner}): "
                       f"{err['msg'].removeprefix('Value error, ')}{got}")
    return "; ".join(out)


class TrackingConfig(_Section):
    experiment: str = Field("hyrax", min_length=1, pattern=r"\S")
    cache_dir: str = ".hyrax/cache"


class PipelineConfig(_Section):
    dataset: Literal["download", "ingest"] = "download"
    analyse: bool = False


class DownloadConfig(_Components):
    """Where a dataset is downloaded from. A source's own keys sit in a table named after it
    (`[download.hsc]`, `[download.rubin]`), declared by the source (its `config_class`)."""

    _kind: ClassVar[str] = "sources"
    _nested: ClassVar[bool] = True

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
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16: mixed precision (autocast)
    channels_last: bool = False  # stamps and convolutions in NHWC layout (faster on GPUs)
    register_as: str = ""
    export_onnx: bool = False  # also write onnx/model.onnx (checked against PyTorch)


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
    engine: Literal["torch", "onnx"] = "torch"  # "onnx": the train run's onnx/model.onnx
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16: autocast (torch engine)
    channels_last: bool = False  # stamps in NHWC layout (faster convolutions on GPUs)


class IndexConfig(_Components):
    """Where embeddings are indexed; the backend's own keys (HNSW's, IVF's) are declared
    by the backend (`vectors.chroma`, `vectors.lance`, `vectors.qdrant`: its `config_class`)."""

    _kind: ClassVar[str] = "backends"
    _selector: ClassVar[str | None] = "backend"

    backend: str = "chroma"
    url: str = ""
    path: str = ""
    metric: Literal["cosine", "l2", "ip"] = "cosine"
    vectors: Literal["auto", "embeddings"] = "auto"
    metadata_columns: list[str] = []


class ReduceConfig(_Components):
    """Which maps `reduce` makes. A reducer's own keys (UMAP's `umap_*`) are declared by the
    reducer (its `config_class`, analysis/reducers.py); any registered reducer's may be set."""

    _kind: ClassVar[str] = "reducers"

    methods: list[str] = ["umap", "pca"]
    dims: list[int] = [2, 3]
    color_by: str = "flux"
    seed: int = 42

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


class AnalyseConfig(_Components):
    """What `analyse` computes from an infer run. Each analysis declares its own keys
    (`analysis.outliers`, `.clusters`, `.crossmatch`, `.quality`: its `config_class`); a
    key of any registered analysis may be set, whichever `analyses` lists."""

    _kind: ClassVar[str] = "analyses"

    analyses: list[str] = ["outliers", "clusters"]
    seed: int = 42

    @field_validator("analyses")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return unique_names(v, "analyses")


# Where and how runs execute, not what they compute: every stage may read them, and none
# hashes them into its runs' identity.
INFRASTRUCTURE = ("tracking", "ray")


class UndeclaredConfigError(RuntimeError):
    """A stage read a config key outside the sections it declares: a bug in the stage (its
    runs would be reused when that key changes), not something a user can fix."""


class _Sealed:
    """A section a stage did not declare, in its view of the config (`Config.only`): reading
    a key raises, except the keys it declared one by one (`data.mode`)."""

    def __init__(self, section: str, real: BaseModel, stage: str, declared: tuple[str, ...],
                 keys: frozenset[str] = frozenset()) -> None:
        self._section, self._real, self._stage = section, real, stage
        self._declared, self._keys = declared, keys

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name.startswith("_"):  # copy, pickle and repr probes
            raise AttributeError(name)
        if name in self._keys:
            return getattr(self._real, name)
        raise UndeclaredConfigError(
            f"stage '{self._stage}' read config key '{self._section}.{name}' but declares only "
            f"{', '.join(self._declared) or 'no section'}: add '{self._section}' (or "
            f"'{self._section}.{name}') to its SECTIONS, so that its runs are told apart by it")

    def __repr__(self) -> str:
        return f"<section '{self._section}' not declared by stage '{self._stage}'>"


class Config(_Section):
    tracking: TrackingConfig = TrackingConfig()
    ray: RayConfig = RayConfig()
    pipeline: PipelineConfig = PipelineConfig()
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    ingest: IngestConfig = IngestConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()
    infer: InferConfig = InferConfig()
    index: IndexConfig = Field(default_factory=IndexConfig)
    reduce: ReduceConfig = Field(default_factory=ReduceConfig)
    analyse: AnalyseConfig = Field(default_factory=AnalyseConfig)

    # a stage's view (`only`): the sections it declared and its name; None: the whole config
    _view: tuple[tuple[str, ...], str] | None = PrivateAttr(None)

    @property
    def _shown(self) -> dict[str, frozenset[str] | None] | None:
        """Each section a view shows -> the keys it shows (None: all of them)."""
        if self._view is None:
            return None
        return {**_shown_keys(self._view[0]), **dict.fromkeys(INFRASTRUCTURE)}

    def only(self, sections: Iterable[str], stage: str) -> Config:
        """The view a stage's body gets: its declared `sections` ("data", or one key,
        "data.mode") and the INFRASTRUCTURE ones; reading any other key raises
        UndeclaredConfigError, so a stage cannot depend on what its identity does not hash."""
        declared = tuple(sections)
        shown = {**_shown_keys(declared), **dict.fromkeys(INFRASTRUCTURE)}
        values: dict[str, Any] = {}
        for name in type(self).model_fields:
            real = self.section(name)
            if name in shown and shown[name] is None:
                values[name] = real
            else:
                values[name] = _Sealed(name, real, stage, declared, shown.get(name) or frozenset())
        view = type(self).model_construct(**values)
        view._view = (declared, stage)
        return view

    def section(self, name: str) -> BaseModel:
        """A section's settings, in a stage's view too (for the code that logs them)."""
        value = self.__dict__[name]
        return value._real if isinstance(value, _Sealed) else value

    def as_dict(self) -> dict[str, Any]:
        """The JSON of what this config shows: all of it, or a stage's view of it."""
        if self._shown is None:
            return self.model_dump(mode="json")
        out = {}
        for name, keys in self._shown.items():
            data = self.section(name).model_dump(mode="json")
            out[name] = data if keys is None else {k: data[k] for k in sorted(keys)}
        return out

    def _picked(self, sections: Iterable[str]) -> dict[str, dict[str, Any]]:
        """{section: {key: value}} of `sections`, each a section or one key of it."""
        out: dict[str, dict[str, Any]] = {}
        for name, keys in sorted(_shown_keys(sections).items()):
            data = self.section(name).model_dump(mode="json")
            out[name] = data if keys is None else {k: data[k] for k in sorted(keys)}
        return out

    def section_hash(self, sections: Iterable[str]) -> str:
        """A short, stable hash of the named sections (or keys, "data.mode"): the identity
        of a stage's settings."""
        text = json.dumps(self._picked(sections), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_toml(self) -> str:
        return dump_toml(self.as_dict())

    def flat(self, sections: Iterable[str] | None = None) -> dict[str, str]:
        """`section.key -> value` strings, for MLflow params."""
        data = self.as_dict() if sections is None else self._picked(sections)
        return {
            f"{sec}.{key}": json.dumps(val) if isinstance(val, (list, dict)) else str(val)
            for sec in data
            for key, val in data[sec].items()
        }


def _shown_keys(sections: Iterable[str]) -> dict[str, frozenset[str] | None]:
    """"data" -> {"data": None} (all its keys); "data.mode" -> {"data": {"mode"}}."""
    out: dict[str, frozenset[str] | None] = {}
    for entry in sections:
        name, _, key = entry.partition(".")
        if not key:
            out[name] = None
        elif out.get(name, frozenset()) is not None:
            out[name] = out.get(name, frozenset()) | {key}
    return out


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
    data = cfg.as_dict()
    parsed = _parse_overrides(overrides)
    for name, field in Config.model_fields.items():  # a new backend: the old one's keys go
        selector = getattr(field.annotation, "_selector", None)
        key = f"{name}.{selector}"
        if selector and key in parsed and parsed[key] != data.get(name, {}).get(selector):
            for own in cfg.section(name).__pydantic_extra__ or {}:
                if f"{name}.{own}" not in parsed:
                    data[name].pop(own, None)
    for key, value in parsed.items():
        _set_dotted(data, key, value)
    changed = validate(data)
    return changed.only(*cfg._view) if cfg._view else changed  # a stage's view stays one


@functools.cache
def _know_sections() -> None:
    """Every section's prefix, once per process: a component section built on its own first
    (an `IndexConfig(...)`) has already put its component classes in `_SECTION_KEYS`, so its
    being non-empty says nothing about the sections."""
    for cls, prefix in _section_keys().items():
        _SECTION_KEYS.setdefault(cls, prefix)


def validate(data: Mapping[str, Any]) -> Config:
    _know_sections()
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, data)) from None
    check_registered(cfg)
    return cfg


# keys that name registered components: key -> (registry module, attribute); plugins included
REGISTERED_KEYS = {k.key: (k.module, k.attr) for k in KINDS.values() if k.checked}


def check_registered(cfg: Config) -> None:
    """Every name a key gives is registered (built-in or a plugin's), when the config loads:
    `index.backend = "chromaa"` fails here, naming the key and what exists; and so does a
    [model] key the registered model does not take."""

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
    if ":" not in cfg.model.name:  # a registered model's keys: its constructor's arguments
        importlib.import_module("hyrax_mlops.models").model_params(cfg.model)


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
    node, model = data, Config
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None and isinstance(model, type) and issubclass(model, _Components) \
                and model._nested:  # a component's table (`download.my_source.step`)
            child = node[part] = {}  # a name nothing is registered under fails validation
        field = model.model_fields.get(part) if isinstance(model, type) else None
        model = field.annotation if field is not None else None
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
            if f"'{key}" in msg or msg.startswith("no "):  # a component's: names its keys
                lines.append(msg)
            else:
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
    """TOML for our config shape (tomli-w); None, which TOML cannot say, is left out."""
    import tomli_w

    def without_none(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: without_none(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [without_none(v) for v in value]
        return value

    return tomli_w.dumps(without_none(data))


def require_path(cfg: BaseModel, key: str, kind: Literal["file", "dir"]) -> Path:
    """Check a path-valued key (of the config, or of its section `cfg`) before any run is
    created; return it resolved."""
    section, name = key.split(".")
    value = getattr(getattr(cfg, section) if isinstance(cfg, Config) else cfg, name)
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
