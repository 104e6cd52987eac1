"""Import-time stand-in for torchvision in the SGLang 0.5.10.post1 parse-only venv (tests/engine_code).

sglang 0.5.10.post1 `srt/utils/common.py:90` does `from torchvision.io import decode_jpeg` at module top, and then
transformers, seeing a torchvision, imports `torchvision.transforms` (5.3.0 image_utils.py:52-53). PyPI's torchvision
wheels are CUDA builds that cannot load beside torch 2.13.0+cpu ("operator torchvision::nms does not exist").
Parsing server arguments decodes no image: every name is an inert placeholder that raises when called.
"""

from __future__ import annotations

from placeholder_modules import Inert, placeholders

__version__ = "0.0.0+llm-router-stub"
placeholders("torchvision")


def __getattr__(name: str) -> Inert:
    if name.startswith("__"):
        raise AttributeError(name)
    return Inert(f"torchvision.{name}")
