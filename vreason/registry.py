"""Name -> component registries that YAML configs refer to.

A component registers itself with a decorator under a short name (``@CONTROLLERS.register("value_cache")``).
A config may also name a class by dotted path (``mypkg.mymodule.MyController``) so that research code
outside this package plugs in without editing it. Unknown names fail with the list of known ones.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        def decorate(cls: type) -> type:
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered to {self._entries[name]!r}")
            self._entries[name] = cls
            cls.registry_name = name
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> type:
        if name in self._entries:
            return self._entries[name]
        if "." in name:
            module_name, _, attr = name.rpartition(".")
            try:
                return getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as err:
                raise KeyError(f"unknown {self.kind} {name!r}: cannot import it ({err})") from err
        raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")

    def build(self, name: str, **kwargs: Any) -> Any:
        cls = self.get(name)
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise TypeError(f"{self.kind} {name!r}: bad parameters {sorted(kwargs)}: {err}") from err


def import_submodules(package: str, path: list[str]) -> None:
    """Import every module of a package (``__name__``, ``__path__``) so that dropping a file in registers it."""
    for info in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{info.name}")


CONTROLLERS = Registry("controller")
OBJECTIVES = Registry("objective")
SCHEDULES = Registry("schedule")
PRUNERS = Registry("pruner")
POSITIONS = Registry("position selector")
