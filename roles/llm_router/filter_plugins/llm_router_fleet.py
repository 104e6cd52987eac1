"""A fleet of llm-router hosts: which hosts are members and how each router reaches the others (the router's
`peers:`). Pure Python, unit-tested in tests/unit/test_role_filters.py."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_LOOPBACK = re.compile(r"^(127\.|::1$|localhost$)")
_PEER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # router_app.config.PeerConfig.name


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def fleet_members(group_hosts: list[str] | None, hostvars: Mapping[str, Any]) -> list[str]:
    """The hosts of the fleet group that run a router (render-only hosts do not), in inventory order."""
    return [host for host in group_hosts or [] if not _truthy(hostvars[host].get("llm_router_render_only", False))]


def fleet_address(host: str, hostvars: Mapping[str, Any]) -> str:
    """How the other members reach `host`: llm_router_fleet_address, else ansible_host, else its name."""
    values = hostvars[host]
    return str(values.get("llm_router_fleet_address") or values.get("ansible_host") or host)


def fleet_peers(me: str, members: list[str], hostvars: Mapping[str, Any], key_file: str) -> list[dict[str, Any]]:
    """The router's `peers:` on `me`: every other member, at its address and router port, with the fleet key."""
    if me not in members:
        return []
    peers = []
    for host in members:
        if host == me:
            continue
        address = fleet_address(host, hostvars)
        if ":" in address and not address.startswith("["):
            address = f"[{address}]"
        settings = hostvars[host].get("llm_router_settings") or {}  # its `port` overrides the listen port
        port = int(settings.get("port") or hostvars[host].get("llm_router_listen_port", 8002))
        peers.append({"name": host, "url": f"http://{address}:{port}", "api_key_file": key_file})
    return peers


def fleet_errors(me: str, members: list[str], hostvars: Mapping[str, Any], listen_host: str) -> list[str]:
    """What keeps `me` from serving in its fleet: names the router cannot use, addresses no peer can reach."""
    if me not in members or len(members) < 2:
        return []
    errors = []
    for host in members:
        if not _PEER_NAME.match(host):
            errors.append(
                f"fleet member {host!r}: an inventory name of letters, digits, '.', '_' and '-' is needed "
                "(it names the peer in the other routers' config)"
            )
        address = fleet_address(host, hostvars)
        if _LOOPBACK.match(address):
            errors.append(
                f"fleet member {host!r} would be reached at {address}, which is each host's own loopback: set "
                f"llm_router_fleet_address (or ansible_host) of {host} to an address the other members reach"
            )
    if _LOOPBACK.match(str(listen_host)):
        errors.append(
            f"llm_router_listen_host is {listen_host}, so the other members of the fleet cannot reach this "
            "router: set it to 0.0.0.0 or this host's fleet address (clients still need a key), or leave the "
            "fleet with llm_router_fleet_group: ''"
        )
    return errors


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "llm_router_fleet_members": fleet_members,
            "llm_router_fleet_peers": fleet_peers,
            "llm_router_fleet_errors": fleet_errors,
        }
