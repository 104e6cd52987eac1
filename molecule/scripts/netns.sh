#!/usr/bin/env bash
# Private network namespaces for Molecule's fleet hosts: `netns.sh up NAME ADDRESS` makes namespace
# molecule-NAME with ADDRESS/24 on a bridge with this machine (10.231.0.1), and NAT out of it (the role's pip
# installs reach PyPI); `netns.sh down NAME` removes it, and the bridge and NAT with the last one.
# Needs root, iproute2 and iptables (installed here when missing, via apt).
set -euo pipefail

BRIDGE=llmr-mol0
GATEWAY=10.231.0.1
SUBNET=10.231.0.0/24
action="$1"
name="$2"
ns="molecule-$name"
veth="vm-$(printf %s "$name" | sha256sum | cut -c1-8)"  # one per host; interface names have at most 15 characters
forward_saved=/run/llmr-molecule-ip-forward  # ip_forward as it was before the first namespace

log() { echo "netns: $*" >&2; }

nat() {  # nat -A|-D: the rules that let the namespaces out through this machine (each added once)
  local op="$1"
  local -a rule
  for spec in "nat POSTROUTING -s $SUBNET ! -o $BRIDGE -j MASQUERADE" "filter FORWARD -i $BRIDGE -j ACCEPT" \
              "filter FORWARD -o $BRIDGE -j ACCEPT"; do
    read -r -a rule <<< "$spec"
    if iptables -t "${rule[0]}" -C "${rule[@]:1}" 2>/dev/null; then
      [[ "$op" == -D ]] && iptables -t "${rule[0]}" -D "${rule[@]:1}"
    elif [[ "$op" == -A ]]; then
      iptables -t "${rule[0]}" -A "${rule[@]:1}"
    fi
  done
  return 0
}

case "$action" in
  up)
    address="$3"
    if ! command -v iptables >/dev/null; then
      log "installing iptables"
      apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >&2
    fi
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
      ip link add "$BRIDGE" type bridge
      ip addr add "$GATEWAY/24" dev "$BRIDGE"
      ip link set "$BRIDGE" up
    fi
    ip netns del "$ns" 2>/dev/null || true
    ip link del "$veth" 2>/dev/null || true
    ip netns add "$ns"
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    ip link set "$veth" master "$BRIDGE" up
    ip -n "$ns" addr add "$address/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" route add default via "$GATEWAY"
    [[ -f "$forward_saved" ]] || cat /proc/sys/net/ipv4/ip_forward > "$forward_saved"
    sysctl -qw net.ipv4.ip_forward=1
    nat -A
    echo "/run/netns/$ns"
    ;;
  down)
    ip netns del "$ns" 2>/dev/null || true
    ip link del "$veth" 2>/dev/null || true
    if ip link show "$BRIDGE" >/dev/null 2>&1 && [[ -z "$(ip -br link show master "$BRIDGE")" ]]; then
      ip link del "$BRIDGE"
      nat -D
      if [[ -f "$forward_saved" ]]; then
        sysctl -qw net.ipv4.ip_forward="$(cat "$forward_saved")"
        rm -f "$forward_saved"
      fi
    fi
    ;;
  *)
    echo "usage: $0 up NAME ADDRESS | down NAME" >&2
    exit 2
    ;;
esac
