"""End to end, a fleet (issue 10): one Open-WebUI 0.12.4 connection to router A sees and uses router B's model.

Router A serves the demo's tiny-a and has router B (the demo's tiny-b) as `router.peers`, with the fleet key (a
client key of B). Open-WebUI holds A's client key only; B is not one of its connections. Driven through
Open-WebUI's own API as in test_openwebui.py: its model list is A's `/v1/models`, each entry kept whole with
`urlIdx` and, for provider "llama.cpp", `loaded` from `status.value` (open_webui/routers/openai.py:754 `merged`,
:192 get_provider_model_loaded_state); its eject is POST /api/models/unload -> the connection's `/models/unload`
(open_webui/main.py:992). Steps run in order on one module fixture (Open-WebUI's start dominates the runtime).
Opt-in: collected only with LLM_ROUTER_E2E=1 (tests/e2e/conftest.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from router_app.tools.demo import DEMO_MAX_TOKENS, DEMO_MODELS, write_demo
from tests.conftest import RouterProcess, wait_until
from tests.e2e.owui_stack import (
    Stack,
    assert_loaded_status_line,
    openwebui,
    signup_admin,
    stop_router,
    wait_loaded_view,
)

MODELS = [model_id for model_id, _seed, _aliases in DEMO_MODELS]
LOCAL, REMOTE = MODELS  # tiny-a on A (Open-WebUI's connection), tiny-b on B (A's peer)
PEER = "host-b"


@dataclass
class Fleet:
    stack: Stack  # Open-WebUI on router A
    peer: RouterProcess  # router B


@pytest.fixture(scope="module")
def fleet(llama_server_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Router B (tiny-b, fleet key), router A (tiny-a, B as its peer) and Open-WebUI on A; all killed on exit.

    B does not list A back: Open-WebUI talks to A only, so the one direction is what it exercises (both
    directions, and the hop header that keeps them from looping, are tests/integration/test_fleet.py's).
    """
    work = tmp_path_factory.mktemp("e2e-fleet")
    demo = yaml.safe_load(write_demo(work / "demo", llama_server_bin, port=0).read_text())
    models = {model["id"]: model for model in demo["models"]}
    client_key, fleet_key = secrets.token_hex(16), secrets.token_hex(16)
    (work / "client.keys").write_text(client_key + "\n")
    (work / "fleet.key").write_text(fleet_key + "\n")

    def write_config(name: str, model_id: str, **router: object) -> Path:
        path = work / f"config-{name}.yml"
        config = {"router": {**demo["router"], **router}, "models": [models[model_id]]}
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    routers: list[RouterProcess] = []
    try:
        routers.append(RouterProcess(write_config("b", REMOTE, api_key_files=[str(work / "fleet.key")])))
        peer = routers[-1]
        peers = [{"name": PEER, "url": peer.url, "api_key_file": str(work / "fleet.key")}]
        routers.append(RouterProcess(write_config("a", LOCAL, api_key_files=[str(work / "client.keys")], peers=peers)))
        with openwebui(routers[-1], client_key, work) as stack:
            stack.token = signup_admin(stack.url)
            yield Fleet(stack=stack, peer=peer)
    finally:
        for router in reversed(routers):
            stop_router(router)


def test_models_listed_from_both_routers(fleet: Fleet) -> None:
    """Both models on Open-WebUI's one connection (A's), B's with the `peer` field A adds; none loaded yet."""
    models = fleet.stack.owui_models()
    for model_id in MODELS:
        assert model_id in models, sorted(models)
        assert models[model_id]["urlIdx"] == 0
        assert models[model_id]["provider"] == "llama.cpp"
    assert models[REMOTE].get("peer") == PEER, models[REMOTE]
    assert models[LOCAL].get("peer") is None, models[LOCAL]
    wait_loaded_view(fleet.stack, set(), MODELS)


def test_chat_with_the_peers_model(fleet: Fleet) -> None:
    """A browser-style chat with tiny-b through A: B's engine runs it (B's /health, its llama-server's /slots),
    A's runs nothing, and B's status line comes through A to the browser."""
    result = fleet.stack.chat_turn(REMOTE, [{"id": "u0", "role": "user", "content": "Hello! What can you do?"}], None)
    message = result["message"]
    assert message.get("done") and not message.get("error"), message
    assert message["content"].strip(), message
    assert fleet.peer.health()["current"] == [REMOTE]
    assert fleet.stack.router_loaded() == set()
    # llama-server GET /slots (tools/server/server.cpp:290; fields in server-context.cpp:670) on B's engine:
    # Open-WebUI's built-in tools reached it, and B's own default max_tokens applied.
    (slot,) = fleet.peer.engine(REMOTE).get("/slots", timeout=10).json()
    print(f"{REMOTE} on B: prompt {slot['n_prompt_tokens']} tokens of {slot['n_ctx']}")
    assert slot["n_prompt_tokens"] > 5000, slot
    assert slot["params"]["max_tokens"] == DEMO_MAX_TOKENS, slot["params"]
    # B's "tiny-b loaded in …" status line, relayed by A: shown live and kept in the message's statusHistory.
    assert_loaded_status_line(result, REMOTE)


def test_loaded_view_shows_the_peers_model(fleet: Fleet) -> None:
    view = wait_loaded_view(fleet.stack, {REMOTE}, MODELS)
    assert view == {LOCAL: False, REMOTE: True}


def test_eject_the_peers_model_through_openwebui(fleet: Fleet) -> None:
    """The eject button on tiny-b: Open-WebUI -> A's /models/unload -> B, which stops its engine."""
    response = fleet.stack.post("/api/models/unload", {"model": REMOTE})
    assert response.status_code == 200, response.text
    wait_until(lambda: not fleet.peer.health()["current"], f"router B to unload {REMOTE}", timeout=30)
    wait_loaded_view(fleet.stack, set(), MODELS)
    assert fleet.stack.router_loaded() == set()
