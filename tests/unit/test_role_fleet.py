"""The role's fleet filters (roles/llm_router/filter_plugins/llm_router_fleet.py): members, peers, refusals."""

from __future__ import annotations

from pathlib import Path

from router_app.config import parse_config
from tests.role_render import load_filter

ROOT = Path(__file__).resolve().parents[2]
fleet = load_filter("llm_router_fleet")

HOSTVARS = {
    "gpu-1": {"ansible_host": "10.0.0.1"},
    "gpu-2": {"ansible_host": "10.0.0.2", "llm_router_listen_port": 9002},
    "gpu-3": {"llm_router_fleet_address": "fd00::3", "ansible_host": "ignored"},
    "render": {"llm_router_render_only": True},
}
KEY = "/etc/llm-router/fleet.key"


def test_members_are_the_group_hosts_that_run_a_router() -> None:
    assert fleet.fleet_members(["gpu-1", "render", "gpu-2", "gpu-3"], HOSTVARS) == ["gpu-1", "gpu-2", "gpu-3"]
    assert fleet.fleet_members(None, HOSTVARS) == []
    assert fleet.fleet_members(["render"], {"render": {"llm_router_render_only": "true"}}) == []


def test_each_member_lists_the_others_and_the_router_accepts_it() -> None:
    members = ["gpu-1", "gpu-2", "gpu-3"]
    peers = fleet.fleet_peers("gpu-1", members, HOSTVARS, KEY)
    assert peers == [
        {"name": "gpu-2", "url": "http://10.0.0.2:9002", "api_key_file": KEY},
        {"name": "gpu-3", "url": "http://[fd00::3]:8002", "api_key_file": KEY},
    ]
    # What the role renders is a valid router config (router_app.config.PeerConfig).
    config = parse_config(
        {"router": {"peers": peers}, "models": [{"id": "m", "backend": "llamacpp", "command": ["x"], "port": 1}]}
    )
    assert [p.url for p in config.router.peers] == ["http://10.0.0.2:9002", "http://[fd00::3]:8002"]
    assert fleet.fleet_peers("render", members, HOSTVARS, KEY) == []  # not a member: no peers
    assert fleet.fleet_peers("gpu-1", ["gpu-1"], HOSTVARS, KEY) == []  # a fleet of one


def test_members_the_others_cannot_reach_are_refused_by_name() -> None:
    members = ["gpu-1", "gpu-2"]
    assert fleet.fleet_errors("gpu-1", members, HOSTVARS, "0.0.0.0") == []
    errors = fleet.fleet_errors("gpu-1", members, HOSTVARS, "127.0.0.1")
    assert len(errors) == 1 and "llm_router_listen_host is 127.0.0.1" in errors[0]
    errors = fleet.fleet_errors("gpu-1", ["gpu-1", "box"], {**HOSTVARS, "box": {"ansible_host": "localhost"}}, "::")
    assert len(errors) == 1 and "set llm_router_fleet_address (or ansible_host) of box" in errors[0]
    errors = fleet.fleet_errors("gpu-1", ["gpu-1", "bad name"], {**HOSTVARS, "bad name": {}}, "0.0.0.0")
    assert "fleet member 'bad name'" in errors[0]
    assert fleet.fleet_errors("gpu-1", ["gpu-1"], HOSTVARS, "127.0.0.1") == []  # no fleet, no demand


def test_a_members_router_port_set_through_llm_router_settings_is_used() -> None:
    hostvars = {"a": {}, "b": {"llm_router_listen_port": 8002, "llm_router_settings": {"port": 9100}}}
    assert fleet.fleet_peers("a", ["a", "b"], hostvars, KEY)[0]["url"] == "http://b:9100"
