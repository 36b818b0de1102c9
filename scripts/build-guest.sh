#!/usr/bin/env bash
# Builds minivirt's tiny test guest into OUT (default build/guest): Debian's
# cloud kernel (apt-get download + dpkg-deb -x, cached), and an initramfs of
# busybox-static, the virtio modules, guest/init and minivirt-guest.
# FLAVOUR generic (second argument) takes Debian's generic kernel instead,
# which has what the cloud kernel lacks (9p), and adds those modules.
set -euo pipefail
out=${1:-build/guest}
flavour=${2:-cloud}
top=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)

case "$flavour" in
  cloud) meta=linux-image-cloud-amd64; extra= ;;
  generic) meta=linux-image-amd64; extra="netfs fscache 9pnet 9pnet_virtio 9p" ;;
  *) echo "minivirt: build-guest.sh: flavour $flavour: give cloud or generic" >&2; exit 2 ;;
esac
pkg=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$pkg" ]; then
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq; pkg=$(apt-cache depends "$meta" | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); fi
  [ -n "$pkg" ] || { echo "minivirt: cannot resolve $meta; run as root: apt-get update" >&2; exit 1; }
fi
kver=${pkg#linux-image-}

if [ ! -f "$out/kernel/$pkg.stamp" ]; then
  rm -rf "$out/kernel" && mkdir -p "$out/kernel"
  (cd "$out/kernel" && apt-get download -q "$pkg" >/dev/null 2>&1 || apt-get download "$pkg")
  dpkg-deb -x "$out"/kernel/*.deb "$out/kernel/root"
  rm -f "$out"/kernel/*.deb
  touch "$out/kernel/$pkg.stamp"
fi
cp "$out/kernel/root/boot/vmlinuz-$kver" "$out/vmlinuz"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,dev,proc,sys,tmp,run,etc,mnt,lib/modules}
cp /bin/busybox "$stage/bin/busybox"
install -m 0755 "$top/guest/init" "$stage/init"
install -m 0755 "$top/guest/udhcpc-script" "$stage/bin/udhcpc-script"
(cd "$top" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags='-s -w' -o "$stage/bin/minivirt-guest" ./guest/minivirt-guest)
mods="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net virtio_console virtio_blk button evdev pvpanic pvpanic-pci scsi_common scsi_mod sd_mod virtio_scsi cdrom sr_mod fuse virtiofs virtio_balloon"
for m in $mods $extra; do
  f=$(find "$out/kernel/root/lib/modules/$kver" -name "$m.ko" | head -n1)
  [ -n "$f" ] || { echo "minivirt: module $m.ko not in $pkg" >&2; exit 1; }
  cp "$f" "$stage/lib/modules/"
  echo "$m" >> "$stage/lib/modules/order"
done
(cd "$stage" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -1) > "$out/initrd.gz.tmp"
mv "$out/initrd.gz.tmp" "$out/initrd.gz"
echo "guest: $out/vmlinuz ($kver), $out/initrd.gz"
