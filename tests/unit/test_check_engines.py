"""scripts/check_engines.py: CUDA major of a resolved install set, and the role's lanes data it checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.modules import load_script

ROOT = Path(__file__).resolve().parents[2]
ce = load_script("check_engines")

LANES = ce.load_lanes(ce.LANES_FILE)
SUPPORTED_PYTHONS = {"3.10", "3.11", "3.12"}  # Ubuntu 22.04, Debian 12, Ubuntu 24.04


def report(*packages: tuple[str, str]) -> dict:
    """A minimal pip --report (pip's format: install[].metadata.{name,version})."""
    return {"version": "1", "install": [{"metadata": {"name": n, "version": v}} for n, v in packages]}


# torch 2.9.1 on PyPI: METADATA Requires-Dist nvidia-cuda-runtime-cu12==12.8.90; torch/version.py cuda = '12.8'.
CU12_SET = report(
    ("sglang", "0.5.10.post1"),
    ("torch", "2.9.1"),
    ("nvidia-cuda-runtime-cu12", "12.8.90"),
    ("nvidia-nccl-cu12", "2.27.5"),
    ("cuda-python", "12.9.0"),
    ("cuda-bindings", "12.9.10"),
    ("nvidia-cutlass-dsl-libs-cu12", "4.8.1"),
)
# torch 2.14.1 on PyPI: Requires-Dist nvidia-cuda-runtime==13.0.96 (CUDA 13 wheels drop the -cuXX suffix).
CU13_SET = report(
    ("sglang", "0.5.23"),
    ("torch", "2.14.1"),
    ("nvidia-cuda-runtime", "13.0.96"),
    ("nvidia-cufft", "12.0.0.61"),  # cuFFT's own version, not CUDA's
    ("cuda-toolkit", "13.0.2"),
    ("cuda-bindings", "13.4.4"),
    ("nvidia-cutlass-dsl-libs-cu12", "4.8.1"),  # older-major helper: runs on a newer driver
)


@pytest.mark.parametrize(
    ("name", "version", "major", "runtime"),
    [
        ("nvidia-cuda-runtime-cu12", "12.8.90", 12, True),
        ("nvidia_cuda_runtime", "13.0.96", 13, True),
        ("nvidia-nccl-cu13", "2.28.9", 13, False),
        ("cupy-cuda12x", "14.2.0", 12, False),
        ("cuda-bindings", "12.9.4", 12, False),
        ("cuda-python", "13.4.4", 13, False),
        ("torch", "2.9.0+cu128", 12, True),
        ("exllamav3", "1.4.2+cu132.torch2.11.0", 13, False),
        ("flash-attn", "2.8.3+cu128torch2.9", 12, False),
    ],
)
def test_package_evidence(name: str, version: str, major: int, runtime: bool) -> None:
    ev = ce.package_evidence(name, version)
    assert ev is not None and (ev.major, ev.runtime) == (major, runtime)


@pytest.mark.parametrize(("name", "version"), [("torch", "2.9.1"), ("nvidia-cufft", "12.0.0.61"), ("numpy", "2.1")])
def test_packages_without_cuda_evidence(name: str, version: str) -> None:
    assert ce.package_evidence(name, version) is None


def test_sets_match_their_lane() -> None:
    assert ce.verdict(12, ce.report_evidence(CU12_SET)) == []
    assert ce.verdict(13, ce.report_evidence(CU13_SET)) == []


def test_cuda13_set_in_cuda12_lane_fails() -> None:
    """A swapped pin (sglang 0.5.23 in the CUDA 12 lane) needs an R580 driver: the check must name why."""
    problems = ce.verdict(12, ce.report_evidence(CU13_SET))
    assert any("CUDA runtime is 13, lane says 12" in p and "nvidia-cuda-runtime==13.0.96" in p for p in problems)
    assert any(p.startswith("needs CUDA > 12:") and "cuda-bindings==13.4.4" in p for p in problems)


def test_cuda12_set_in_cuda13_lane_fails() -> None:
    (problem,) = ce.verdict(13, ce.report_evidence(CU12_SET))
    assert "CUDA runtime is 12, lane says 13" in problem and "nvidia-cuda-runtime-cu12==12.8.90" in problem


def test_one_cuda13_package_in_a_cuda12_set_fails() -> None:
    """Unpinned transitive drift: nvidia-cudnn-frontend 1.32.0 pulls nvidia-cutlass-dsl[cu13] into sglang 0.5.10."""
    drifted = report(*[(i["metadata"]["name"], i["metadata"]["version"]) for i in CU12_SET["install"]])
    drifted["install"].append({"metadata": {"name": "nvidia-cutlass-dsl-libs-cu13", "version": "4.8.1"}})
    (problem,) = ce.verdict(12, ce.report_evidence(drifted))
    assert problem == "needs CUDA > 12: nvidia-cutlass-dsl-libs-cu13==4.8.1 (CUDA 13)"


def test_set_without_a_runtime_fails() -> None:
    assert ce.verdict(12, ce.report_evidence(report(("numpy", "2.1")))) == [
        "no CUDA runtime in the resolved set (no nvidia-cuda-runtime*, no +cuNNN torch)"
    ]


def test_report_fixture_round_trip(tmp_path: Path) -> None:
    """The evidence is read from pip's JSON report as written to disk."""
    path = tmp_path / "report.json"
    path.write_text(json.dumps(CU12_SET))
    evidence = ce.report_evidence(json.loads(path.read_text()))
    assert {str(ev) for ev in evidence if ev.runtime} == {"nvidia-cuda-runtime-cu12==12.8.90 (CUDA 12)"}


TORCH_URL = "https://download.pytorch.org/whl/cu128/torch-2.9.0%2Bcu128-{cp}-{cp}-manylinux_2_28_x86_64.whl"
EXL3_URL = "https://github.com/turboderp-org/exllamav3/releases/download/v1.4.2/exllamav3-1.4.2%2Bcu132.torch2.11.0-{cp}-{cp}-linux_x86_64.whl"
LINUX = "platform_system == 'Linux' and platform_machine == 'x86_64'"


def test_direct_url_wheels_are_checked_from_their_file_names() -> None:
    """TabbyAPI pins torch/exllama by URL, one line per Python (tabbyAPI@e632af4 pyproject.toml cu12/cu13)."""
    reqs = [
        "loguru",
        "uvloop ; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "winloop ; platform_system == 'Windows'",
        *(f"torch @ {TORCH_URL.format(cp=cp)} ; {LINUX} and python_version == '{py}'" for cp, py in
          [("cp311", "3.11"), ("cp312", "3.12")]),
        f"exllamav3 @ {EXL3_URL.format(cp='cp312')} ; {LINUX} and python_version == '3.12'",
    ]  # fmt: skip
    to_pip, static, problems = ce.split_requirements(reqs, "3.12")
    assert to_pip == ["loguru", "uvloop", "torch==2.9.0"] and problems == []
    assert [str(ev) for ev in static] == [
        "torch==2.9.0+cu128 (CUDA 12)",
        "exllamav3==1.4.2+cu132.torch2.11.0 (CUDA 13)",
    ]
    # The same list in a CUDA 12 lane: exllamav3 +cu132 needs a CUDA 13 driver.
    assert ce.verdict(12, static) == ["needs CUDA > 12: exllamav3==1.4.2+cu132.torch2.11.0 (CUDA 13)"]
    to_pip, static, _ = ce.split_requirements(reqs, "3.10")
    assert to_pip == ["loguru", "uvloop"] and static == []


def test_direct_url_for_another_python_is_reported() -> None:
    line = f"torch @ {TORCH_URL.format(cp='cp311')} ; {LINUX} and python_version == '3.12'"
    _, _, (problem,) = ce.split_requirements([line], "3.12")
    assert problem.startswith("torch-2.9.0+cu128-cp311-cp311-manylinux_2_28_x86_64.whl is not a wheel for CPython 3.12")


def test_abi3_direct_url_installs_on_newer_pythons() -> None:
    """exl2-checkpoint's xformers-0.0.33-cp39-abi3 wheel (tabbyAPI@79126f9 pyproject.toml cu12)."""
    url = "https://download.pytorch.org/whl/cu128/xformers-0.0.33-cp39-abi3-manylinux_2_28_x86_64.whl"
    _, _, problems = ce.split_requirements([f"xformers @ {url} ; {LINUX}"], "3.10")
    assert problems == []


def test_role_lanes_are_well_formed() -> None:
    """vars/main.yml _llm_router_engine_lanes: the shape the role consumes (filter llm_router_engine_plan)."""
    assert set(LANES) == {"sglang", "vllm", "tabbyapi", "tabbyapi_exl2"}
    for engine, lanes in LANES.items():
        for name, lane in lanes.items():
            assert name == f"cu{lane['cuda_major']}", (engine, name)
            assert lane["min_driver"] == {12: "570.26", 13: "580.65.06"}[lane["cuda_major"]]
            assert set(lane["pythons"]) <= SUPPORTED_PYTHONS and lane["pythons"], (engine, name)
            assert lane["requirements"] and lane["extra_index_urls"] == [] and lane["source"]
            if engine in ("sglang", "vllm"):
                assert "12.0" in lane["archs"] and "9.0" in lane["archs"]  # RTX PRO 6000 and H100/H200
    assert "cu13" not in LANES["tabbyapi_exl2"]  # tabbyAPI@79126f9 cu13 extra has no exllamav2
    assert LANES["tabbyapi"]["cu13"]["pythons"] == ["3.12"]  # cu13 extra: python_version >= '3.12' only


def test_check_engines_reads_a_lanes_file(tmp_path: Path) -> None:
    """--lanes reads a file holding only the key; --only selects nothing -> exit 2 without touching pip."""
    lanes = tmp_path / "lanes.yml"
    lanes.write_text(yaml.safe_dump({ce.LANES_KEY: {"sglang": LANES["sglang"]}}, sort_keys=False))
    assert [c.name for c in ce.lane_cases(ce.load_lanes(lanes))] == [
        "sglang/cu13/py3.11",
        "sglang/cu13/py3.12",
        "sglang/cu12/py3.10",
        "sglang/cu12/py3.11",
        "sglang/cu12/py3.12",
    ]
    assert ce.main(["--lanes", str(lanes), "--only", "vllm"]) == 2


@pytest.mark.network
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    ("engine", "lane", "pin", "evidence"),
    [
        ("sglang", "cu12", "sglang==0.5.23", "CUDA runtime is 13, lane says 12"),
        ("vllm", "cu13", "vllm==0.19.1", "CUDA runtime is 12, lane says 13"),
    ],
)
def test_swapped_pin_fails_the_real_resolver(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: str, lane: str, pin: str, evidence: str
) -> None:
    """`make check-engines` fails when a lane's pin is swapped for a build of the other CUDA major (pip against
    PyPI; the reports are shared with `make check-engines` through its cache, so this is fast after it ran)."""
    swapped = {engine: {lane: {**LANES[engine][lane], "requirements": [pin], "pythons": ["3.12"]}}}
    lanes = tmp_path / "lanes.yml"
    lanes.write_text(yaml.safe_dump({ce.LANES_KEY: swapped}))
    assert ce.main(["--lanes", str(lanes)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {engine}/{lane}/py3.12" in out
    assert f"{engine} lane {lane} python 3.12: {evidence}" in out
