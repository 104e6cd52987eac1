"""Prepare `make demo`: two tiny real GGUF models and a router config that runs them with llama-server.

python -m router_app.devtools.demo --dir demo --llama-server PATH
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from .tiny_gguf import write_model

DEMO_MODELS = (("tiny-a", 1, ["a"]), ("tiny-b", 2, ["b"]))


def demo_config(directory: Path, llama_server: Path, port: int = 8002) -> dict:
    """The demo's config: process supervisor, each model on a free port picked at start."""
    models = []
    for model_id, _seed, aliases in DEMO_MODELS:
        command = [
            str(llama_server),
            "-m",
            str(directory / f"{model_id}.gguf"),
            "-a",
            model_id,
            "--host",
            "127.0.0.1",
            "--port",
            "${PORT}",
            "-c",
            "2048",
            "-np",
            "1",
            "-t",
            "1",
            "--no-webui",
        ]
        models.append(
            {
                "id": model_id,
                "aliases": aliases,
                "backend": "llamacpp",
                "description": f"tiny random-weight llama ({model_id}); replies are gibberish",
                "command": command,
            }
        )
    return {"router": {"host": "127.0.0.1", "port": port, "supervisor": "process"}, "models": models}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("demo"))
    parser.add_argument("--llama-server", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args(argv)
    directory = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    for model_id, seed, _aliases in DEMO_MODELS:
        path = directory / f"{model_id}.gguf"
        if not path.exists():
            write_model(path, name=model_id, seed=seed)
    config_path = directory / "config.yml"
    config_path.write_text(
        "# Written by `make demo` (router_app.devtools.demo); edit freely.\n"
        + yaml.safe_dump(demo_config(directory, args.llama_server.resolve(), args.port), sort_keys=False)
    )
    print(f"demo config: {config_path}")


if __name__ == "__main__":
    main()
