"""Tools around the router, not part of it: the load-test client (`llm-router bench`), the demo setup and the
tiny GGUF writer used by the demo, tests and benchmarks. The router never imports them."""
