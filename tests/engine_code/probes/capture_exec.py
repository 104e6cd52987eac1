"""Stands in for an engine executable in the parser check: records what the start script exec'd, then exits 0.

Writes JSON to $ENGINE_CODE_CAPTURE: argv (argv[0] as the script named it), the environment, the working
directory, and the `--config` file's text and mode (SGLang's key YAML, which the script wrote just before).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> int:
    argv = sys.argv[1:]  # [the path the script exec'd, its arguments...] (the shim passes "$0" first)
    config = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None
    record = {
        "argv": argv,
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "config": Path(config).read_text() if config else None,
        "config_mode": oct(os.stat(config).st_mode & 0o777) if config else None,
    }
    with open(os.environ["ENGINE_CODE_CAPTURE"], "w") as out:
        json.dump(record, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
