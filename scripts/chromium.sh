#!/usr/bin/env bash
# Debian's chromium and its WebDriver (chromium-driver), for the operator console's browser test (make e2e).
# Installed with apt-get when missing (root, or sudo without a password); prints "CHROMIUM CHROMEDRIVER".
#   scripts/chromium.sh   ->  /usr/bin/chromium /usr/bin/chromedriver
set -euo pipefail
log() { echo "[chromium] $*" >&2; }
chromium="${CHROMIUM_BIN:-/usr/bin/chromium}"
driver="${CHROMEDRIVER:-/usr/bin/chromedriver}"
if [[ ! -x "$chromium" || ! -x "$driver" ]]; then
  if [[ $(id -u) -eq 0 ]]; then
    sudo=()
  elif sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
  else
    log "chromium and chromium-driver are missing; install them: sudo apt-get install chromium chromium-driver"
    exit 1
  fi
  log "installing chromium and chromium-driver (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq >&2
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
fi
"$driver" --version >&2
echo "$chromium $driver"
