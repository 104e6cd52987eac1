"""Modules the tests load by file path: the role's plugins and files, the repository's scripts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_module(path: Path, name: str | None = None) -> ModuleType:
    """The module at `path`, registered under `name` (dataclasses and pickling look their module up by name)."""
    name = name or path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py."""
    return load_module(ROOT / "scripts" / f"{name}.py")
