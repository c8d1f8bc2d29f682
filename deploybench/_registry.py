"""Lazy registries: a name maps to ``"module:attribute"``, imported only when first used.

Built-in entries are listed in the room that owns them; a third party adds its own from its
package through an entry-point group (``deploybench.engines``, ``deploybench.converters``,
``deploybench.models``) or by calling ``register`` at import time.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from .spec import DeployBenchError


class Registry:
    def __init__(self, kind: str, group: str, builtins: dict[str, str]):
        self.kind, self.group = kind, group
        self._targets: dict[str, Any] = dict(builtins)
        self._loaded_entry_points = False

    def register(self, name: str, target: Any) -> None:
        """Add or replace ``name``: a ``"module:attribute"`` string or the object itself."""
        self._targets[name] = target

    def names(self) -> list[str]:
        self._load_entry_points()
        return list(self._targets)

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def get(self, name: str) -> Any:
        self._load_entry_points()
        if name not in self._targets:
            raise DeployBenchError(f"unknown {self.kind} {name!r}; choose from: {', '.join(self._targets)}")
        target = self._targets[name]
        if isinstance(target, str):
            module_name, _, attribute = target.partition(":")
            target = getattr(importlib.import_module(module_name), attribute)
            self._targets[name] = target
        return target

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for ep in entry_points(group=self.group):
            self._targets.setdefault(ep.name, ep.value)
