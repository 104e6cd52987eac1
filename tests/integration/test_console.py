"""The operator console's API with real llama-server (b11312): the event stream, activity, cancel, keys."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import httpx

from tests.conftest import llama_model, wait_until


class EventReader:
    """Reads GET /console/events in a thread and keeps every event."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.events: list[dict] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, args=(url, headers or {}), daemon=True)
        self._thread.start()
        wait_until(lambda: self.events, "the snapshot event")

    def _run(self, url: str, headers: dict[str, str]) -> None:
        try:
            with httpx.stream("GET", url + "/console/events", headers=headers, timeout=None) as response:
                for line in response.iter_lines():
                    if self._stop:
                        return
                    if line.startswith("data: "):
                        self.events.append(json.loads(line[6:]))
                    elif response.status_code != 200:
                        self.events.append({"kind": "http", "status": response.status_code})
        except httpx.HTTPError:
            pass  # the router stopped at the end of the test

    def of(self, kind: str, **match: object) -> list[dict]:
        return [e for e in self.events if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())]

    def stop(self) -> None:
        self._stop = True


def chat(url: str, model: str, tokens: int = 8, headers: dict[str, str] | None = None) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens}
    response = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_page_is_served_with_a_strict_policy_and_no_inline_script(start_router, llama_server_bin, models_dir):
    router = start_router([llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a")])
    page = httpx.get(router.url + "/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert re.findall(r"<script[^>]*>", page.text) == ['<script src="/ui/app.js" defer>']
    assert not re.search(r"\son[a-z]+=", page.text), "an inline event handler would need 'unsafe-inline'"
    assert "http://" not in page.text and "https://" not in page.text, "nothing from outside (air-gapped hosts)"
    for asset, media in (("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css")):
        response = httpx.get(router.url + asset)
        assert response.status_code == 200 and response.headers["content-type"].startswith(media)
        text = response.text.replace("http://www.w3.org/2000/svg", "")  # a namespace name, never fetched
        assert "http://" not in text and "https://" not in text


def test_the_event_stream_tells_loads_log_lines_and_finished_requests(start_router, llama_server_bin, models_dir):
    models = [
        llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a"),
        llama_model(llama_server_bin, models_dir / "tiny-b.gguf", "tiny-b"),
    ]
    router = start_router(models)
    reader = EventReader(router.url)
    assert reader.events[0]["kind"] == "snapshot" and reader.events[0]["inflight"] == []
    chat(router.url, "tiny-a", tokens=16)
    chat(router.url, "tiny-b")  # one at a time: tiny-a is stopped

    wait_until(lambda: len(reader.of("request")) == 2, "two finished requests")
    first = reader.of("request")[0]["request"]
    assert first["model"] == "tiny-a" and first["api"] == "chat/completions" and first["outcome"] == "ok"
    assert first["completion_tokens"] == 16 and first["prompt_tokens"] > 0 and first["tokens_per_s"] > 0
    assert first["waited_s"] > 0 and first["ttft_s"] >= first["waited_s"] and first["client"] == "-"
    started = reader.of("inflight", action="started")
    assert [e["request"]["model"] for e in started] == ["tiny-a", "tiny-b"]

    loads = reader.of("switch", action="load")
    assert [(e["model"], e["ok"]) for e in loads] == [("tiny-a", True), ("tiny-b", True)]
    assert all(e["seconds"] > 0 for e in loads)
    (stop,) = reader.of("switch", action="stop")
    assert stop["model"] == "tiny-a" and stop["cause"] and stop["reason"]
    assert {"loading", "loaded", "unloaded"} <= {e["status"] for e in reader.of("model", model="tiny-a")}
    engine_lines = [e["line"] for e in reader.of("log", source="tiny-a")]
    assert any("llama" in line or "server" in line for line in engine_lines), engine_lines[:5]
    assert reader.of("log", source="router"), "the router's own log lines"

    activity = httpx.get(router.url + "/console/activity").json()
    assert [r["model"] for r in activity["recent"]] == ["tiny-b", "tiny-a"] and activity["inflight"] == []

    # The same lines as JSON, by source, the newest `lines` of them (what the Molecule verify reads under systemd).
    logs = httpx.get(router.url + "/console/logs", params={"source": "tiny-a"}).json()["data"]
    assert [e["line"] for e in logs] == engine_lines and {e["source"] for e in logs} == {"tiny-a"}
    last = httpx.get(router.url + "/console/logs", params={"source": "tiny-a", "lines": 2}).json()["data"]
    assert [e["line"] for e in last] == engine_lines[-2:]
    refused = httpx.get(router.url + "/console/logs", params={"lines": "-1"})
    assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error"
    reader.stop()


def test_cancel_ends_a_streamed_request_and_the_engine_stops_generating(start_router, llama_server_bin, models_dir):
    model = llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a", ctx=8192, on_socket=False)
    router = start_router([model])
    chat(router.url, "tiny-a")
    port = next(m for m in router.health()["models"] if m["id"] == "tiny-a")["port"]
    received: list[str] = []
    ended = threading.Event()

    def stream() -> None:
        body = {"model": "tiny-a", "prompt": "once", "max_tokens": 8000, "stream": True}
        with httpx.stream("POST", router.url + "/v1/completions", json=body, timeout=120) as response:
            for line in response.iter_lines():
                received.append(line)
        ended.set()

    threading.Thread(target=stream, daemon=True).start()
    inflight = wait_until(lambda: httpx.get(router.url + "/console/activity").json()["inflight"], "a request in flight")
    wait_until(lambda: len(received) > 5, "the stream under way")
    cancel_url = f"{router.url}/console/requests/{inflight[0]['id']}/cancel"
    refused = httpx.post(cancel_url, content=b"{}", headers={"content-type": "text/plain"})
    assert refused.status_code == 415, "a cross-site form post must not cancel"
    cancelled = httpx.post(cancel_url, json={})
    assert cancelled.status_code == 200 and cancelled.json()["model"] == "tiny-a"
    assert ended.wait(30), "the client's stream did not end"
    deltas = sum(1 for line in received if line.startswith("data: {"))
    assert deltas < 4000, "the stream ran to its end instead of being cancelled"
    closing = [line for line in received if line.startswith("data: ")][-2:]
    assert '"code":"request_cancelled"' in closing[0] and closing[1] == "data: [DONE]", closing

    def engine_idle() -> bool:
        slots = httpx.get(f"http://127.0.0.1:{port}/slots", timeout=5).json()
        return not any(slot["is_processing"] for slot in slots)

    wait_until(engine_idle, "llama-server to stop generating", timeout=10)
    recent = httpx.get(router.url + "/console/activity").json()["recent"]
    assert recent[0]["outcome"] == "cancelled"
    gone = httpx.post(cancel_url, json={})
    assert gone.status_code == 404


def test_keys_guard_the_console_and_only_their_labels_are_shown(
    start_router, llama_server_bin, models_dir, tmp_path: Path
) -> None:
    clients, admin = tmp_path / "clients.keys", tmp_path / "admin.key"
    clients.write_text("sk-client-one\nsk-client-two\n")
    admin.write_text("sk-admin\n")
    router = start_router(
        [llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a")],
        api_key_files=[str(clients)],
        admin_key_file=str(admin),
        model_control="admin",
    )
    assert httpx.get(router.url + "/ui").status_code == 200, "the page itself holds nothing"
    assert httpx.get(router.url + "/console/activity").status_code == 401
    assert httpx.get(router.url + "/console/events").status_code == 401
    assert httpx.get(router.url + "/console/logs").status_code == 401
    two = {"Authorization": "Bearer sk-client-two"}
    reader = EventReader(router.url, two)
    chat(router.url, "tiny-a", headers=two)
    wait_until(lambda: reader.of("request"), "the finished request")
    assert reader.of("request")[0]["request"]["client"] == "clients.keys#2"
    assert "sk-client" not in json.dumps(reader.events)
    # model_control: admin, so a client key may watch but not cancel.
    assert httpx.post(router.url + "/console/requests/1/cancel", json={}, headers=two).status_code == 401
    admin_headers = {"Authorization": "Bearer sk-admin"}
    assert httpx.post(router.url + "/console/requests/1/cancel", json={}, headers=admin_headers).status_code == 404
    reader.stop()


def test_health_tells_the_console_what_is_pinned_and_when_an_idle_model_unloads(
    start_router, llama_server_bin, models_dir
) -> None:
    models = [
        llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a", ttl_s=600),
        llama_model(llama_server_bin, models_dir / "tiny-b.gguf", "tiny-b", group="pins", pinned=True),
    ]
    router = start_router(models)
    chat(router.url, "tiny-a")
    health = {m["id"]: m for m in router.health()["models"]}
    assert 590 <= health["tiny-a"]["idle_unload_in_s"] <= 600 and "pinned" not in health["tiny-a"]
    assert health["tiny-b"]["pinned"] is True and "idle_unload_in_s" not in health["tiny-b"]


def test_an_admin_pins_a_model_at_run_time_and_unpins_it(
    start_router, llama_server_bin, models_dir, tmp_path: Path
) -> None:
    admin = tmp_path / "admin.key"
    admin.write_text("sk-admin\n")
    models = [
        llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a"),
        llama_model(llama_server_bin, models_dir / "tiny-b.gguf", "tiny-b"),
    ]
    router = start_router(models, admin_key_file=str(admin))
    headers = {"Authorization": "Bearer sk-admin"}
    assert httpx.post(router.url + "/admin/pin", json={"model": "tiny-a", "pinned": True}).status_code == 401
    pinned = httpx.post(
        router.url + "/admin/pin", json={"model": "tiny-a", "pinned": True}, headers=headers, timeout=60
    )
    assert pinned.status_code == 200 and pinned.json()["state"] == "ready", "pinning a stopped model loads it"
    assert (
        httpx.post(router.url + "/admin/pin", json={"model": "tiny-a", "pinned": 1}, headers=headers).status_code == 400
    )
    body = {"model": "tiny-b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    refused = httpx.post(router.url + "/v1/chat/completions", json=body, timeout=60)
    assert refused.status_code == 503, "one model at a time, and tiny-a may not leave"
    assert next(m for m in router.health()["models"] if m["id"] == "tiny-a")["pinned"] is True
    unpinned = httpx.post(router.url + "/admin/pin", json={"model": "tiny-a", "pinned": False}, headers=headers)
    assert unpinned.status_code == 200 and unpinned.json()["pinned"] is False
    assert "pinned" not in next(m for m in router.health()["models"] if m["id"] == "tiny-a")
    assert chat(router.url, "tiny-b")["model"] == "tiny-b"
