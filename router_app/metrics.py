"""Prometheus metrics of the router (served at /metrics)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "RouterMetrics"]


class RouterMetrics:
    """One registry per app, so several routers (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "llm_router_requests",
            "Proxied requests by model, endpoint and outcome",
            ["model", "endpoint", "outcome"],
            registry=self.registry,
        )
        self.inflight = Gauge(
            "llm_router_inflight_requests",
            "Requests being served or waiting, by model",
            ["model"],
            registry=self.registry,
        )
        self.wait_seconds = Histogram(
            "llm_router_wait_seconds",
            "Time requests waited for their model",
            ["model"],
            registry=self.registry,
            buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
        )
        self.switches = Counter(
            "llm_router_switches",
            "Model switches by target and outcome (ok, or why the load failed: engines.instance.LoadFailure)",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.switch_seconds = Histogram(
            "llm_router_switch_seconds",
            "Duration of model switches",
            ["model"],
            registry=self.registry,
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200),
        )
        self.evictions = Counter(
            "llm_router_evictions",
            "Models evicted, by reason (memory, ttl, request, drain_timeout, reconfigured)",
            ["model", "reason"],
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "llm_router_completion_tokens", "Generated tokens reported by engines", ["model"], registry=self.registry
        )
        self.wake_integrity_restarts = Counter(
            "llm_router_wake_integrity_restarts",
            "Engines restarted cold because they answered the fixed probe differently after a wake",
            ["model"],
            registry=self.registry,
        )
        self.kv_actions = Counter(
            "llm_router_kv_slot_actions",
            "KV continuity: saves before an eviction and restores after a load, by outcome (ok, failed, timeout)",
            ["model", "action", "outcome"],
            registry=self.registry,
        )
        self.kv_tokens = Counter(
            "llm_router_kv_slot_tokens",
            "Tokens saved or restored (KV continuity)",
            ["model", "action"],
            registry=self.registry,
        )
        self.kv_bytes = Counter(
            "llm_router_kv_slot_bytes",
            "Bytes saved or restored (KV continuity)",
            ["model", "action"],
            registry=self.registry,
        )
        self.kv_seconds = Histogram(
            "llm_router_kv_slot_seconds",
            "Duration of a save or restore of an engine's slots (KV continuity)",
            ["model", "action"],
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
        )
        self.kv_reused = Counter(
            "llm_router_kv_reused_tokens",
            "Prompt tokens the engine took from its cache in the first answer after a restore",
            ["model"],
            registry=self.registry,
        )
        self.page_cache_read = Counter(
            "llm_router_page_cache_read_bytes",
            "Bytes of weight files the page-cache warmer read (models kept warm, newcomers read while victims drain)",
            ["model"],
            registry=self.registry,
        )
        self.page_cache_backoffs = Counter(
            "llm_router_page_cache_backoffs",
            "Times the page-cache warmer waited because memory was under pressure",
            registry=self.registry,
        )

        self.peer_requests = Counter(
            "llm_router_peer_requests",
            "Requests forwarded to a peer router (router.peers), by peer and model",
            ["peer", "model"],
            registry=self.registry,
        )

    def switch_done(self, model: str, outcome: str, seconds: float) -> None:
        """A load ended: `outcome` is "ok" or why it failed (engines.instance.LoadFailure)."""
        self.switches.labels(model, outcome).inc()
        if outcome == "ok":
            self.switch_seconds.labels(model).observe(seconds)

    def kv_done(self, model: str, action: str, outcome: str, report: Any) -> None:
        """A save or restore of an engine's slots ended (`report`: an engines.slots.SlotReport when ok)."""
        self.kv_actions.labels(model, action, outcome).inc()
        if report is not None:
            self.kv_tokens.labels(model, action).inc(report.tokens)
            self.kv_bytes.labels(model, action).inc(report.bytes)
            self.kv_seconds.labels(model, action).observe(report.seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
