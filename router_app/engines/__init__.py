"""Engines: one `instance` per engine process (its state and readiness loop), the `adapters` that know each
backend's API (llama-server, SGLang, vLLM, TabbyAPI, remote OpenAI) and the `supervisors` that start and stop the
process (a child process group or a systemd unit). Nothing here decides when to switch."""
