"""Prepare `make demo`: two tiny real GGUF models and a router config that runs them with llama-server.

The models are fit for a chat UI: a context that holds Open-WebUI's built-in tools (~20-25 KB of JSON in every
request) plus a few turns, and a default `max_tokens` so that gibberish replies do not fill it.

python -m router_app.tools.demo --dir demo --llama-server PATH
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from router_app.tools.tiny_gguf import write_model

DEMO_MODELS = (("tiny-a", 1, ["a"]), ("tiny-b", 2, ["b"]))
# Context given to llama-server (-c), and the models' trained context (n_ctx_train) so it warns of nothing.
DEMO_CONTEXT = 16384
DEMO_MAX_TOKENS = 128


def llama_server_command(binary: Path, gguf: Path, model_id: str, ctx: int, on_socket: bool = True) -> list[str]:
    """llama-server with one slot and one thread (the demo's and the tests'), listening on the Unix socket the router
    picks (only the router's user can reach it), or with `on_socket=False` on 127.0.0.1 and a port it picks."""
    listen = ("--host", "${SOCKET}") if on_socket else ("--host", "127.0.0.1", "--port", "${PORT}")
    return [
        *(str(binary), "-m", str(gguf), "-a", model_id, *listen),
        *("-c", str(ctx), "-np", "1", "-t", "1", "--no-webui"),
    ]


def demo_config(directory: Path, llama_server: Path, port: int = 8002) -> dict:
    """The demo's config: process supervisor, each model's engine on its own Unix socket, its slots saved across
    switches (KV continuity) under the demo directory's state/."""
    models = []
    for model_id, _seed, aliases in DEMO_MODELS:
        command = llama_server_command(llama_server, directory / f"{model_id}.gguf", model_id, DEMO_CONTEXT)
        command += ["--slot-save-path", "${SLOT_DIR}"]  # KV continuity: a chat keeps its cache across switches
        models.append(
            {
                "id": model_id,
                "aliases": aliases,
                "backend": "llamacpp",
                "description": f"tiny random-weight llama ({model_id}); replies are gibberish",
                "command": command,
                "context_length": DEMO_CONTEXT,
                # Random weights never stop on their own: without a limit a reply fills the context.
                "defaults": {"max_tokens": DEMO_MAX_TOKENS},
            }
        )
    router = {"host": "127.0.0.1", "port": port, "supervisor": "process", "state_dir": str(directory / "state")}
    return {"router": router, "models": models}


def write_demo(directory: Path, llama_server: Path, port: int = 8002) -> Path:
    """Write the models (deterministic, so rewritten each time) and config.yml into `directory`; return its path."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    for model_id, seed, _aliases in DEMO_MODELS:
        write_model(directory / f"{model_id}.gguf", name=model_id, seed=seed, ctx=DEMO_CONTEXT, chat_ui=True)
    config_path = directory / "config.yml"
    config_path.write_text(
        "# Written by `make demo` (router_app.tools.demo); edit freely.\n"
        + yaml.safe_dump(demo_config(directory, llama_server.resolve(), port), sort_keys=False)
    )
    return config_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("demo"))
    parser.add_argument("--llama-server", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args(argv)
    print(f"demo config: {write_demo(args.dir, args.llama_server, args.port)}")


if __name__ == "__main__":
    main()
