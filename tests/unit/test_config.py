"""Config validation: every error names the file, the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from router_app.cli import main
from router_app.config import ConfigError, load_config, parse_config


def model(**fields) -> dict:
    return {"id": "m", "backend": "llamacpp", "command": ["llama-server", "--port", "${PORT}"], **fields}


def problems(data: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(data, "/etc/llm-router/config.yml")
    return str(err.value)


def test_minimal_config_gets_defaults() -> None:
    config = parse_config({"models": [model()]})
    assert config.router.port == 8002 and config.router.status_style == "openwebui"
    assert config.models[0].engine_name == "m" and config.models[0].effective_health_path == "/health"


def test_unknown_key_is_named_with_model_id() -> None:
    text = problems({"models": [model(), model(id="q", contxt=4096)]})
    assert "/etc/llm-router/config.yml" in text
    assert "models[1] (id 'q').contxt: unknown key" in text


def test_bad_enum_lists_allowed_values() -> None:
    text = problems({"models": [model(backend="llama")]})
    assert "models[0] (id 'm').backend: got 'llama'; allowed:" in text and "'llamacpp'" in text


def test_router_section_errors() -> None:
    assert "router.status_style: got 'loud'" in problems({"router": {"status_style": "loud"}, "models": [model()]})
    assert "router.progress_interval_s" in problems({"router": {"progress_interval_s": 9}, "models": [model()]})


def test_duplicate_names_and_ports() -> None:
    assert "already used by model 'm'" in problems({"models": [model(), model(id="n", aliases=["m"])]})
    text = problems({"models": [model(port=9000, command=["x"]), model(id="n", port=9000, command=["y"])]})
    assert "both use 127.0.0.1:9000" in text


def test_supervisor_specific_requirements() -> None:
    assert "needs 'command'" in problems({"models": [{"id": "m", "backend": "vllm"}]})
    assert "set 'port', or put ${PORT}" in problems({"models": [model(command=["x"])]})
    systemd = {"router": {"supervisor": "systemd"}}
    assert "'command' is for the process supervisor" in problems({**systemd, "models": [model(port=1)]})
    assert "needs the engine's 'port'" in problems({**systemd, "models": [{"id": "m", "backend": "vllm"}]})
    parse_config({**systemd, "models": [{"id": "Qwen/Qwen2.5-7B", "backend": "sglang", "port": 30000}]})


def test_an_engine_listens_on_a_unix_socket_or_a_port_never_both() -> None:
    on_socket = ["llama-server", "--host", "${SOCKET}"]
    assert parse_config({"models": [model(command=on_socket)]}).models[0].on_socket
    both = ["llama-server", "--host", "${SOCKET}", "--port", "${PORT}"]
    assert "'command' has ${SOCKET}" in problems({"models": [model(command=both)]})
    assert "drop ${PORT} from 'command'" in problems({"models": [model(command=both)]})
    assert "drop 'port'" in problems({"models": [model(command=on_socket, port=9000)]})
    assert "or ${SOCKET} for a Unix socket" in problems({"models": [model(command=["x"])]})


def test_backend_rules() -> None:
    assert "needs 'url'" in problems({"models": [{"id": "r", "backend": "openai"}]})
    assert "llama.cpp has no sleep" in problems({"models": [model(evict="sleep")]})
    tabby = {"id": "t", "backend": "tabbyapi", "port": 5000, "command": ["x"], "evict": "sleep"}
    assert "api_tokens_file" in problems({"models": [tabby]})
    assert "whitespace" in problems({"models": [model(id="two words")]})
    remote = parse_config({"models": [{"id": "r", "backend": "openai", "url": "https://example.invalid/v1"}]})
    assert not remote.models[0].local


def test_load_config_reports_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yml"
    good.write_text(yaml.safe_dump({"models": [model()]}))
    main(["check-config", "--config", str(good)])
    assert "OK, 1 model(s)" in capsys.readouterr().out
    main(["models", "--config", str(good)])
    assert "llamacpp" in capsys.readouterr().out
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"models": [model(backend="x")]}))
    with pytest.raises(SystemExit) as exit_info:
        main(["check-config", "--config", str(bad)])
    assert exit_info.value.code == 2
    assert f"invalid config {bad}" in capsys.readouterr().err


def test_listen_socket_is_tcp_so_asyncio_disables_nagle() -> None:
    """asyncio sets TCP_NODELAY on accepted sockets only when the listening socket's proto is IPPROTO_TCP;
    without it each response waited ~40 ms for a delayed ACK (found by bench/latency.py)."""
    import socket

    from router_app.cli import _bind

    sock = _bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_peer_entries_are_checked() -> None:
    """router.peers: a router root URL, unique names; the errors name the entry and the fix."""

    def peers(*entries: dict) -> dict:
        return {"router": {"peers": list(entries)}, "models": [model()]}

    config = parse_config(peers({"name": "gpu-2", "url": "http://10.0.0.2:8002/"}))
    assert config.router.peers[0].url == "http://10.0.0.2:8002"
    text = problems(peers({"name": "gpu-2", "url": "http://10.0.0.2:8002/v1"}))
    assert "router.peers[0].url" in text and "not a router root such as http://10.0.0.2:8002" in text
    text = problems(peers({"name": "x", "url": "http://a:1"}, {"name": "x", "url": "http://b:1"}))
    assert "peer name 'x' is used twice" in text
    assert "router.peers[0].name" in problems(peers({"name": "a b", "url": "http://a:1"}))
    assert "router.peers[0].port: unknown key" in problems(peers({"name": "a", "url": "http://a:1", "port": 1}))
