#!/usr/bin/env bash
# Installs the Debian packages spitguard's tests use as real peers. Idempotent: does
# nothing when everything is present.
set -euo pipefail
pkgs=()
for p in "$@"; do pkgs+=("$p"); done
if [ ${#pkgs[@]} -eq 0 ]; then
  pkgs=(sip-tester baresip kamailio sipvicious nftables iproute2 chromium gcc)
  # The SIP parser's C fast path builds against the headers of the Python in use;
  # Debian's own python3 keeps them in python3-dev.
  if ! "${PYTHON:-python3}" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    pkgs+=(python3-dev)
  fi
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
