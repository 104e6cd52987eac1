"""A fleet of two real routers, each with its own real llama-server model: either one lists and serves both.

Router A serves tiny-a, router B tiny-b; each has the other as `router.peers` with the shared fleet key (a
client key on both). A learns of B through a config reload (SIGHUP), as the role does when a host joins.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import httpx
import yaml

from tests.conftest import llama_model, sse_events, wait_until

FLEET_KEY = "sk-fleet-shared"
KEY_A, KEY_B = "sk-client-a", "sk-client-b"


def _keys(tmp_path: Path, name: str, *keys: str) -> str:
    path = tmp_path / f"{name}.keys"
    path.write_text("\n".join(keys) + "\n")
    return str(path)


def _statuses(url: str, key: str, path: str = "/v1/models", **headers: str) -> dict[str, str]:
    answer = httpx.get(url + path, headers={"Authorization": f"Bearer {key}", **headers}, timeout=30)
    assert answer.status_code == 200, answer.text
    return {entry["id"]: entry["status"]["value"] for entry in answer.json()["data"]}


def _chat(url: str, key: str, model: str, stream: bool = False) -> httpx.Response:
    body = {"model": model, "max_tokens": 4, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def test_two_routers_list_and_serve_each_others_models(
    start_router, llama_server_bin, models_dir: Path, tmp_path: Path
) -> None:
    fleet_key_file = _keys(tmp_path, "fleet", FLEET_KEY)
    common = {"peer_refresh_s": 0.2}
    router_a = start_router(
        [llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a", aliases=["a"])],
        api_key_files=[_keys(tmp_path, "a", KEY_A), fleet_key_file],
        **common,
    )
    router_b = start_router(
        [llama_model(llama_server_bin, models_dir / "tiny-b.gguf", "tiny-b", aliases=["b"])],
        api_key_files=[_keys(tmp_path, "b", KEY_B), fleet_key_file],
        peers=[{"name": "host-a", "url": router_a.url, "api_key_file": fleet_key_file}],
        **common,
    )
    # A joins the fleet by a reload, as a converge adding a host does.
    config_a = yaml.safe_load(router_a.config_path.read_text())
    config_a["router"]["peers"] = [{"name": "host-b", "url": router_b.url + "/", "api_key_file": fleet_key_file}]
    router_a.config_path.write_text(yaml.safe_dump(config_a))
    os.kill(router_a.proc.pid, signal.SIGHUP)
    wait_until(lambda: "tiny-b" in _statuses(router_a.url, KEY_A), "router A to list router B's model")

    # Each router lists both models, with their state; its own key opens both.
    assert _statuses(router_a.url, KEY_A) == {"tiny-a": "unloaded", "tiny-b": "unloaded"}
    assert _statuses(router_b.url, KEY_B, "/models") == {"tiny-b": "unloaded", "tiny-a": "unloaded"}
    listed = httpx.get(router_a.url + "/v1/models", headers={"Authorization": f"Bearer {KEY_A}"}).json()["data"]
    assert [e.get("peer") for e in listed] == [None, "host-b"]
    # Another router asking (the hop header) gets the local models only: no forwarding loops.
    assert _statuses(router_a.url, FLEET_KEY, **{"X-LLM-Router-Hop": "1"}) == {"tiny-a": "unloaded"}

    # A streamed chat through A for B's model (by its alias): B loads it and its status events come through.
    answer = _chat(router_a.url, KEY_A, "b", stream=True)
    assert answer.status_code == 200, answer.text
    chunks = [json.loads(p) for p in sse_events(answer.text.splitlines()) if p != "[DONE]"]
    assert answer.text.rstrip().endswith("data: [DONE]")
    assert any("tiny-b" in json.dumps(c) and "oaded" in json.dumps(c) for c in chunks), chunks  # "tiny-b loaded…"
    assert {c.get("model") for c in chunks if c.get("choices")} == {"b"}
    one = httpx.get(router_a.url + "/v1/models/tiny-b", headers={"Authorization": f"Bearer {KEY_A}"}).json()
    assert one["status"]["value"] == "loaded" and one["peer"] == "host-b"  # as fresh as the list
    assert _statuses(router_a.url, KEY_A)["tiny-b"] == "loaded"
    assert router_b.health()["current"] == ["tiny-b"]
    assert router_a.health()["current"] == []

    # Unary, the other way round; the peer's answer passes unchanged.
    answer = _chat(router_b.url, KEY_B, "tiny-a")
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "tiny-a"
    assert router_a.health()["current"] == ["tiny-a"]
    metrics = httpx.get(router_b.url + "/metrics").text
    assert 'llm_router_peer_requests_total{model="tiny-a",peer="host-a"} 1.0' in metrics
    assert router_b.health()["peers"][0]["reachable"]  # a forwarded request does not make it look down

    # Open-WebUI's eject through A unloads the model on B; a peer's error keeps its status.
    unload = httpx.post(
        router_a.url + "/models/unload", json={"model": "tiny-b"}, headers={"Authorization": f"Bearer {KEY_A}"}
    )
    assert unload.status_code == 200, unload.text
    wait_until(lambda: _statuses(router_b.url, KEY_B)["tiny-b"] == "unloaded", "B to unload tiny-b")
    again = httpx.post(
        router_a.url + "/models/unload", json={"model": "tiny-b"}, headers={"Authorization": f"Bearer {KEY_A}"}
    )
    assert again.status_code == 400 and "not running" in again.text
    assert httpx.get(router_a.url + "/v1/models/b", headers={"Authorization": f"Bearer {KEY_A}"}).json()["peer"] == (
        "host-b"
    )
    # A name nobody serves is still 404 (asked of the peer too).
    missing = _chat(router_a.url, KEY_A, "nobody")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"

    # B goes down: A keeps serving its own model, lists B's no more, and says why a request for it fails.
    router_b.stop()
    wait_until(lambda: "tiny-b" not in _statuses(router_a.url, KEY_A), "A to drop B's models")
    peers = router_a.health()["peers"]
    assert peers[0]["name"] == "host-b" and not peers[0]["reachable"] and "error" in peers[0]
    down = _chat(router_a.url, KEY_A, "tiny-b")
    assert down.status_code == 502 and down.json()["error"]["code"] == "peer_unreachable", down.text
    down = httpx.get(router_a.url + "/v1/models/tiny-b", headers={"Authorization": f"Bearer {KEY_A}"})
    assert down.status_code == 502 and down.json()["error"]["code"] == "peer_unreachable", down.text
    assert _chat(router_a.url, KEY_A, "a").status_code == 200


def test_a_peer_with_a_wrong_key_is_reported_not_listed(
    start_router, llama_server_bin, models_dir: Path, tmp_path: Path
) -> None:
    router_b = start_router(
        [llama_model(llama_server_bin, models_dir / "tiny-b.gguf", "tiny-b")],
        api_key_files=[_keys(tmp_path, "b", KEY_B)],
    )
    router_a = start_router(
        [llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a")],
        api_key_files=[_keys(tmp_path, "a", KEY_A)],
        peers=[{"name": "host-b", "url": router_b.url, "api_key_file": _keys(tmp_path, "wrong", "sk-wrong")}],
    )
    assert _statuses(router_a.url, KEY_A) == {"tiny-a": "unloaded"}
    peer = router_a.health()["peers"][0]
    assert not peer["reachable"] and "HTTP 401" in peer["error"]
    assert any("peer host-b" in line and "HTTP 401" in line for line in router_a.log)


def test_a_peer_that_never_answers_costs_its_timeout_once(
    start_router, llama_server_bin, models_dir: Path, tmp_path: Path
) -> None:
    """A peer that accepts connections and never answers (a hung host): the first listing waits its timeout_s,
    later ones are answered from what is known while it is asked again in the background."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # the kernel completes handshakes; nobody ever reads
    try:
        router = start_router(
            [llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a")],
            peers=[{"name": "hung", "url": f"http://127.0.0.1:{hole.getsockname()[1]}", "timeout_s": 4}],
            peer_refresh_s=0.1,
        )
        first = httpx.get(router.url + "/v1/models", timeout=30)
        assert [m["id"] for m in first.json()["data"]] == ["tiny-a"]
        assert first.elapsed.total_seconds() >= 4, "the first listing waited for the peer"
        for _ in range(3):  # a listing that waited for the peer again would end this client's timeout first
            again = httpx.get(router.url + "/v1/models", timeout=2)
            assert [m["id"] for m in again.json()["data"]] == ["tiny-a"]
        peer = router.health()["peers"][0]
        assert not peer["reachable"] and "Timeout" in peer["error"]
    finally:
        hole.close()
