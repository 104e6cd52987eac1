"""A fleet of routers: the peers' models listed beside this router's own, and requests for them forwarded.

Each peer is another llm-router (`router.peers`). Its model list (`GET /v1/models`, with each model's `status`)
is cached for `router.peer_refresh_s`. A request, load or unload naming a model that only a peer serves goes to
that peer with the peer's key, and its answer comes back as the peer sends it (status events, errors and
all). Calls between routers carry `X-LLM-Router-Hop`: a router asked with it answers from its own models
only, so routers that list each other never forward in a loop. A peer that does not answer is left out of
the list (and shown in `/health`) until it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from starlette.requests import Request
from starlette.responses import Response

from router_app.config import ConfigError, PeerConfig, read_secret
from router_app.wire import sse
from router_app.wire.disconnect import ClientGone, DisconnectAwareStreamingResponse, race_disconnect
from router_app.wire.errors import is_anthropic_path, json_error

log = logging.getLogger(__name__)

HOP_HEADER = "x-llm-router-hop"
# What a forwarded request keeps of the client's headers (its key is replaced by the peer's).
_REQUEST_HEADERS = ("content-type", "accept", "anthropic-version", "anthropic-beta", "openai-beta", "user-agent")
_RESPONSE_HEADERS = ("cache-control", "x-accel-buffering")
# Below uvicorn's 5 s keep-alive, so a pooled connection is never one the peer is closing.
_KEEPALIVE_S = 2.0
# A name no peer lists is looked up again at most this often (a request for an unknown model).
_MISS_REFRESH_S = 0.5


@dataclass
class Peer:
    """One peer router and what it last said it serves."""

    config: PeerConfig
    key: str | None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # id → its /v1/models entry
    names: dict[str, str] = field(default_factory=dict)  # id or alias → id
    fetched: float = -math.inf  # monotonic time of the last answer (or failure)
    stale: bool = False  # a request went through it since: its models' states may have changed
    error: str | None = None
    refreshing: asyncio.Task[None] | None = None

    @property
    def known(self) -> bool:
        """It has been asked at least once."""
        return self.fetched > -math.inf

    def due(self, now: float, max_age: float) -> bool:
        return self.stale or now - self.fetched > max_age

    @property
    def name(self) -> str:
        return self.config.name


class Fleet:
    """The peers of this router: their model lists, and forwarding to them."""

    def __init__(self, peers: list[PeerConfig], refresh_s: float) -> None:
        self.peers: dict[str, Peer] = {}
        self.refresh_s = refresh_s
        self._session: aiohttp.ClientSession | None = None
        self.configure(peers, refresh_s)

    def configure(self, peers: list[PeerConfig], refresh_s: float) -> None:
        """Apply a (re)loaded `router.peers` at once (see `prepare`)."""
        self.install(self.prepare(peers), refresh_s)

    def prepare(self, peers: list[PeerConfig]) -> dict[str, Peer]:
        """The peers of a (re)loaded `router.peers`, keys read (ConfigError if one cannot be); unchanged peers
        keep what they listed. Nothing changes until `install`."""
        prepared: dict[str, Peer] = {}
        for index, conf in enumerate(peers):
            try:
                key = read_secret(conf.api_key_file)
            except OSError as exc:
                raise ConfigError(f"router.peers[{index}].api_key_file", [f"cannot read key file: {exc}"]) from None
            old = self.peers.get(conf.name)
            peer = old if old is not None and old.config == conf else Peer(conf, key)
            peer.key = key
            prepared[conf.name] = peer
        return prepared

    def install(self, peers: dict[str, Peer], refresh_s: float) -> None:
        self.peers, self.refresh_s = peers, refresh_s

    def forwards(self, request: Request) -> bool:
        """Whether this request may be answered by peers: there are some, and it does not come from another
        router (that one wants this router's own models only)."""
        return bool(self.peers) and HOP_HEADER not in request.headers

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_S)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        for peer in self.peers.values():
            if peer.refreshing is not None:
                peer.refreshing.cancel()
        if self._session is not None:
            await self._session.close()

    def _headers(self, peer: Peer) -> dict[str, str]:
        headers = {HOP_HEADER: "1"}
        if peer.key:
            headers["Authorization"] = f"Bearer {peer.key}"
        return headers

    # --- what the peers serve -------------------------------------------------------------

    async def _fetch(self, peer: Peer) -> None:
        url = f"{peer.config.url}/v1/models"
        timeout = aiohttp.ClientTimeout(total=peer.config.timeout_s)
        try:
            async with self.session.get(url, headers=self._headers(peer), timeout=timeout) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}: {(await response.text())[:200]}")
                data = (await response.json(content_type=None))["data"]
            models = {entry["id"]: entry for entry in data if isinstance(entry.get("id"), str)}
            names = _names(models)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError, AttributeError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if peer.error is None:
                log.warning("peer %s (%s) does not answer its model list: %s", peer.name, url, error)
            # Out of the list; its names stay known, so a request for one says the peer is down (502), not 404.
            peer.models, peer.error = {}, error
        else:
            if peer.error is not None:
                log.info("peer %s (%s) answers again: %d model(s)", peer.name, url, len(models))
            peer.models, peer.names, peer.error = models, names, None
        peer.fetched, peer.stale = time.monotonic(), False

    async def refresh(self, max_age: float) -> None:
        """Re-read the lists that are stale or older than `max_age`, all peers at once (one read per peer at a
        time). Waits for peers that answered last time or were never asked; a peer that did not answer is
        re-read in the background, so a dead peer costs its `timeout_s` once, not on every call."""
        now = time.monotonic()
        waits = []
        for peer in self.peers.values():
            if peer.refreshing is None and peer.due(now, max_age):
                task = asyncio.ensure_future(self._fetch(peer))
                peer.refreshing = task
                task.add_done_callback(lambda _t, p=peer: setattr(p, "refreshing", None))
            if peer.refreshing is not None and (peer.error is None or not peer.known):
                waits.append(peer.refreshing)
        if waits:
            await asyncio.gather(*(asyncio.shield(w) for w in waits), return_exceptions=True)

    async def listing(self, local_names: set[str]) -> list[dict[str, Any]]:
        """The peers' models as `/v1/models` entries (with `peer`), minus names this router serves itself."""
        await self.refresh(self.refresh_s)
        entries: list[dict[str, Any]] = []
        seen = set(local_names)
        for peer in self.peers.values():
            for model_id, entry in peer.models.items():
                if model_id in seen:
                    continue
                seen.add(model_id)
                entries.append({**entry, "peer": peer.name})
        return entries

    def _find(self, name: str) -> tuple[Peer, str] | None:
        """Ids first, then aliases, peers in order: the same precedence as the listing."""
        for peer in self.peers.values():
            if peer.names.get(name) == name:
                return peer, name
        for peer in self.peers.values():
            if name in peer.names:
                return peer, peer.names[name]
        return None

    async def locate(self, name: str) -> tuple[Peer, str] | None:
        """The peer serving `name` (an id or alias of one of its models), and the model's id there. A name
        already known is answered at once; an unknown one after the peers' lists are read again."""
        found = self._find(name)
        if found is None and self.peers:
            await self.refresh(min(self.refresh_s, _MISS_REFRESH_S))  # a model a peer has just added
            found = self._find(name)
        return found

    async def entry(self, peer: Peer, model_id: str) -> dict[str, Any] | None:
        """The peer's `/v1/models` entry of one model, as fresh as a listing (None while the peer does not
        answer)."""
        await self.refresh(self.refresh_s)
        entry = peer.models.get(model_id)
        return None if entry is None else {**entry, "peer": peer.name}

    def report(self) -> list[dict[str, Any]]:
        """Each peer for `/health`: where, whether it answers, how many models, since when."""
        now = time.monotonic()
        return [
            {
                "name": peer.name,
                "url": peer.config.url,
                "reachable": peer.error is None and peer.known,
                "models": sorted(peer.models),
                **({"error": peer.error} if peer.error else {}),
                **({"age_s": round(now - peer.fetched, 1)} if peer.known else {}),
            }
            for peer in self.peers.values()
        ]

    # --- forwarding -----------------------------------------------------------------------

    async def forward(self, request: Request, peer: Peer, body: bytes) -> Response:
        """Send the client's request to `peer` as it came (path, query, body), with the peer's key, and relay
        the answer: status, content type and body, streamed as it arrives."""
        path = request.url.path
        anthropic = is_anthropic_path(path)
        url = f"{peer.config.url}{path}" + (f"?{request.url.query}" if request.url.query else "")
        headers = {name: value for name in _REQUEST_HEADERS if (value := request.headers.get(name))}
        headers.update(self._headers(peer))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=peer.config.timeout_s)
        try:
            upstream = await race_disconnect(
                request,
                self.session.request(request.method, url, data=body or None, headers=headers, timeout=timeout),
            )
        except ClientGone:
            return Response(status_code=499)
        except (aiohttp.ClientError, TimeoutError) as exc:
            peer.stale = True  # list it again before offering its models
            return json_error(
                502,
                f"peer router {peer.name} ({peer.config.url}) did not answer: {type(exc).__name__}: {exc}",
                "bad_gateway",
                code="peer_unreachable",
                anthropic=anthropic,
            )
        media_type = upstream.headers.get("content-type")
        passed = {name: value for name in _RESPONSE_HEADERS if (value := upstream.headers.get(name))}
        if media_type is not None and media_type.startswith("text/event-stream"):
            return DisconnectAwareStreamingResponse(
                _relay(upstream, peer, anthropic),
                status_code=upstream.status,
                media_type=media_type,
                headers=passed,
                on_close=upstream.close,
            )
        try:
            content = await race_disconnect(request, upstream.read())
        except ClientGone:
            upstream.close()
            return Response(status_code=499)
        except (aiohttp.ClientError, TimeoutError) as exc:
            upstream.close()
            return json_error(
                502,
                f"peer router {peer.name} broke off its answer: {type(exc).__name__}: {exc}",
                "bad_gateway",
                code="peer_error",
                anthropic=anthropic,
            )
        finally:
            peer.stale = True  # the request may have loaded or unloaded models there: list it again
        return Response(content, status_code=upstream.status, media_type=media_type, headers=passed)


def _names(models: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each id and alias of a peer's models → the model's id (the first model to claim a name keeps it)."""
    names: dict[str, str] = {}
    for model_id, entry in models.items():
        aliases = entry.get("aliases") or []
        if not isinstance(aliases, list):
            raise TypeError(f"model {model_id!r}: aliases is not a list")
        for name in [model_id, *(a for a in aliases if isinstance(a, str))]:
            names.setdefault(name, model_id)
    return names


async def _relay(upstream: aiohttp.ClientResponse, peer: Peer, anthropic: bool) -> AsyncIterator[bytes]:
    """The peer's stream as it arrives; a stream that breaks ends with an error event (and `[DONE]` for OpenAI)."""
    try:
        async for chunk in upstream.content.iter_any():
            yield chunk
    except (aiohttp.ClientError, TimeoutError) as exc:
        message = f"peer router {peer.name} broke off the stream: {type(exc).__name__}: {exc}"
        if anthropic:
            yield b"event: error\n" + sse.event({"type": "error", "error": {"type": "api_error", "message": message}})
        else:
            yield sse.error_event(message, "bad_gateway", "peer_error") + sse.DONE
    finally:
        upstream.close()
        peer.stale = True  # the request may have loaded or unloaded models there: list it again
