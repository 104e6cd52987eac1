"""scripts/gpu_smoke.py's sleep/wake drive through the real router, on the protocol fakes of the sleeping engines:
a good wake keeps the engine's process and is not a wake-integrity restart; a wake that brings back other weights
(the router restarts the engine cold and serves on) fails the smoke on the restart counter and the PID. The fakes
cannot do arithmetic and their timings mean nothing, so the answer and wake-ratio rules are left out here
(tests/unit/test_gpu_smoke.py covers them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import fake_model
from tests.modules import load_script

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "sk-smoke-admin-test"


smoke = load_script("gpu_smoke")


def sleeper(kind: str, tmp_path: Path, *extra: str) -> dict:
    if kind != "tabbyapi":
        return fake_model(kind, "m", *extra, evict="sleep")
    tokens = tmp_path / "api_tokens.yml"
    tokens.write_text(yaml.safe_dump({"api_key": "tabby-api", "admin_key": "tabby-admin"}))
    return fake_model(
        kind,
        "m",
        *("--api-tokens", str(tokens), "--model-name", "Model-m", *extra),
        evict="sleep",
        api_tokens_file=str(tokens),
        tabby_model_name="Model-m",
    )


def judged(measured) -> list[str]:
    """verdict() without the rules the fakes cannot serve (arithmetic, timings)."""
    return [r for r in smoke.verdict(measured) if not r.startswith(("after the wake the answer", "wake "))]


@pytest.mark.parametrize("kind", ["vllm", "sglang", "tabbyapi"])
def test_a_good_wake_passes_and_a_cold_restart_fails(start_router, tmp_path: Path, kind: str) -> None:
    key_file = tmp_path / "admin.key"
    key_file.write_text(ADMIN_KEY + "\n")

    router = start_router([sleeper(kind, tmp_path)], admin_key_file=str(key_file))
    good = smoke.drive(router.url, "unused", ADMIN_KEY, smoke.Smoke(kind, {"id": "m", "evict": "sleep"}))
    assert good.state_asleep == "sleeping" and good.pid_before is not None
    assert judged(good) == []
    router.stop()

    router = start_router([sleeper(kind, tmp_path, "--wake-garbage")], admin_key_file=str(key_file))
    bad = smoke.drive(router.url, "unused", ADMIN_KEY, smoke.Smoke(kind, {"id": "m", "evict": "sleep"}))
    reasons = judged(bad)
    assert [r.split(" (")[0] for r in reasons] == [
        "the wake restarted the engine cold",
        "engine PID changed across the sleep/wake",
    ], reasons
