"""Engine adapters: how to talk to one kind of engine (readiness, auth, sleep/wake).

Adapters hold no switching state. The readiness loop and the lifecycle live in
`router_app.engines.instance`, shared by every engine.
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar

import httpx

from router_app.config import ModelConfig, read_secret


def control_client(socket: str | None = None) -> httpx.AsyncClient:
    """The client for control calls to engines (readiness, probes, sleep/wake); over a Unix socket if given.

    No keep-alive: llama-server lingers about 100 ms on exit while an idle connection is open, which every switch
    would pay.
    """
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
    # (A transport given to the client brings its own limits.) Plain HTTP over a Unix socket never uses TLS:
    # verify=False spares the 40 ms of loading the CA bundle.
    transport = httpx.AsyncHTTPTransport(uds=socket, verify=False, limits=limits) if socket else None
    return httpx.AsyncClient(
        transport=transport, timeout=httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None), limits=limits
    )


class EngineError(Exception):
    """The engine answered, but not in a way that lets us serve from it."""


class Health(Enum):
    NOT_YET = "not yet"
    READY = "ready"


# Status codes engines use for "still loading": llama.cpp, SGLang and vLLM send 503.
_LOADING_STATUSES = {503}

# The sampled readiness probe after a cold load: a request that samples (temperature, top-p, top-k) walks the path a
# user's chat walks, so kernels built at first use are built inside the load (under its progress and timeout), not in
# the first chat. SGLang samples top-p/top-k with FlashInfer kernels that are JIT-compiled then (sglang 0.5.23
# layers/sampler.py:47-52,435 -> flashinfer 0.7.2 sampling.py get_sampling_module); greedy requests take argmax and
# skip them (sampler.py:105), so the 1-token probe and the fingerprint never reach them (engine-audit-2 #2).
SAMPLED_PROBE = {"prompt": "Hi", "max_tokens": 4, "temperature": 0.7, "top_p": 0.9, "top_k": 40}

# Wake-integrity probe: the same greedy request every time (fixed prompt, temperature 0, a few tokens).
# Its answer at a cold load is compared with its answer after a wake (router_app.engines.instance).
FINGERPRINT_PROMPT = "The capital of France is"
FINGERPRINT_MAX_TOKENS = 8
FINGERPRINT_TIMEOUT_S = 60.0


class EngineAdapter:
    """Defaults follow the OpenAI-compatible servers: `/health`, Bearer auth, a 1-token probe."""

    supports_sleep: ClassVar[bool] = False
    # True where a 200 from the health endpoint already proves the model is loaded and answers, so the
    # 1-token generation probe after it would only cost a generation per load.
    health_means_loaded: ClassVar[bool] = False
    # Whether a cold load ends with one sampled request (SAMPLED_PROBE): where kernels are built at first use.
    samples_on_load: ClassVar[bool] = True

    def __init__(self, model: ModelConfig, client: httpx.AsyncClient) -> None:
        self.model = model
        self.client = client
        self.api_key = read_secret(model.api_key_file)
        self.base_url = f"http://{model.host}:{model.port}" if model.port else ""
        self._socket_client: httpx.AsyncClient | None = None

    def set_port(self, port: int) -> None:
        self.base_url = f"http://{self.model.host}:{port}"

    def use_socket(self, path: str) -> None:
        """Reach the engine over the Unix socket at `path` from now on (the instance's, fixed once picked)."""
        if self._socket_client is None:
            self.client = self._socket_client = control_client(path)
        self.base_url = "http://localhost"

    async def aclose(self) -> None:
        """Close the client this adapter made for itself (the shared one belongs to the app)."""
        if self._socket_client is not None:
            await self._socket_client.aclose()

    @property
    def openai_base(self) -> str:
        """Base URL that `/chat/completions` etc. are appended to."""
        return f"{self.base_url}/v1"

    def secrets(self) -> list[str]:
        """The engine's keys, to blank out wherever its logs are shown."""
        return [self.api_key] if self.api_key else []

    def auth_headers(self) -> dict[str, str]:
        """Headers that authorise a client request at the engine."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def health(self) -> Health:
        """One readiness poll. Connection refused and 503 mean "not yet"."""
        try:
            response = await self.client.get(
                self.base_url + self.model.effective_health_path, headers=self.auth_headers(), timeout=5.0
            )
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.TimeoutException):
            return Health.NOT_YET
        if response.status_code in _LOADING_STATUSES:
            return Health.NOT_YET
        if response.status_code != 200:
            raise EngineError(
                f"health check {self.model.effective_health_path} answered {response.status_code}: "
                f"{response.text[:300]}"
            )
        return Health.READY

    async def probe_generation(self) -> Health:
        """A 1-token generation: proves the model really answers (not just the HTTP server)."""
        body = {"model": self.model.engine_name, "prompt": "Hi", "max_tokens": 1, "temperature": 0}
        return await self._probe(body, "1-token probe", read_s=120.0)

    async def probe_sampled(self) -> Health:
        """One sampled generation (SAMPLED_PROBE) after a cold load; no timeout of its own (it may compile)."""
        return await self._probe({"model": self.model.engine_name, **SAMPLED_PROBE}, "sampled probe", read_s=None)

    async def _probe(self, body: dict[str, object], what: str, read_s: float | None) -> Health:
        """POST /completions: READY on 200, NOT_YET while the engine still loads, EngineError otherwise."""
        try:
            response = await self.client.post(
                self.openai_base + "/completions", json=body, headers=self.auth_headers(), timeout=read_s
            )
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
            return Health.NOT_YET
        if response.status_code in _LOADING_STATUSES:
            return Health.NOT_YET
        if response.status_code != 200:
            raise EngineError(f"{what} answered {response.status_code}: {response.text[:300]}")
        return Health.READY

    async def asleep(self) -> bool | None:
        """Whether a running engine is asleep, where the engine can say (router start-up); None: it cannot."""
        return None

    async def fingerprint(self) -> str:
        """The greedy completion of a fixed short prompt: what the loaded weights say, to compare after a wake.

        Raises EngineError when no answer can be had (the caller then treats the fingerprint as unknown).
        """
        body = {
            "model": self.model.engine_name,
            "prompt": FINGERPRINT_PROMPT,
            "max_tokens": FINGERPRINT_MAX_TOKENS,
            "temperature": 0,
            "stream": False,
        }
        try:
            response = await self.client.post(
                self.openai_base + "/completions", json=body, headers=self.auth_headers(), timeout=FINGERPRINT_TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            raise EngineError(f"fingerprint probe failed: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise EngineError(f"fingerprint probe answered {response.status_code}: {response.text[:300]}")
        try:
            text = response.json()["choices"][0]["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise EngineError(f"fingerprint probe answer has no choices[0].text: {response.text[:300]}") from None
        if not isinstance(text, str):
            raise EngineError(f"fingerprint probe answer text is not a string: {text!r}")
        return text

    def load_progress(self) -> float | None:
        """How far the engine says its load is (0..1), where it says so."""
        return None

    async def sleep(self) -> None:
        """Release GPU memory but keep the process (only where `supports_sleep`)."""
        raise EngineError(f"{self.model.backend} cannot sleep")

    async def wake(self) -> None:
        """Undo `sleep`."""
        raise EngineError(f"{self.model.backend} cannot wake")

    async def _post_ok(self, path: str, what: str, **kwargs: object) -> httpx.Response:
        response = await self.client.post(self.base_url + path, timeout=600.0, **kwargs)  # type: ignore[arg-type]
        if response.status_code >= 400:
            raise EngineError(f"{what} ({path}) answered {response.status_code}: {response.text[:300]}")
        return response
