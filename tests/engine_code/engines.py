"""What the engine-code checks share: the engine lanes and their venvs, and the role's files as a unit runs them.

`make check-engine-code` passes the venvs in $ENGINE_CODE_VENVS, one "<engine> <version> <venv>" line per lane, as
scripts/engine-code-venvs.sh prints them.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.role_render import models_f, render

HERE = Path(__file__).resolve().parent
PROBES = HERE / "probes"
STUBS = HERE / "stubs"


@dataclass(frozen=True)
class Lane:
    engine: str
    version: str
    ci: bool  # in `make check-engine-code` (the role's CUDA 13 lanes); the others only on demand

    @property
    def name(self) -> str:
        return f"{self.engine}-{self.version}"


LANES = (
    Lane("vllm", "0.32.0", ci=True),
    Lane("sglang", "0.5.23", ci=True),
    Lane("vllm", "0.19.1", ci=False),
    Lane("sglang", "0.5.10.post1", ci=False),
)


def venvs() -> dict[str, Path]:
    """Lane name -> venv, from $ENGINE_CODE_VENVS."""
    found = {}
    for line in os.environ.get("ENGINE_CODE_VENVS", "").splitlines():
        if line.strip():
            engine, version, path = line.split(maxsplit=2)
            found[f"{engine}-{version}"] = Path(path)
    return found


def lane_venv(lane: Lane) -> Path:
    """The lane's venv; a CI lane missing fails, an on-demand one skips."""
    venv = venvs().get(lane.name)
    if venv is not None and (venv / "bin/python").exists():
        return venv
    if lane.ci:
        pytest.fail(f"no venv for {lane.name} in $ENGINE_CODE_VENVS: run `make check-engine-code`")
    pytest.skip(f"{lane.name}: on demand only (`make check-engine-code-lanes`)")


def environment_file(text: str) -> dict[str, str]:
    """A rendered model.env as systemd reads an EnvironmentFile= (KEY=VALUE, quoted values, '#' comments)."""
    env = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        words = shlex.split(value)
        assert sep and len(words) <= 1, f"not an EnvironmentFile line: {line!r}"
        env[name.strip()] = words[0] if words else ""
    return env


# What a system unit's process gets besides EnvironmentFile= (systemd.exec(5) "Environment variables in spawned
# processes"; llm-model@.service sets HOME): PATH as systemd sets it for system units.
UNIT_PATH = models_f.SYSTEM_PATH


def install_model_files(model: dict[str, Any], base: Path, key: str) -> tuple[Path, dict[str, str]]:
    """Write what the role writes for one model under `base` (start.sh, its .env, the engine key as the unit's
    credential) and return the start script and the environment llm-model@.service would run it with."""
    slug = model["slug"]
    script = base / "models" / slug / "start.sh"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(render("model-start.sh.j2", item=model))
    script.chmod(0o755)
    env_file = base / "etc" / "models" / f"{slug}.env"
    env_file.parent.mkdir(parents=True, exist_ok=True)
    env_file.write_text(render("model.env.j2", item=model))
    credentials = base / "credentials" / slug
    credentials.mkdir(parents=True, exist_ok=True)
    (credentials / "engine.key").write_text(key + "\n")
    (credentials / "engine.key").chmod(0o400)
    private_tmp = base / "tmp" / slug  # PrivateTmp=yes: the unit's own /tmp
    private_tmp.mkdir(parents=True, exist_ok=True)
    unit_env = {
        "PATH": UNIT_PATH,
        "HOME": str(base / "state" / "engines"),
        "LANG": "C.UTF-8",
        "CREDENTIALS_DIRECTORY": str(credentials),
        "TMPDIR": str(private_tmp),
        **environment_file(env_file.read_text()),
    }
    return script, unit_env
