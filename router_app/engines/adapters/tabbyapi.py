"""TabbyAPI: keys from its api_tokens.yml (x-api-key / x-admin-key); a model is loaded when /v1/model is 200.

Sources (theroyallab/tabbyAPI at e632af41eba68abeadc3437c62674360f2f8cbf1):
- `GET /v1/model` and `POST /v1/model/unload` depend on `check_model_container`, which answers 503 "No models are
  currently loaded." while no model is loaded (endpoints/core/router.py:127-130 and 206-213,
  common/model.py:298-307).
- `POST /v1/model/load` answers 400 for a missing name or path (endpoints/core/router.py:184-201), otherwise 200 with
  an SSE stream (router.py:203, sse-starlette: `data: <json>` lines, `: ping - <time>` comments, `\r\n` separators,
  sse-starlette 3.7.0 event.py:13,48-51 and sse.py:500-504). Its events (endpoints/core/utils/model.py:112-142):
  `{"model_type","module","modules","status":"processing"}` per module, `status: "finished"` when a part
  (vision, draft, then the model itself; common/model.py:196-227) is complete, and on failure one
  `{"error": {"message", "trace"}}` event and the end of the stream (model.py:119-121, common/networking.py:28-46).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import ClassVar

import httpx
import yaml

from router_app.config import ModelConfig
from router_app.engines.adapters.base import EngineAdapter, EngineError, Health


def read_api_tokens(path: object) -> tuple[str | None, str | None]:
    """(api_key, admin_key) from TabbyAPI's api_tokens.yml; api_key may be a list (first is used)."""
    with open(str(path), encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    api_key = data.get("api_key")
    if isinstance(api_key, list):
        api_key = api_key[0] if api_key else None
    return api_key, data.get("admin_key")


class LoadProgress:
    """Follows TabbyAPI's `/v1/model/load` event stream: fails at the first error event, knows when it finished."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.finished = False
        self.fraction: float | None = None  # modules loaded / modules of the model part (not draft or vision)
        self.last: dict[str, object] | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> None:
        """One line of the stream; a blank line ends an event. Raises EngineError on an `error` event."""
        line = line.rstrip("\r\n")
        if line.startswith("data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(" ") else value)
        elif not line and self._data:
            data, self._data = "\n".join(self._data), []
            self._event(data)
        # Comments (`: ping - ...`) and other fields carry nothing for us.

    def close(self) -> None:
        """The stream ended: raises EngineError unless the model (not only a draft or vision part) finished."""
        self.feed("")
        if not self.finished:
            last = f" (last event: {json.dumps(self.last)})" if self.last else " (no progress events)"
            raise EngineError(f"TabbyAPI load of {self.model_name} ended without a 'finished' event{last}")

    def _event(self, data: str) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            raise EngineError(f"TabbyAPI load sent a non-JSON event: {data[:300]}") from None
        if not isinstance(event, dict):
            raise EngineError(f"TabbyAPI load sent an unexpected event: {data[:300]}")
        if "error" in event:
            error = event["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise EngineError(f"TabbyAPI load of {self.model_name} failed: {message}")
        self.last = event
        if event.get("model_type", "model") != "model":
            return
        module, modules = event.get("module"), event.get("modules")
        if isinstance(module, int) and isinstance(modules, int) and modules > 0:
            self.fraction = min(module / modules, 1.0)
        if event.get("status") == "finished":
            self.finished = True


async def follow_load(lines: AsyncIterator[str], progress: LoadProgress) -> None:
    """Read a `/v1/model/load` stream to its end (the container is in place only then, common/model.py:229)."""
    async for line in lines:
        progress.feed(line)
    progress.close()


class TabbyAPIAdapter(EngineAdapter):
    """Sleep unloads the model through the admin API (the process stays); wake loads it again."""

    supports_sleep: ClassVar[bool] = True

    def __init__(self, model: ModelConfig, client: httpx.AsyncClient) -> None:
        super().__init__(model, client)
        self.admin_key: str | None = None
        self.loading: LoadProgress | None = None  # the load in progress or last done (progress for status lines)
        if model.api_tokens_file is not None:
            self.api_key, self.admin_key = read_api_tokens(model.api_tokens_file)

    @property
    def tabby_model_name(self) -> str:
        return self.model.tabby_model_name or self.model.engine_name

    def auth_headers(self) -> dict[str, str]:
        return {"x-api-key": self.api_key} if self.api_key else {}

    def secrets(self) -> list[str]:
        return [key for key in (self.api_key, self.admin_key) if key]

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

    def load_progress(self) -> float | None:
        return self.loading.fraction if self.loading is not None and not self.loading.finished else None

    async def sleep(self) -> None:
        """`POST /v1/model/unload` (admin); its 503 means no model is loaded, which is what sleep wants."""
        response = await self.client.post(
            self.base_url + "/v1/model/unload", headers=self._admin_headers(), timeout=600.0
        )
        if response.status_code == 503:
            return
        if response.status_code >= 400:
            raise EngineError(f"TabbyAPI unload answered {response.status_code}: {response.text[:300]}")

    async def _loaded_model(self) -> str | None:
        """The model TabbyAPI has loaded, None when none is: `GET /v1/model` -> ModelCard `id` = the model folder's
        name (e632af4 backends/exllamav3/model.py:581-604, 79126f9 backends/exllamav2/model.py:440-473), 503 without
        a model (common/model.py check_model_container)."""
        response = await self.client.get(self.base_url + "/v1/model", headers=self.auth_headers(), timeout=5.0)
        if response.status_code == 503:
            return None
        if response.status_code != 200:
            raise EngineError(f"TabbyAPI /v1/model answered {response.status_code}: {response.text[:300]}")
        try:
            name = response.json().get("id")
        except (ValueError, AttributeError):
            name = None
        return str(name) if name else self.tabby_model_name

    async def asleep(self) -> bool | None:
        """Asleep = the server is up without a model (a sleep unloaded it; the start model loads before the socket
        opens, main.py:53-63 then 97). None where the server does not answer yet."""
        try:
            if await super().health() is Health.NOT_YET:
                return None
        except EngineError:
            return None
        return await self._loaded_model() is None

    async def wake(self) -> None:
        """`POST /v1/model/load` (admin): fails at the first error event; needs the model's `finished` event.

        Nothing to do when the model is already loaded (systemd restarted the unit, which loads it at start): the
        exl2-checkpoint branch then ends the load stream without any event (79126f9 common/model.py:150-156), which
        would read as a failed load (engine-audit-2 #9).
        """
        if await self._loaded_model() == self.tabby_model_name:
            return
        body = {"model_name": self.tabby_model_name}
        async with self.client.stream(
            "POST",
            self.base_url + "/v1/model/load",
            json=body,
            headers=self._admin_headers(),
            timeout=httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None),
        ) as response:
            if response.status_code >= 400:
                text = (await response.aread()).decode(errors="replace")
                raise EngineError(f"TabbyAPI load answered {response.status_code}: {text[:300]}")
            self.loading = LoadProgress(self.tabby_model_name)
            await follow_load(response.aiter_lines(), self.loading)
