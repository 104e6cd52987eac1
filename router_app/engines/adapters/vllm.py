"""vLLM: the socket opens after loading; sleep mode needs VLLM_SERVER_DEV_MODE=1 --enable-sleep-mode."""

from __future__ import annotations

from typing import ClassVar

from router_app.engines.adapters.base import EngineAdapter, EngineError


class VLLMAdapter(EngineAdapter):
    """Sleep level 1 moves weights to host RAM and drops the KV cache; wake brings them back."""

    supports_sleep: ClassVar[bool] = True

    async def sleep(self) -> None:
        await self._post_ok("/sleep", "vLLM sleep", params={"level": "1"}, headers=self.auth_headers())

    async def wake(self) -> None:
        await self._post_ok("/wake_up", "vLLM wake", headers=self.auth_headers())

    async def asleep(self) -> bool:
        """`GET /is_sleeping` -> `{"is_sleeping": bool}`: vllm 0.32.0 entrypoints/serve/dev/sleep/api_router.py:26-65,
        0.19.1 entrypoints/serve/sleep/api_router.py:22-56, registered with VLLM_SERVER_DEV_MODE=1 (the role sets it
        for evict: sleep). A sleeping vLLM answers /health 200: health alone adopts it as awake (engine-audit-2 #6).
        """
        response = await self.client.get(self.base_url + "/is_sleeping", headers=self.auth_headers(), timeout=5.0)
        if response.status_code != 200:
            raise EngineError(f"vLLM /is_sleeping answered {response.status_code}: {response.text[:300]}")
        try:
            return bool(response.json()["is_sleeping"])
        except (ValueError, KeyError, TypeError):
            raise EngineError(f"vLLM /is_sleeping answer has no is_sleeping: {response.text[:300]}") from None
