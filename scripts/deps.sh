#!/usr/bin/env bash
# Installs the Debian packages minivirt's build, tests and demo need, when run
# as root; otherwise prints the exact command and fails.
set -euo pipefail

packages=(qemu-system-x86 busybox-static libxml2-utils libvirt-clients cpio socat)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v go >/dev/null || { echo "minivirt: Go is not installed; install Go 1.26 or newer (https://go.dev/doc/install)" >&2; exit 1; }
[ ${#missing[@]} -eq 0 ] && exit 0

cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "minivirt: missing Debian packages: ${missing[*]}" >&2
  echo "minivirt: run as root: $cmd" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
