"""A small registry per extension point: register by name, look up by name.

Built-in entries live in modules named by `builtins`, imported the first time the registry is
read, so a package's `__init__` (which holds its registry) never imports the modules that
register into it: no import circles. Third-party packages extend a registry through the
entry-point group `hyrax_mlops.<kind>`; a plugin that fails to load becomes a warning, not a
crash. A failed lookup lists what exists.
"""

from __future__ import annotations

import difflib
import importlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from hyrax_mlops.errors import RegistryError

T = TypeVar("T")


@dataclass(frozen=True)
class Kind:
    """An extension point: where its registry lives, and the config key that names its
    entries (`checked`: load_config refuses a name nothing is registered under)."""

    module: str
    attr: str
    key: str
    checked: bool = True


# Every extension point, by the plural `hyrax-mlops list KIND` takes; the CLI, load_config
# and the code version read this one table.
KINDS: dict[str, Kind] = {
    "sources": Kind("hyrax_mlops.sources", "SOURCES", "download.source"),
    "models": Kind("hyrax_mlops.models", "MODELS", "model.name"),  # or package.module:Class
    "backbones": Kind("hyrax_mlops.models.backbones", "BACKBONES", "model.backbone", False),
    "augmentations": Kind("hyrax_mlops.data.augment", "AUGMENTATIONS", "model.augmentations",
                          False),
    "backends": Kind("hyrax_mlops.vectors", "VECTOR_BACKENDS", "index.backend"),
    "reducers": Kind("hyrax_mlops.analysis.reducers", "REDUCERS", "reduce.methods"),
    "analyses": Kind("hyrax_mlops.analysis.analyses", "ANALYSES", "analyse.analyses"),
}


def registry_of(kind: str) -> Registry:
    """The registry of an extension point (imported when asked)."""
    found = KINDS[kind]
    return getattr(importlib.import_module(found.module), found.attr)


class Registry(Generic[T]):
    def __init__(self, kind: str, plural: str | None = None,
                 builtins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.group = f"hyrax_mlops.{plural or kind + 's'}"  # entry-point group of plugins
        self.builtins = builtins  # modules whose import registers the built-in entries
        self._items: dict[str, T] = {}
        self._plugins_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@MODELS.register("conv_autoencoder")`."""

        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise RegistryError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        self._load_plugins()
        try:
            return self._items[name]
        except KeyError:
            names = sorted(self._items)
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise RegistryError(
                f"no {self.kind} named '{name}'.{hint} Registered: {', '.join(names) or 'none'}."
            ) from None

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for module in self.builtins:
            importlib.import_module(module)
        for ep in entry_points(group=self.group):
            try:
                self._items.setdefault(ep.name, ep.load())
            except Exception as exc:  # a broken plugin must not break the platform
                warnings.warn(f"{self.kind} plugin '{ep.name}' failed to load: {exc}", stacklevel=2)
