"""Models, looked up by registered name or by import path `pkg.module:Class`.

The contract (README, "Bring your own model"): a `torch.nn.Module` built as
`Model(input_shape, **params)` whose keyword arguments are its config keys under [model],
checked against the signature like every other key. The engine calls
  - `training_step(batch) -> loss`, or a dict of named values with the total under "loss"
    (each name is logged as `train_<name>` / `val_<name>`); the same on validation batches
    under `torch.no_grad()` and `model.eval()`;
  - `embed(batch) -> (n, dim)` and/or `predict(batch) -> (n, classes)` probabilities;
  - optionally `after_step()` after each optimiser step (e.g. BYOL's target update),
    `reconstruct(batch)` for the reconstruction figure.
`modalities` (default `("image",)`) names the batch keys it reads; `needs_labels = True` makes
the train stage require `data.label_column`, and pass `classes` / `class_counts` to the
constructor when it takes them.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any

from hyrax_mlops.config import ModelConfig
from hyrax_mlops.errors import ConfigError
from hyrax_mlops.registry import Registry

MODELS: Registry[type] = Registry(
    "model", builtins=("hyrax_mlops.models.autoencoder", "hyrax_mlops.models.classifier",
                       "hyrax_mlops.models.fusion", "hyrax_mlops.models.ssl"))
REQUIRED_METHODS = ("training_step",)
OUTPUT_METHODS = ("embed", "predict")  # at least one


def resolve_model_class(name: str) -> type:
    """The class for `model.name`: a registered name or `pkg.module:Class`."""
    import torch

    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"config key 'model.name' = '{name}' cannot be imported ({exc}). Fix: make "
                f"'{module_name}' importable and define {attr} in it, or use one of: "
                f"{', '.join(MODELS.names())}."
            ) from None
    else:
        try:
            cls = MODELS.get(name)
        except KeyError as exc:
            raise ConfigError(f"config key 'model.name': {exc}") from None
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(cls, m, None))]
    if not any(callable(getattr(cls, m, None)) for m in OUTPUT_METHODS):
        missing.append(" or ".join(OUTPUT_METHODS))
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)) or missing:
        raise ConfigError(
            f"model '{name}' must be a torch.nn.Module with methods training_step and "
            f"embed or predict (missing: {', '.join(missing) or 'nn.Module base'})."
        )
    return cls


def model_params(cfg: ModelConfig, data_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Constructor arguments from [model], checked against the model's signature; plus what
    the data says (`data_info`, e.g. `classes`) for arguments the model takes and the config
    leaves unset."""
    cls = resolve_model_class(cfg.name)
    sig = inspect.signature(cls.__init__)
    params = cfg.params()
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    valid = [n for n in sig.parameters if n not in ("self", "input_shape")
             and sig.parameters[n].kind not in (inspect.Parameter.VAR_KEYWORD,
                                                inspect.Parameter.VAR_POSITIONAL)]
    if not accepts_any:
        for key in params:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f" Did you mean 'model.{close[0]}'?" if close else ""
                raise ConfigError(
                    f"unknown config key 'model.{key}' for model '{cfg.name}'.{hint} "
                    f"(its arguments: {', '.join(valid) or 'none'})"
                )
    _check_types(cls, cfg.name, params)
    resolved = {n: sig.parameters[n].default for n in valid
                if sig.parameters[n].default is not inspect.Parameter.empty}
    for key, value in (data_info or {}).items():
        if key not in params and key in valid:
            resolved[key] = value
    resolved.update(params)
    return resolved


def _check_types(cls: type, model_name: str, params: dict[str, Any]) -> None:
    """Each [model] value against the constructor's annotation, so `latent_dim = "x"` fails
    when the config is checked, not inside a train run. Unannotated or unresolvable hints are
    left to the model."""
    import typing

    from pydantic import TypeAdapter, ValidationError

    from hyrax_mlops.config import _numeric

    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # a user model's hints that cannot be resolved: nothing to check
        return
    for key, value in params.items():
        hint = hints.get(key)
        if hint is None or hint is typing.Any:
            continue
        problem = None
        if isinstance(value, bool) and _numeric(hint):
            problem = "a number, not true/false"
        else:
            try:
                TypeAdapter(hint).validate_python(value)
            except ValidationError as exc:
                problem = exc.errors()[0]["msg"]
            except Exception:  # a hint pydantic cannot check (a torch type, say)
                continue
        if problem:
            shown = (hint.__name__ if isinstance(hint, type) else
                     str(hint).replace("typing.", "").replace("collections.abc.", ""))
            raise ConfigError(f"config key 'model.{key}' = {value!r} does not fit model "
                              f"'{model_name}': it takes {shown} ({problem}).")


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...],
                data_info: dict[str, Any] | None = None):
    """An instance of the configured model for inputs of `input_shape` (bands, h, w)."""
    cls = resolve_model_class(cfg.name)
    return cls(tuple(input_shape), **model_params(cfg, data_info))


def needs_labels(cfg: ModelConfig) -> bool:
    return bool(getattr(resolve_model_class(cfg.name), "needs_labels", False))
