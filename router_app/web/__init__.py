"""The edge: the ASGI entry point (size limit, client and admin keys, the hot path to the proxy) in `entry`, and
the FastAPI `routes` for everything that is not proxied (/health, /metrics, /v1/models, /models, /admin)."""
