"""TabbyAPI: keys from its api_tokens.yml (x-api-key / x-admin-key); a model is loaded when /v1/model is 200."""

from __future__ import annotations

from typing import ClassVar

import httpx
import yaml

from ..config import ModelConfig
from .base import EngineAdapter, EngineError, Health


def read_api_tokens(path: object) -> tuple[str | None, str | None]:
    """(api_key, admin_key) from TabbyAPI's api_tokens.yml; api_key may be a list (first is used)."""
    with open(str(path), encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    api_key = data.get("api_key")
    if isinstance(api_key, list):
        api_key = api_key[0] if api_key else None
    return api_key, data.get("admin_key")


class TabbyAPIAdapter(EngineAdapter):
    """Sleep unloads the model through the admin API (the process stays); wake loads it again."""

    supports_sleep: ClassVar[bool] = True

    def __init__(self, model: ModelConfig, client: httpx.AsyncClient) -> None:
        super().__init__(model, client)
        self.admin_key: str | None = None
        if model.api_tokens_file is not None:
            self.api_key, self.admin_key = read_api_tokens(model.api_tokens_file)

    @property
    def tabby_model_name(self) -> str:
        return self.model.tabby_model_name or self.model.engine_name

    def auth_headers(self) -> dict[str, str]:
        return {"x-api-key": self.api_key} if self.api_key else {}

    def _admin_headers(self) -> dict[str, str]:
        if not self.admin_key:
            raise EngineError("TabbyAPI admin key unknown: set api_tokens_file")
        return {"x-admin-key": self.admin_key}

    async def health(self) -> Health:
        if await super().health() is Health.NOT_YET:
            return Health.NOT_YET
        # /health is up before the model is; /v1/model answers 200 only with a model loaded.
        response = await self.client.get(self.base_url + "/v1/model", headers=self.auth_headers(), timeout=5.0)
        if response.status_code == 200:
            return Health.READY
        if response.status_code in (401, 403):
            raise EngineError(f"TabbyAPI refused the api key ({response.status_code}): check api_tokens_file")
        return Health.NOT_YET

    async def sleep(self) -> None:
        await self._post_ok("/v1/model/unload", "TabbyAPI unload", headers=self._admin_headers())

    async def wake(self) -> None:
        body = {"model_name": self.tabby_model_name}
        # The load endpoint streams SSE progress; read it to the end, then readiness is re-checked.
        async with self.client.stream(
            "POST", self.base_url + "/v1/model/load", json=body, headers=self._admin_headers(), timeout=None
        ) as response:
            if response.status_code >= 400:
                raise EngineError(f"TabbyAPI load answered {response.status_code}: {(await response.aread())[:300]!r}")
            async for _ in response.aiter_bytes():
                pass
