"""SGLang: /health is 503 while starting; memory release/resume with --enable-memory-saver."""

from __future__ import annotations

from typing import ClassVar

from .base import EngineAdapter

_ALL_MEMORY = {"tags": ["weights", "kv_cache"]}


class SGLangAdapter(EngineAdapter):
    """Sleep frees GPU memory with `/release_memory_occupation`; wake resumes it."""

    supports_sleep: ClassVar[bool] = True

    async def sleep(self) -> None:
        await self._post_ok(
            "/release_memory_occupation", "SGLang memory release", json=_ALL_MEMORY, headers=self.auth_headers()
        )

    async def wake(self) -> None:
        await self._post_ok(
            "/resume_memory_occupation", "SGLang memory resume", json=_ALL_MEMORY, headers=self.auth_headers()
        )
