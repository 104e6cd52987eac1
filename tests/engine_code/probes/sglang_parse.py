"""Parse rendered `python -m sglang.launch_server` command lines with SGLang's own code, inside an SGLang venv.

    <sglang venv>/bin/python sglang_parse.py RECORDS.json REPORT.json STUBS_DIR

RECORDS.json: [{"id", "argv" (as the start script exec'd it: argv[0] is the venv's python), "env"}]. For each, what
`python -m sglang.launch_server` does before serving (sglang 0.5.23 launch_server.py:70-80: `load_plugins()`, then
`prepare_server_args(sys.argv[1:])`, which merges the `--config` YAML with ConfigArgumentMerger and parses;
srt/server_args.py:668-713). The start script's YAML is read from where it wrote it. The report says which option
tokens, and which YAML keys (as the `--key` the merger turns them into), are not exact option strings of the parser,
and whether every value, from the command line and from the YAML, parsed as rendered. STUBS_DIR goes first on
sys.path (an import-time stand-in for triton; tests/engine_code/stubs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import argv_check

REPORTED = (
    "model_path",
    "served_model_name",
    "host",
    "port",
    "context_length",
    "tp_size",
    "quantization",
    "dtype",
    "mem_fraction_static",
    "attention_backend",
    "sleep_on_idle",
    "enable_memory_saver",
    "enable_weights_cpu_backup",
)

# What ServerArgs.from_cli_args renames (0.5.10.post1 srt/server_args.py:5967), for the argparse-only lanes below.
FROM_CLI_RENAMES = {"tp_size": "tensor_parallel_size"}
# Lanes whose ServerArgs.__post_init__ needs an accelerator (0.5.10.post1: "No accelerator (CUDA, XPU, HPU, NPU,
# MUSA, MPS) is available."): there the values are checked on the merged argparse namespace instead.
ACCELERATOR_AT_PARSE = ("0.5.10.post1",)


def yaml_options(path: str, parser: argparse.ArgumentParser) -> tuple[list[argv_check.Option], list[str]]:
    """The YAML's keys as the options ConfigArgumentMerger makes of them (`--<key>`; true for a store_true flag)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    opts = []
    problems = []
    if not isinstance(data, dict):
        return [], [f"{path}: not a mapping"]
    for key, value in data.items():
        flag = f"--{key}"
        action = parser._option_string_actions.get(flag)
        if action is None:
            problems.append(f"--config YAML key {key!r}: {flag} is not an exact option string of the parser")
            continue
        if isinstance(value, bool):
            opts.append(argv_check.Option(flag, action, [] if action.nargs == 0 else [str(value).lower()]))
        else:
            opts.append(argv_check.Option(flag, action, [str(value)]))
    return opts, problems


def main(records_path: str, report_path: str, stubs: str) -> int:
    sys.path.insert(0, stubs)
    started = time.monotonic()
    import sglang
    from sglang.srt.server_args import ServerArgs, prepare_server_args

    try:
        from sglang.srt.plugins import load_plugins
    except ImportError:  # 0.5.10.post1 has no plugin loader
        load_plugins = None
    imported = time.monotonic() - started
    if load_plugins is not None:
        load_plugins()
    version = sglang.__version__

    reports = []
    for record in json.loads(Path(records_path).read_text()):
        argv = record["argv"]
        report: dict[str, Any] = {"id": record["id"], "problems": []}
        reports.append(report)
        if argv[1:3] != ["-m", "sglang.launch_server"]:
            report["problems"].append(f"not a `python -m sglang.launch_server` command line: {argv[:3]}")
            continue
        args = argv[3:]
        parser = argparse.ArgumentParser()
        ServerArgs.add_cli_args(parser)
        report["allow_abbrev"] = parser.allow_abbrev
        cli_opts, positionals = argv_check.options(args, parser)
        config_opts: list[argv_check.Option] = []
        for option in cli_opts:
            if option.flag == "--config" and option.values:
                config_opts, problems = yaml_options(option.values[0], parser)
                report["problems"] += problems
                report["config_keys"] = [o.flag[2:] for o in config_opts]
        if positionals:
            report["problems"].append(f"positional arguments: {positionals}")
        saved_env = dict(os.environ)
        os.environ.update(record["env"])
        stderr = io.StringIO()
        parsed: Any = None
        try:
            with contextlib.redirect_stderr(stderr):
                parsed = prepare_server_args(list(args))
        except SystemExit as exc:
            report["problems"].append(f"argparse exited {exc.code}: {stderr.getvalue().strip()[-600:]}")
        except RuntimeError as exc:
            if version not in ACCELERATOR_AT_PARSE or "No accelerator" not in str(exc):
                report["problems"].append(f"prepare_server_args raised RuntimeError: {str(exc)[:600]}")
            else:
                from sglang.srt.server_args_config_parser import ConfigArgumentMerger

                report["limit"] = f"ServerArgs.__post_init__: {str(exc)[:200]}; checked on the argparse namespace"
                parsed = parser.parse_args(ConfigArgumentMerger(parser).merge_config_with_args(list(args)))
        except Exception as exc:
            report["problems"].append(f"prepare_server_args raised {type(exc).__name__}: {str(exc)[:600]}")
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
        if parsed is None:
            report["problems"] += [f"{o.flag}: not an exact option string" for o in cli_opts if o.action is None]
            continue
        # The YAML comes first, the command line after it wins (ConfigArgumentMerger.merge_config_with_args).
        own = [o for o in cli_opts if o.flag != "--config"]
        problems, rows = argv_check.check(config_opts + own, lambda dest, ns=parsed: getattr(ns, dest, "<absent>"))
        report["problems"] += problems
        report["options"] = rows
        report["parsed"] = {
            name: repr(getattr(parsed, name, getattr(parsed, FROM_CLI_RENAMES.get(name, name), "<absent>")))
            for name in REPORTED
        }
        report["api_key_sha256"] = argv_check.digest(getattr(parsed, "api_key", None))
    result = {"engine": "sglang", "version": version, "import_s": round(imported, 1), "reports": reports}
    with open(report_path, "w") as out:
        json.dump(result, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
