#!/usr/bin/env bash
# Installs the Debian packages minivirt's build, tests and demo need, when run
# as root; otherwise prints the exact command and fails.
# `deps.sh cloud-image`: only the host packages scripts/build-cloud-image.sh needs.
set -euo pipefail

# qemu-utils: qemu-img for test images; ovmf: UEFI firmware; libvirt-daemon,
# its QEMU driver and virtinst: the tests run virt-install against a private
# libvirtd, as users feed its output to minivirt.
packages=(qemu-system-x86 qemu-utils ovmf busybox-static libxml2-utils libvirt-clients libvirt-daemon
  libvirt-daemon-driver-qemu virtinst cpio socat genisoimage openssh-client)

# The cloud image (make cloud-image): mmdebstrap builds its root from Debian's
# packages; fdisk (sfdisk) the MBR; e2fsprogs (mkfs.ext4 -d) the file system;
# grub-pc-bin and grub2-common (grub-install) BIOS GRUB; qemu-utils the qcow2.
image_packages=(mmdebstrap fdisk e2fsprogs grub-pc-bin grub2-common qemu-utils)

# System users: minivirt-qemu, whom the bare-QEMU baseline of `make bench` runs as;
# libvirt-qemu, without whom libvirtd's QEMU driver will not start (Debian's
# libvirt-daemon-system makes it; minivirt's tests need only the daemon).
ensure_users() {
  for u in minivirt-qemu libvirt-qemu; do
    getent passwd "$u" >/dev/null && continue
    if [ "$(id -u)" -ne 0 ]; then
      echo "minivirt: missing system user $u; run as root: useradd --system --user-group --no-create-home --shell /usr/sbin/nologin $u" >&2
      return 1
    fi
    useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$u"
  done
}

# Installs the missing ones of the packages named, as root; otherwise prints
# the command and fails.
install_missing() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "minivirt: missing Debian packages: ${missing[*]}" >&2
    echo "minivirt: run as root: $cmd" >&2
    return 1
  fi
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if [ "${1:-}" = cloud-image ]; then install_missing "${image_packages[@]}"; exit; fi

command -v go >/dev/null || { echo "minivirt: Go is not installed; install Go 1.26 or newer (https://go.dev/doc/install)" >&2; exit 1; }
install_missing "${packages[@]}"
ensure_users
