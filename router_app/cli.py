"""`llm-router` command line: serve, check-config, models."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

from router_app import __version__
from router_app.config import Config, ConfigError, load_config


def _load(path: Path | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"llm-router: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP, and
    # without it every response pays ~40 ms of Nagle + delayed-ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        print(f"llm-router: cannot listen on {host}:{port}: {exc.strerror} (router.port / --port)", file=sys.stderr)
        raise SystemExit(1) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from router_app.app import create_app
    from router_app.web.http import KEEP_ALIVE_S, BoundedHeadHttpToolsProtocol, GracefulServer

    config = _load(args.config)
    settings = config.router
    logging.basicConfig(
        level=settings.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One line per proxied request from httpx is noise at info level.
    logging.getLogger("httpx").setLevel(logging.DEBUG if settings.log_level == "debug" else logging.WARNING)
    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    try:
        app = create_app(config, config_path=args.config, reloadable=True)
    except ConfigError as exc:
        print(f"llm-router: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    sock = _bind(host, port)
    actual_port = sock.getsockname()[1]
    server = GracefulServer(
        uvicorn.Config(
            app,
            http=BoundedHeadHttpToolsProtocol,  # httptools with a bound on request heads (431 past 64 KiB)
            log_config=None,
            access_log=settings.log_level == "debug",
            timeout_graceful_shutdown=settings.shutdown_grace_s,
            timeout_keep_alive=KEEP_ALIVE_S,
            lifespan="on",
        ),
        app.shutting_down,
    )
    logging.getLogger("router_app").info("llm-router listening on http://%s:%d/v1", host, actual_port)
    server.run(sockets=[sock])  # uvicorn's loop factory: uvloop when installed


def check_config(args: argparse.Namespace) -> None:
    config = _load(args.config)
    path = args.config or "config"
    print(f"{path}: OK, {len(config.models)} model(s), supervisor {config.router.supervisor}")


def models(args: argparse.Namespace) -> None:
    from router_app.engines.supervisors import default_unit_name

    config = _load(args.config)
    rows = [("ID", "BACKEND", "PLACEMENT", "ALIASES", "STARTED BY")]
    for model in config.models:
        if not model.local:
            how = model.url or ""
        elif config.router.supervisor == "systemd":
            how = model.unit or default_unit_name(model.id)
        else:
            how = " ".join(model.command or [])
        placement = ",".join(model.devices or []) or "any"
        if model.group:
            placement += f" (group {model.group})"
        if model.pinned:
            placement += " pinned"
        rows.append((model.id, model.backend.value, placement, ",".join(model.aliases) or "-", how))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])


def bench(args: argparse.Namespace) -> None:
    from router_app.tools.loadtest import main as bench_main

    raise SystemExit(bench_main(args))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="llm-router",
        description="One OpenAI-compatible endpoint for many local models, switching engines on demand.",
    )
    parser.add_argument("--version", action="version", version=f"llm-router {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "--config",
            type=Path,
            default=None,
            help="config file (default: $LLM_ROUTER_CONFIG or /etc/llm-router/config.yml)",
        )
        return sub

    serve_parser = command("serve", "run the router")
    serve_parser.add_argument("--host", default=None, help="listen address (overrides router.host)")
    serve_parser.add_argument("--port", type=int, default=None, help="listen port, 0 = any (overrides router.port)")
    serve_parser.set_defaults(func=serve)
    command("check-config", "validate the config file and exit").set_defaults(func=check_config)
    command("models", "list the configured models").set_defaults(func=models)
    bench_parser = commands.add_parser("bench", help="load-test an OpenAI-compatible URL (router or engine)")
    from router_app.tools.loadtest import add_arguments

    add_arguments(bench_parser)
    bench_parser.set_defaults(func=bench)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
