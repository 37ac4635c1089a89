"""Modules that moved, still importable under their old names: a run's ``config.yml`` names the classes it was
built from by module path (``!!python/object:nerfqat_plugin.model.NeRFQATModelConfig``), so runs and exports saved
before a move must find them where they were.

An old name imports as a small module whose attributes are the new module's (the same objects), so a config read
from an old file builds the very classes of today's layout, and saving it again writes the new paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Optional, Sequence

MOVED = {
    "nerfqat_plugin.model": "nerfqat_plugin.nerf.model",
    "nerfqat_plugin.field": "nerfqat_plugin.nerf.field",
    "nerfqat_plugin.mlp": "nerfqat_plugin.nerf.mlp",
    "nerfqat_plugin.colliders": "nerfqat_plugin.nerf.colliders",
    "nerfqat_plugin.occupancy": "nerfqat_plugin.nerf.occupancy",
}
"""Old module path -> where it lives now (the package split of nerf-qat and nerfacto-qat, version 0.2)."""


class _Alias(importlib.abc.Loader):
    """Loads an old module name as a view of the module that replaced it."""

    def __init__(self, target: str) -> None:
        self.target = target

    def exec_module(self, module: ModuleType) -> None:
        target = importlib.import_module(self.target)
        module.__doc__ = f"Moved to {self.target}; this name is kept for runs saved before the move."
        module.__getattr__ = lambda name: getattr(target, name)  # type: ignore[attr-defined]
        module.__dir__ = lambda: dir(target)  # type: ignore[attr-defined]


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the names in ``MOVED`` (and nothing else)."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(MOVED[fullname]))


def install() -> None:
    """Let the old names import (once per process)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
