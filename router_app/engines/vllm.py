"""vLLM: the socket opens after loading; sleep mode needs VLLM_SERVER_DEV_MODE=1 --enable-sleep-mode."""

from __future__ import annotations

from typing import ClassVar

from .base import EngineAdapter


class VLLMAdapter(EngineAdapter):
    """Sleep level 1 moves weights to host RAM and drops the KV cache; wake brings them back."""

    supports_sleep: ClassVar[bool] = True

    async def sleep(self) -> None:
        await self._post_ok("/sleep", "vLLM sleep", params={"level": "1"}, headers=self.auth_headers())

    async def wake(self) -> None:
        await self._post_ok("/wake_up", "vLLM wake", headers=self.auth_headers())
