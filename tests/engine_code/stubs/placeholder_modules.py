"""Placeholder packages for the SGLang parse-only venvs (tests/engine_code/stubs is first on sys.path there).

`placeholders("triton")` makes every `import triton.x.y` succeed with a placeholder package, so modules that import
GPU libraries at module top can be imported to reach SGLang's argument parser, which runs none of them.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable
from typing import Any


class Inert:
    """Any attribute is itself, calling it raises; usable as a base class (becomes `object`) and as a dict key."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, name: str) -> Inert:
        if name.startswith("__"):
            raise AttributeError(name)
        return Inert(f"{self._name}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{self._name}: a placeholder (tests/engine_code/stubs), not for use")

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        return (object,)

    def __repr__(self) -> str:
        return f"<placeholder {self._name}>"


class Package(types.ModuleType):
    """A placeholder module: public attributes not set on it are Inert (or what `attribute` makes of them)."""

    attribute: Callable[[str], Any] | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self.attribute(name) if self.attribute else Inert(f"{self.__name__}.{name}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, root: str, make: Callable[[str], types.ModuleType]) -> None:
        self.root = root
        self.make = make

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(self.root + "."):
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = self.make(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def placeholders(root: str, make: Callable[[str], types.ModuleType] = Package) -> None:
    """Every submodule of the package `root` (imported or not) is `make(name)`."""
    sys.meta_path.insert(0, _Finder(root, make))
