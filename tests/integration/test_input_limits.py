"""Hostile and oversized input: 413 before the body is read, 400 for bad JSON, never a 5xx (real llama-server)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import llama_model

pytestmark = pytest.mark.llama

MIB = 1024 * 1024


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def read_answer(sock: socket.socket, answer: bytearray, until_head: bool) -> threading.Thread:
    """A thread that reads the router's answer into `answer` while the test keeps sending: until the end of its head,
    or until the router closes the connection."""

    def read() -> None:
        while not (until_head and b"\r\n\r\n" in answer):
            try:
                more = sock.recv(65536)
            except OSError:
                return
            if not more:
                return
            answer.extend(more)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def send_big_body(port: int, path: str, size: int, chunked: bool) -> tuple[int, int]:
    """Stream `size` bytes of body (Content-Length or chunked) until the router answers; (status, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {size}\r\n".encode()
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".encode() + framing + b"\r\n"
    )
    answer = bytearray()
    reader = read_answer(sock, answer, until_head=True)
    piece = b'{"model":"tiny-a","messages":[{"role":"user","content":"' + b"x" * (MIB - 60)
    sent = 0
    try:
        while sent < size and reader.is_alive():
            sock.sendall((f"{len(piece):x}\r\n".encode() + piece + b"\r\n") if chunked else piece)
            sent += len(piece)
    except OSError:  # the router closed the connection after answering
        pass
    reader.join(30)
    sock.close()
    return int(bytes(answer).split(b" ", 2)[1]), sent


@pytest.fixture
def router(start_router, llama_server_bin: Path, models_dir: Path):
    return start_router([llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a")])


def test_300_mib_body_gets_413_without_reading_it(router) -> None:
    pid = router.proc.pid
    before = memory_kib(pid)
    status, sent = send_big_body(router.port, "/v1/chat/completions", 300 * MIB, chunked=False)
    assert status == 413
    after = memory_kib(pid)
    assert after["VmHWM"] - before["VmHWM"] < 32 * 1024, (before, after, sent)

    # Without Content-Length (chunked) the router counts while reading and stops at the limit (100 MiB).
    status, sent = send_big_body(router.port, "/v1/messages", 300 * MIB, chunked=True)
    assert status == 413 and sent < 300 * MIB
    peak = memory_kib(pid)["VmHWM"] - before["VmHWM"]
    assert peak < 200 * 1024, f"peak RSS grew {peak} KiB for a 300 MiB body"
    assert router.health()["status"] == "ok"


def test_small_limit_is_configurable(start_router, llama_server_bin: Path, models_dir: Path) -> None:
    router = start_router(
        [llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a")], max_request_size="64KiB"
    )
    big = {"model": "tiny-a", "messages": [{"role": "user", "content": "x" * 70_000}]}
    answer = httpx.post(router.url + "/v1/chat/completions", json=big)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"
    anthropic = httpx.post(router.url + "/v1/messages", json={**big, "max_tokens": 1})
    assert anthropic.status_code == 413 and anthropic.json()["error"]["type"] == "request_too_large"
    small = httpx.post(router.url + "/models/load", json={"model": "x" * 70_000})
    assert small.status_code == 413


def nested(depth: int) -> bytes:
    return b'{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"x":' + (
        b"[" * depth + b"]" * depth + b"}"
    )


CHAT_OK = b'{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"max_tokens":1'
BAD_INPUTS = [
    ("/v1/chat/completions", b"{not json"),
    ("/v1/chat/completions", b""),
    ("/v1/chat/completions", b"[]"),
    ("/v1/chat/completions", b"null"),
    ("/v1/chat/completions", b'"just a string"'),
    ("/v1/chat/completions", b'{"model":5,"messages":[]}'),
    ("/v1/chat/completions", b'{"messages":[]}'),
    ("/v1/chat/completions", b'{"model":"nope","messages":[]}'),
    ("/v1/chat/completions", b'{"model":"tiny-a"}'),
    ("/v1/chat/completions", b'{"model":"tiny-a","messages":"hi"}'),
    ("/v1/chat/completions", CHAT_OK + b',"tools":"x"}'),
    ("/v1/chat/completions", CHAT_OK + b',"temperature":NaN}'),
    ("/v1/chat/completions", CHAT_OK + b',"temperature":Infinity}'),
    ("/v1/chat/completions", CHAT_OK + b',"temperature":-Infinity}'),
    ("/v1/chat/completions", CHAT_OK + b',"temperature":1e999}'),
    ("/v1/chat/completions", CHAT_OK + b',"seed":' + b"9" * 100_000 + b"}"),
    ("/v1/chat/completions", CHAT_OK + b',"max_tokens":-5}'),
    ("/v1/chat/completions", CHAT_OK + b',"stream":"yes"}'),
    ("/v1/chat/completions", b'{"model":"tiny-a","messages":[{"role":"user","content":"\xff\xfe"}]}'),
    ("/v1/chat/completions", b'{"model":"tiny-a","messages":[{"role":"user","content":"\\ud800"}],"max_tokens":1}'),
    ("/v1/chat/completions", b'{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]' + b" " * 10),
    ("/v1/chat/completions", nested(100_000)),
    ("/v1/chat/completions", b"[" * 100_000),
    ("/v1/chat/completions", b'{"a":' * 50_000),
    ("/v1/completions", b'{"model":"tiny-a"}'),
    ("/v1/embeddings", b'{"model":"tiny-a"}'),
    ("/v1/responses", b'{"model":"tiny-a"}'),
    ("/v1/responses", b'{"model":"tiny-a","input":5}'),
    ("/v1/messages", b'{"model":"tiny-a","messages":[]}'),
    ("/v1/messages", b'{"model":"tiny-a","max_tokens":1}'),
    ("/v1/messages", b'{"model":"tiny-a","max_tokens":1,"messages":[1]}'),
    ("/v1/messages", nested(100_000)),
    ("/detokenize", b'{"model":"tiny-a","tokens":"x"}'),
    ("/tokenize", b"{"),
    ("/models/load", b"{not json"),
    ("/models/load", b"[" * 100_000),
    ("/models/unload", b'{"model":["x"]}'),
]


def test_bad_inputs_get_4xx(router) -> None:
    """Every row answers 4xx; llama-server itself answers 500 to some of them (tools "x", lone surrogates,
    /v1/messages without messages, detokenize of a string), so the router checks those first."""
    json_type = {"Content-Type": "application/json"}
    deep = httpx.post(router.url + "/v1/chat/completions", content=nested(100_000), headers=json_type, timeout=60)
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]["message"]
    failures = []
    for path, body in BAD_INPUTS:
        answer = httpx.post(router.url + path, content=body, headers={"Content-Type": "application/json"}, timeout=60)
        if not 400 <= answer.status_code < 500:
            failures.append((path, body[:80], answer.status_code, answer.text[:200]))
        elif path.startswith("/v1/messages"):
            assert answer.json()["type"] == "error", (path, body[:80])
        else:
            assert "error" in answer.json(), (path, body[:80])
    assert not failures, failures
    assert httpx.get(router.url + "/v1/chat/completions").status_code == 405
    assert router.health()["status"] == "ok"


def test_keys_with_any_bytes_get_401_and_a_non_ascii_key_works(
    start_router, llama_server_bin: Path, models_dir: Path, tmp_path: Path
) -> None:
    """Defect 1 of issue 18: `secrets.compare_digest` on a `str` with a non-ASCII character raised (a 500 and a
    traceback for anyone) on every route that checks a key."""
    clients, admin = tmp_path / "clients.keys", tmp_path / "admin.key"
    clients.write_text("sk-clé\n", encoding="utf-8")
    admin.write_text("sk-admin\n")
    router = start_router(
        [llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a")],
        api_key_files=[str(clients)],
        admin_key_file=str(admin),
    )
    routes = [("GET", "/v1/models"), ("GET", "/models"), ("GET", "/console/activity"), ("POST", "/admin/load")]
    routes += [("POST", "/v1/chat/completions"), ("POST", "/models/load"), ("POST", "/admin/pin")]
    for header in ("authorization", "x-api-key"):
        for method, path in routes:
            for value in (b"sk-\xe9", b"sk-\xff\xfe", "sk-clé".encode("latin-1")):
                sent = b"Bearer " + value if header == "authorization" else value
                answer = httpx.request(method, router.url + path, headers={header: sent}, json={"model": "tiny-a"})
                assert answer.status_code == 401, (header, method, path, value, answer.text[:200])
                assert answer.json()["error"]["type"] in ("authentication_error", "invalid_request_error")
    # The key file's key, sent as its UTF-8 bytes, opens /v1.
    utf8 = httpx.get(router.url + "/v1/models", headers={"authorization": b"Bearer " + "sk-clé".encode()})
    assert utf8.status_code == 200 and utf8.json()["data"][0]["id"] == "tiny-a"
    assert router.health()["status"] == "ok"


def test_a_body_sent_to_no_route_is_not_read(router) -> None:
    """Defect 3 of issue 18: the router read up to max_request_size (100 MiB) of a body before FastAPI answered
    404/405. Now a path and method that no route takes are answered before the body is read."""
    pid = router.proc.pid
    before = memory_kib(pid)
    for path in ("/nothing-here", "/health", "/v1/models"):
        status, sent = send_big_body(router.port, path, 300 * MIB, chunked=True)
        assert status in (404, 405) and sent < 64 * MIB, (path, status, sent)
    grown = memory_kib(pid)["VmHWM"] - before["VmHWM"]
    assert grown < 32 * 1024, f"peak RSS grew {grown} KiB"


def send_big_header(port: int, size: int) -> tuple[int, bytes, int]:
    """GET /health with one header of `size` bytes, sent until the router answers; (status, body, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
    answer = bytearray()
    reader = read_answer(sock, answer, until_head=False)
    sent = 0
    try:
        while sent < size and not answer:
            sock.sendall(b"a" * MIB)
            sent += MIB
        if sent >= size:
            sock.sendall(b"\r\n\r\n")
    except OSError:  # the router closed the connection after answering
        pass
    reader.join(30)
    sock.close()
    head, _, body = bytes(answer).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body, sent


def test_an_oversized_request_head_gets_431_without_being_held(router) -> None:
    """Defect 2 of issue 18: httptools buffers a header whole and nothing bounded it: 128 MiB headers to /health
    grew the router by the same and were answered 200."""
    pid = router.proc.pid
    before = memory_kib(pid)
    status, body, sent = send_big_header(router.port, 128 * MIB)
    assert status == 431 and json.loads(body)["error"]["code"] == "headers_too_large", (status, body[:200])
    assert sent < 16 * MIB, f"the router read {sent} bytes of a head before refusing it"
    grown = memory_kib(pid)["VmHWM"] - before["VmHWM"]
    assert grown < 16 * 1024, f"peak RSS grew {grown} KiB"
    # A head just under the bound, and the next request on a fresh connection, are served.
    assert httpx.get(router.url + "/health", headers={"X-Big": "a" * 60_000}).status_code == 200
    assert router.health()["status"] == "ok"


def test_a_keyless_router_refuses_what_a_web_page_could_send(router) -> None:
    """Defect 4 of issue 18: a router without keys on 127.0.0.1 acted on a cross-site `text/plain` POST (a page
    may send one without the browser asking the router first) and answered a foreign Host (DNS rebinding)."""
    body = '{"model":"tiny-a"}'
    for path in ("/models/load", "/v1/tokenize", "/v1/chat/completions", "/models/unload"):
        for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
            headers = {"Content-Type": media} if media else {}
            answer = httpx.post(router.url + path, content=body, headers=headers)
            assert answer.status_code == 415, (path, media, answer.status_code, answer.text[:200])
            assert answer.json()["error"]["code"] == "unsupported_media_type"
    assert router.health()["current"] == [], "nothing was loaded"
    rebound = httpx.get(router.url + "/v1/models", headers={"Host": "attacker.example:8002"})
    assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "host_not_allowed"
    for host in ("localhost:8002", "127.0.0.1", "[::1]:8002", "LOCALHOST"):
        assert httpx.get(router.url + "/v1/models", headers={"Host": host}).status_code == 200, host
    load = httpx.post(router.url + "/models/load", json={"model": "tiny-a"})  # JSON, as every SDK sends
    assert load.status_code == 200, load.text


def test_allowed_hosts_and_keys_open_the_router_to_other_names(
    start_router, llama_server_bin: Path, models_dir: Path, tmp_path: Path
) -> None:
    model = llama_model(llama_server_bin, models_dir / "tiny-a.gguf", "tiny-a")
    listed = start_router([model], allowed_hosts=["gpu-box.lan"])
    assert httpx.get(listed.url + "/v1/models", headers={"Host": "gpu-box.lan:8002"}).status_code == 200
    assert httpx.get(listed.url + "/v1/models", headers={"Host": "other.lan"}).status_code == 403
    listed.stop()
    keys = tmp_path / "clients.keys"
    keys.write_text("sk-one\n")
    keyed = start_router([model], api_key_files=[str(keys)])
    auth = {"Authorization": "Bearer sk-one", "Host": "gpu-box.lan"}
    assert httpx.get(keyed.url + "/v1/models", headers=auth).status_code == 200, "keys guard a keyed router"


def test_an_idle_connection_outlives_the_clients_own_keep_alive(router) -> None:
    """The openai and anthropic SDKs (httpx) reuse an idle connection for up to 5 s; uvicorn's default closed it
    after 5 s too, so a request sent as the router closed it failed with a ReadError before any answer (seen in the
    soak). The router keeps idle connections 75 s: one idle for 6 s still serves."""
    connection = http.client.HTTPConnection("127.0.0.1", router.port, timeout=10)
    try:
        connection.request("GET", "/health")
        first = connection.getresponse()
        assert first.status == 200 and json.loads(first.read())["status"] == "ok"  # the whole answer, body too
        sock = connection.sock
        time.sleep(6)  # the idle time under test, longer than httpx's keep-alive expiry
        try:
            connection.request("GET", "/health")
            second = connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionError) as closed:
            raise AssertionError("the router closed an idle connection within 6 s") from closed
        assert connection.sock is sock, "the same connection answered"
        assert second.status == 200 and json.loads(second.read())["status"] == "ok"
    finally:
        connection.close()
