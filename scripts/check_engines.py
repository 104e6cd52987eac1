#!/usr/bin/env python3
"""Check that every engine install lane resolves, and links the CUDA major it claims.

Reads ``_llm_router_engine_lanes`` from roles/llm_router/vars/main.yml. For every engine x lane x Python it runs
pip's resolver (``--dry-run --report``, binary wheels only, for the target platform) on the lane's exact
requirement list, then reads the CUDA major of the resolved set from package names and versions
(``nvidia-*-cu12``/``-cu13``, unsuffixed CUDA 13 ``nvidia-cuda-runtime``, ``cuda-bindings``/``cuda-python``,
``cuda-toolkit``, ``cupy-cuda12x``, torch local versions such as ``+cu128``) and asserts it equals the lane's
``cuda_major``.

Direct-URL requirements (TabbyAPI's torch and exllama wheels live on download.pytorch.org and GitHub releases)
are checked statically from their wheel file name (Python tag, platform tag, ``+cuNNN`` label); torch is then
resolved from PyPI at the same public version, so the CUDA libraries it pulls in are checked too.

Reports are cached under ~/.cache/llm-router/pip-check for a day, keyed by everything that goes into a resolve.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import yaml
from packaging.requirements import Requirement
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
LANES_FILE = ROOT / "roles/llm_router/vars/main.yml"
LANES_KEY = "_llm_router_engine_lanes"
CACHE_DIR = Path.home() / ".cache/llm-router/pip-check"
# Oldest glibc among the supported OSes: Ubuntu 22.04 (2.35); Debian 12 has 2.36, Ubuntu 24.04 2.39.
GLIBC_MINOR = 35
PLATFORMS = [f"manylinux_2_{m}_x86_64" for m in range(GLIBC_MINOR, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]
# pip evaluates environment markers against the interpreter it runs in, not --python-version (its --report
# shows this under "environment"). The shim pins the marker environment to the target Python on Linux x86_64.
PIP_SHIM = """
import sys
from pip._vendor.packaging import markers
TARGET = sys.argv[1]
_default = markers.default_environment
def _target():
    env = _default()
    env.update(python_version=TARGET, python_full_version=TARGET + ".0", implementation_name="cpython",
               implementation_version=TARGET + ".0", platform_python_implementation="CPython",
               os_name="posix", sys_platform="linux", platform_system="Linux", platform_machine="x86_64")
    return env
markers.default_environment = _target
from pip._internal.cli.main import main
sys.argv = ["pip"] + sys.argv[2:]
sys.exit(main())
"""
# Packages whose own version is the CUDA version (unsuffixed names are the CUDA 13 wheels).
VERSION_IS_CUDA = {
    "nvidia-cuda-runtime",
    "nvidia-cuda-nvrtc",
    "nvidia-cuda-nvcc",
    "nvidia-nvjitlink",
    "cuda-toolkit",
    "cuda-python",
    "cuda-bindings",
}
RUNTIME_PACKAGES = {"nvidia-cuda-runtime", "nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime-cu13"}
_SUFFIX = re.compile(r"^(?:nvidia-.+|cupy)-cu(?:da)?(\d{2})x?$")  # nvidia-nccl-cu12, cupy-cuda13x
_LOCAL_CU = re.compile(r"(?:^|[.+])cu(\d{2,3})")


@dataclass(frozen=True)
class Evidence:
    """One package in a resolved set and the CUDA major it implies."""

    package: str
    version: str
    major: int
    runtime: bool = False

    def __str__(self) -> str:
        return f"{self.package}=={self.version} (CUDA {self.major})"


@dataclass
class Case:
    """One resolve: an engine's lane on one Python."""

    engine: str
    lane: str
    python: str
    cuda_major: int
    requirements: list[str]
    extra_index_urls: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.engine}/{self.lane}/py{self.python}"


def cuda_major_of_local(version: str) -> int | None:
    """CUDA major of a local version label: ``2.9.0+cu128`` -> 12, ``1.4.2+cu132.torch2.11.0`` -> 13."""
    _, _, local = version.partition("+")
    match = _LOCAL_CU.search(local) if local else None
    if not match:
        return None
    digits = match.group(1)  # cu128 -> 12, cu130 -> 13, cu118 -> 11, cu92 -> 9
    return int(digits[:-1]) if len(digits) == 3 or digits[0] != "1" else int(digits)


def package_evidence(name: str, version: str) -> Evidence | None:
    """CUDA major one installed package implies, or None when its name and version say nothing."""
    name = canonicalize_name(name)
    local = cuda_major_of_local(version)
    if local is not None:
        return Evidence(name, version, local, runtime=name == "torch")
    if match := _SUFFIX.match(name):
        return Evidence(name, version, int(match.group(1)), runtime=name in RUNTIME_PACKAGES)
    if name in VERSION_IS_CUDA:
        return Evidence(name, version, int(version.split(".")[0]), runtime=name in RUNTIME_PACKAGES)
    return None


def report_evidence(report: dict) -> list[Evidence]:
    """CUDA evidence of every package a pip ``--report`` would install."""
    found = []
    for item in report.get("install", []):
        meta = item["metadata"]
        if ev := package_evidence(meta["name"], meta["version"]):
            found.append(ev)
    return found


def verdict(cuda_major: int, evidence: Iterable[Evidence]) -> list[str]:
    """Problems with a resolved set for a lane: empty when it links exactly ``cuda_major``.

    The CUDA runtime (torch's ``nvidia-cuda-runtime*`` or a ``+cuNNN`` torch) must be the lane's major; no package
    may need a newer major (the driver would not run it). Older-major helpers (e.g. ``nvidia-cutlass-dsl-libs-cu12``
    in a CUDA 13 set) run on a newer driver and are allowed.
    """
    evidence = list(evidence)
    problems = []
    runtimes = sorted({ev.major for ev in evidence if ev.runtime})
    if not runtimes:
        problems.append("no CUDA runtime in the resolved set (no nvidia-cuda-runtime*, no +cuNNN torch)")
    elif runtimes != [cuda_major]:
        found = ", ".join(str(ev) for ev in evidence if ev.runtime)
        problems.append(f"CUDA runtime is {'/'.join(map(str, runtimes))}, lane says {cuda_major}: {found}")
    newer = [str(ev) for ev in evidence if ev.major > cuda_major]
    if newer:
        problems.append(f"needs CUDA > {cuda_major}: {', '.join(newer)}")
    return problems


def target_marker_env(python: str) -> dict[str, str]:
    """Marker environment of the target: CPython ``python`` on Linux x86_64."""
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_name": "cpython",
        "implementation_version": f"{python}.0",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "extra": "",
    }


def split_requirements(requirements: Iterable[str], python: str) -> tuple[list[str], list[Evidence], list[str]]:
    """Requirements for pip, static evidence of direct-URL wheels, and problems, for one target Python.

    Requirements whose marker is false on the target are dropped. A direct-URL wheel is checked from its file
    name (it must be built for this Python and Linux x86_64); torch is replaced by ``torch==<public version>``
    so pip still resolves the CUDA libraries it depends on.
    """
    env = target_marker_env(python)
    to_pip: list[str] = []
    static: list[Evidence] = []
    problems: list[str] = []
    for line in requirements:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate(env):
            continue
        if not req.url:
            to_pip.append(str(Requirement(line.split(";")[0])))
            continue
        filename = unquote(Path(urlparse(req.url).path).name)
        name, version, _, tags = parse_wheel_filename(filename)
        if not any(_runs_on(tag, python) for tag in tags):
            problems.append(f"{filename} is not a wheel for CPython {python} on Linux x86_64")
        if (major := cuda_major_of_local(str(version))) is not None:
            static.append(Evidence(name, str(version), major, runtime=name == "torch"))
        if name == "torch":
            to_pip.append(f"torch=={version.public}")
    return to_pip, static, problems


def _runs_on(tag: Tag, python: str) -> bool:
    """Whether a wheel tag installs on CPython ``python`` on Linux x86_64."""
    if not tag.platform.endswith("x86_64") or not tag.platform.startswith(("linux", "manylinux")):
        return tag.platform == "any" and tag.interpreter.startswith("py3")
    cp = "cp" + python.replace(".", "")
    if tag.abi == "abi3":  # stable ABI: built for this or an older CPython 3
        return tag.interpreter.startswith("cp3") and int(tag.interpreter[3:]) <= int(cp[3:])
    return tag.interpreter == cp


def lane_cases(lanes: dict) -> Iterator[Case]:
    """Every engine x lane x Python of the lanes data."""
    for engine, engine_lanes in lanes.items():
        for lane, spec in engine_lanes.items():
            for python in spec["pythons"]:
                yield Case(
                    engine,
                    lane,
                    str(python),
                    int(spec["cuda_major"]),
                    list(spec["requirements"]),
                    list(spec.get("extra_index_urls") or []),
                )


def load_lanes(path: Path) -> dict:
    """The ``_llm_router_engine_lanes`` mapping of a vars file (or of a file holding only that key)."""
    data = yaml.safe_load(path.read_text())
    return data[LANES_KEY]


def pip_version() -> str:
    out = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def pip_args(case: Case, requirements: list[str], report: Path, cache_dir: Path) -> list[str]:
    """pip arguments of a metadata-only resolve for the target (no install, no build)."""
    args = [
        "install",
        "--dry-run",
        "--ignore-installed",
        "--only-binary=:all:",
        "--quiet",
        "--disable-pip-version-check",
        # Metadata through HTTP range requests when the index has no PEP 658 metadata: no multi-GB downloads.
        "--use-feature=fast-deps",
        "--python-version",
        case.python,
        "--implementation",
        "cp",
        "--cache-dir",
        str(cache_dir / "pip"),
        "--report",
        str(report),
    ]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    for url in case.extra_index_urls:
        args += ["--extra-index-url", url]
    return args + requirements


def resolve(case: Case, requirements: list[str], cache_dir: Path, pip: str, max_age_h: float = 24) -> dict:
    """pip's ``--report`` for the case, from the cache when the same resolve ran less than ``max_age_h`` ago
    (unpinned transitive dependencies move: an old report could hide drift)."""
    key_data = [requirements, case.python, PLATFORMS, case.extra_index_urls, pip, PIP_SHIM]
    key = hashlib.sha256(json.dumps(key_data).encode()).hexdigest()[:20]
    cached = cache_dir / f"{key}.json"
    if cached.exists() and time.time() - cached.stat().st_mtime < max_age_h * 3600:
        return json.loads(cached.read_text())
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL")}
        env["PIP_CONFIG_FILE"] = os.devnull  # only PyPI (or PIP_INDEX_URL) and the lane's own index URLs
        cmd = [sys.executable, "-c", PIP_SHIM, case.python, *pip_args(case, requirements, report, cache_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode != 0 and "invalid choice: 'fast-deps'" in proc.stderr:  # pip without the feature
            cmd.remove("--use-feature=fast-deps")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or proc.stderr.splitlines()
            raise ResolveError("\n".join(lines[-6:]))
        data = json.loads(report.read_text())
    cached.write_text(json.dumps(data))
    return data


class ResolveError(RuntimeError):
    """pip could not resolve a lane."""


def check_case(case: Case, cache_dir: Path, pip: str, max_age_h: float) -> tuple[Case, list[str], list[Evidence]]:
    """Resolve one case; return its problems (empty when fine) and the CUDA evidence found."""
    to_pip, static, problems = split_requirements(case.requirements, case.python)
    try:
        report = resolve(case, to_pip, cache_dir, pip, max_age_h)
    except ResolveError as exc:
        return case, [*problems, f"pip cannot resolve {to_pip}:\n{exc}"], static
    evidence = static + report_evidence(report)
    marker_python = report.get("environment", {}).get("python_version")
    if marker_python != case.python:  # the shim failed: markers were evaluated for another Python
        problems.append(f"pip evaluated environment markers for Python {marker_python}, not {case.python}")
    return case, problems + verdict(case.cuda_major, evidence), evidence


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lanes", type=Path, default=LANES_FILE, help=f"YAML file with {LANES_KEY}")
    parser.add_argument("--only", action="append", default=[], help="engine or engine/lane or engine/lane/pyX.Y")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--max-age-hours", type=float, default=24, help="re-resolve cached reports older than this")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the CUDA evidence of every case")
    args = parser.parse_args(argv)

    cases = [c for c in lane_cases(load_lanes(args.lanes)) if not args.only or c.name.startswith(tuple(args.only))]
    if not cases:
        print("check-engines: no lanes selected", file=sys.stderr)
        return 2
    pip = pip_version()
    failed = 0
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for case, problems, evidence in pool.map(
            lambda c: check_case(c, args.cache_dir, pip, args.max_age_hours), cases
        ):
            status = "FAIL" if problems else "ok"
            majors = sorted({ev.major for ev in evidence})
            print(f"{status:4} {case.name}: CUDA {case.cuda_major} lane, resolved set links CUDA {majors}")
            if args.verbose:
                print("     " + ", ".join(map(str, evidence)))
            for problem in problems:
                print(f"     {case.engine} lane {case.lane} python {case.python}: {problem}")
            failed += bool(problems)
    print(f"check-engines: {len(cases) - failed}/{len(cases)} lanes resolve to their CUDA major")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
