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
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from hyrax_mlops.errors import RegistryError

T = TypeVar("T")


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
