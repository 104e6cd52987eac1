"""Proxying requests to the resident engine, by concept: `endpoints` (the route table), `parse` (body checks,
per-model parameters), `waiting` (client disconnects), `progress` (the router's own stream events), `relay`,
`report` (speed report) and `core` (one request from ticket to answer)."""

from .core import Proxy
from .endpoints import ROUTES, Endpoint, Kind

__all__ = ["ROUTES", "Endpoint", "Kind", "Proxy"]
