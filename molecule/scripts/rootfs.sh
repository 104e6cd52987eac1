#!/usr/bin/env bash
# Debootstrap the Debian 12 rootfs that Molecule boots with systemd-nspawn, cached under
# ~/.cache/llm-router/rootfs/ keyed by the package list. Prints the rootfs path.
# Needs root, debootstrap and systemd-container (installed here when missing, via apt).
set -euo pipefail

CACHE_ROOT="${LLM_ROUTER_CACHE:-$HOME/.cache/llm-router}"
SUITE="${ROOTFS_SUITE:-bookworm}"
MIRROR="${ROOTFS_MIRROR:-http://deb.debian.org/debian}"
# systemd as PID 1 plus what Ansible needs; build tools so a converge does not download them every boot.
PACKAGES="systemd,systemd-sysv,dbus,python3,python3-apt,python3-venv,python3-packaging,sudo,iproute2,ca-certificates,curl,cmake,g++,make,git"
KEY="$(printf '%s %s' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-12)"
ROOTFS="$CACHE_ROOT/rootfs/$SUITE-$KEY"

log() { echo "rootfs: $*" >&2; }

if [[ -f "$ROOTFS/.complete" ]]; then
  echo "$ROOTFS"
  exit 0
fi
if [[ $EUID -ne 0 ]]; then
  log "debootstrap and systemd-nspawn need root"
  exit 1
fi
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

rm -rf "$ROOTFS.tmp"
mkdir -p "$(dirname "$ROOTFS")"
log "debootstrap $SUITE into $ROOTFS (about 2-4 minutes)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS.tmp" "$MIRROR" >&2
chroot "$ROOTFS.tmp" apt-get clean
# A machine id and a hostname, so each boot looks like a normal host.
: > "$ROOTFS.tmp/etc/machine-id"
echo "molecule" > "$ROOTFS.tmp/etc/hostname"
rm -rf "$ROOTFS"
mv "$ROOTFS.tmp" "$ROOTFS"
touch "$ROOTFS/.complete"
# Older rootfs versions of this suite are no longer used.
find "$CACHE_ROOT/rootfs" -mindepth 1 -maxdepth 1 -name "$SUITE-*" ! -name "$(basename "$ROOTFS")" -exec rm -rf {} +
echo "$ROOTFS"
