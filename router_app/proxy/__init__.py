"""Proxying requests to the resident engine, by concept: `endpoints` (the route table), `parse` (body checks,
per-model parameters), `progress` (the router's own stream events), `relay`,
`report` (speed report), `upstream` (the HTTP client to engines) and `handler` (one request from ticket to
answer)."""

from router_app.proxy.endpoints import ROUTES, Endpoint, Kind
from router_app.proxy.handler import Proxy

__all__ = ["ROUTES", "Endpoint", "Kind", "Proxy"]
