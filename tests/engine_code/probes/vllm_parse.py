"""Parse rendered `vllm serve` command lines with vLLM's own CLI, inside a vLLM venv; nothing is started.

    <vllm venv>/bin/python vllm_parse.py RECORDS.json REPORT.json

RECORDS.json: [{"id", "argv" (as the start script exec'd it: argv[0] is the vllm executable), "env"}]. For each,
`vllm.entrypoints.cli.main.main()` runs on it as `vllm serve` would (vllm 0.32.0 entrypoints/cli/main.py:39-122:
subcommand parsers, `parse_args`, `cmd.validate(args)`, then the dispatch), with the serve dispatch replaced by a
capture, so the engine is not started (the next step, AsyncEngineArgs, already reads the model's files).
The report says which option tokens are not exact option strings of the `serve` parser (argparse's allow_abbrev
would take a prefix) and whether every value parsed as rendered.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import argv_check

REPORTED = (
    "model",
    "served_model_name",
    "host",
    "port",
    "max_model_len",
    "tensor_parallel_size",
    "quantization",
    "gpu_memory_utilization",
    "enable_sleep_mode",
    "middleware",
    "kv_cache_memory_bytes",
)


def serve_command_class(module: Any) -> Any:
    """The `serve` subcommand class (ServeSubcommand in 0.32.0 and 0.19.1)."""
    for value in vars(module).values():
        if isinstance(value, type) and getattr(value, "name", None) == "serve" and hasattr(value, "cmd"):
            return value
    raise RuntimeError("no serve subcommand class in vllm.entrypoints.cli.serve")


def resolve_auth(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """The keys vLLM will require and the `--middleware` objects, resolved as the server does (0.32.0
    entrypoints/serve/middleware/register.py:33 `args.api_key or [envs.VLLM_API_KEY]`, :65-75 import by dotted
    path), with the record's environment and its PYTHONPATH on sys.path."""
    import inspect

    import vllm.envs as envs

    tokens = [key for key in (args.api_key or [envs.VLLM_API_KEY]) if key]
    middleware = {}
    path = [p for p in env.get("PYTHONPATH", "").split(":") if p]
    saved_path = list(sys.path)
    sys.path[:0] = path
    try:
        for dotted in args.middleware or []:
            module_path, name = dotted.rsplit(".", 1)
            try:
                sys.modules.pop(module_path, None)
                imported = getattr(importlib.import_module(module_path), name)
                middleware[dotted] = "class" if inspect.isclass(imported) else type(imported).__name__
            except (ImportError, AttributeError) as exc:
                middleware[dotted] = f"{type(exc).__name__}: {exc}"
    finally:
        sys.path[:] = saved_path
    return {"api_key_sha256": [argv_check.digest(t) for t in tokens], "middleware": middleware}


def main(records_path: str, report_path: str) -> int:
    started = time.monotonic()
    import vllm
    import vllm.entrypoints.cli.serve as serve
    from vllm.entrypoints.cli import main as cli

    imported = time.monotonic() - started
    captured: dict[str, Any] = {}
    command = serve_command_class(serve)
    subparser_init = command.subparser_init

    def capture_parser(self: Any, subparsers: Any) -> argparse.ArgumentParser:
        parser = subparser_init(self, subparsers)
        captured["parser"] = parser
        return parser

    command.subparser_init = capture_parser
    # The dispatch (`args.dispatch_function(args)` after `cmd.validate(args)`): capture instead of serving.
    command.cmd = staticmethod(lambda args: captured.__setitem__("args", args))

    reports = []
    for record in json.loads(Path(records_path).read_text()):
        captured.clear()
        argv = record["argv"]
        report: dict[str, Any] = {"id": record["id"], "problems": []}
        reports.append(report)
        if argv[1:2] != ["serve"]:
            report["problems"].append(f"not a `vllm serve` command line: {argv[:3]}")
            continue
        saved_env = dict(os.environ)
        os.environ.update(record["env"])
        sys.argv = ["vllm", *argv[1:]]
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                cli.main()
            if "args" in captured:
                report.update(resolve_auth(captured["args"], record["env"]))
        except SystemExit as exc:
            report["problems"].append(f"vllm serve exited {exc.code}: {stderr.getvalue().strip()[-600:]}")
        except Exception as exc:  # what validate() or the parser's own checks raise
            report["problems"].append(f"vllm serve raised {type(exc).__name__}: {str(exc)[:600]}")
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
        parser = captured.get("parser")
        if parser is None:
            report["problems"].append("the serve parser was never built")
            continue
        report["allow_abbrev"] = parser.allow_abbrev
        opts, positionals = argv_check.options(argv[2:], parser)
        args = captured.get("args")
        if args is None:
            report["problems"] += [f"{o.flag}: not an exact option string" for o in opts if o.action is None]
            continue
        # ServeSubcommand.cmd's first step (0.32.0 entrypoints/cli/serve.py:56-57).
        if getattr(args, "model_tag", None) is not None:
            args.model = args.model_tag
        problems, rows = argv_check.check(opts, lambda dest, ns=args: getattr(ns, dest, "<absent>"))
        report["problems"] += problems
        report["options"] = rows
        report["positionals"] = positionals
        report["parsed"] = {name: repr(getattr(args, name, "<absent>")) for name in REPORTED}
    result = {"engine": "vllm", "version": vllm.__version__, "import_s": round(imported, 1), "reports": reports}
    with open(report_path, "w") as out:
        json.dump(result, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
