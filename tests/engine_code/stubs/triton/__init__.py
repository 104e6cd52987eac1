"""Import-time stand-in for Triton in the SGLang parse-only venvs (tests/engine_code).

sglang imports triton at module top on the way to its server arguments (0.5.23 `srt/utils/common.py:91`;
0.5.10.post1 also `triton.language.extra` and others under srt/layers); parsing server arguments runs no kernel. The
real triton 3.9.0 wheel is a 286 MB download (1 GB installed) and has no CPU backend. Decorators return the function
unchanged, any other attribute of any `triton.*` module is a callable placeholder, and asking for the active driver
raises, as Triton does without a GPU (so sglang 0.5.10.post1 srt/layers/attention/fla/utils.py:240-245 picks CPU).
"""

from __future__ import annotations

import types
from typing import Any

from placeholder_modules import placeholders

__version__ = "3.9.0"


class _Decorators(types.ModuleType):
    """Every attribute is this module; calling it returns the decorated function, or itself."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return self


class _NoDriver:
    @property
    def active(self) -> Any:
        raise RuntimeError("0 active drivers (triton stub: no GPU)")


def _module(name: str) -> types.ModuleType:
    module = _Decorators(name)
    if name == "triton.runtime":
        module.driver = _NoDriver()  # type: ignore[attr-defined]
    return module


def jit(fn: Any = None, **kwargs: Any) -> Any:
    return fn if fn is not None else (lambda f: f)


def autotune(*args: Any, **kwargs: Any) -> Any:
    return lambda f: f


heuristics = autotune


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 << (int(n) - 1).bit_length()


placeholders("triton", _module)
Config = _Decorators("triton.Config")
from triton import language, runtime, testing  # noqa: E402  (placeholders, made by the finder above)

__all__ = ["Config", "autotune", "cdiv", "heuristics", "jit", "language", "next_power_of_2", "runtime", "testing"]
