"""Prometheus metrics of the router (served at /metrics)."""

from __future__ import annotations

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

    def render(self) -> bytes:
        return generate_latest(self.registry)
