#!/usr/bin/env bash
# Builds a Debian 12 cloud image into OUT (default build/cloud), as a user would
# download one, from Debian's packages: OUT/debian-12.qcow2, a 1 GiB disk with
# an MBR, GRUB for BIOS boot and one ext4 partition labelled root; cloud-init
# (NoCloud, then None), openssh-server, qemu-guest-agent, DHCP with ifupdown;
# no user, root locked, no SSH host keys, an empty machine-id.
#
# Cached: skipped while OUT/debian-12.qcow2.recipe holds this script's hash.
# Built in a temporary directory under OUT and renamed into place at the end.
# Needs root (mmdebstrap, loop devices, mount); the host packages come from
# `scripts/deps.sh cloud-image`. No partition device nodes needed (losetup -P
# makes none in some sandboxes): mkfs.ext4 writes at the partition's offset,
# and the partition is mounted through a loop device with that offset.
set -euo pipefail
out=${1:-build/cloud}
top=$(cd "$(dirname "$0")/.." && pwd)
self="$top/scripts/build-cloud-image.sh"
name=debian-12
disk_mib=1024   # the raw disk; the partition starts at 1 MiB and takes the rest
part_off=$((1024 * 1024))
mirror=http://deb.debian.org

mkdir -p "$out"
out=$(cd "$out" && pwd)
image="$out/$name.qcow2"
recipe=$(sha256sum "$self" | cut -d' ' -f1)
if [ -f "$image" ] && [ "$(cat "$out/$name.qcow2.recipe" 2>/dev/null)" = "$recipe" ]; then
  echo "cloud image: $image (cached)"
  exit 0
fi

"$top/scripts/deps.sh" cloud-image
if [ "$(id -u)" -ne 0 ]; then
  echo "minivirt: building the cloud image needs root (mmdebstrap, loop devices, mount); run as root: make cloud-image" >&2
  exit 1
fi

tmp=$(mktemp -d "$out/.build.XXXXXX")
chmod 0755 "$tmp"   # apt downloads as _apt into the root below it
root="$tmp/root" mnt="$tmp/mnt" raw="$tmp/disk.raw"
loops=()
cleanup() {
  set +e
  if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt" || umount -l "$mnt"; fi
  # Every loop device on the raw disk is ours (it lives in our directory),
  # also one made just before a signal, before it was recorded in loops.
  [ -f "$raw" ] && for l in $(losetup -n -O NAME -j "$raw"); do losetup -d "$l"; done
  # mmdebstrap unmounts what it mounts in the root, even when it fails; never
  # remove across a mount point that is still there.
  if findmnt -rn -o TARGET | grep -qF "$tmp/"; then
    echo "minivirt: file systems still mounted under $tmp; not removing it" >&2
  else
    rm -rf --one-file-system "$tmp"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "cloud image: mmdebstrap bookworm into $root"
# minbase: Essential and Priority required, plus apt. Then only what a cloud
# guest needs: systemd as init and udev; the cloud kernel and its initramfs;
# cloud-init (22.4.2) and cloud-guest-utils (growpart, so the root grows with
# the disk); sshd; qemu-guest-agent; ifupdown and isc-dhcp-client (cloud-init's
# Debian renderer writes /etc/network/interfaces.d); libpam-systemd (and with
# it dbus) for logind sessions over ssh; sudo for cloud-init's users; netbase.
# GRUB itself is installed from the host: the guest keeps no grub package, and
# grub.cfg boots /vmlinuz and /initrd.img, which the kernel package keeps
# pointing at the newest kernel. No docs, man pages or translations. The
# merged-usr hook sets up merged /usr as debootstrap does, with usr-is-merged;
# without it init-system-helpers pulls in usrmerge and with it perl (50 MB).
mmdebstrap --mode=root --variant=minbase --format=directory \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --include=systemd-sysv,udev,libpam-systemd,linux-image-cloud-amd64,initramfs-tools \
  --include=cloud-init,cloud-guest-utils,openssh-server,qemu-guest-agent \
  --include=ifupdown,isc-dhcp-client,iproute2,netbase,sudo \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  bookworm "$root" \
  "deb $mirror/debian bookworm main" \
  "deb $mirror/debian bookworm-updates main" \
  "deb $mirror/debian-security bookworm-security main"

echo "cloud image: configuring"
# cloud-init: the NoCloud seed (a cidata volume) or nothing.
cat > "$root/etc/cloud/cloud.cfg.d/90_minivirt.cfg" <<'EOF'
# minivirt: a NoCloud seed (a volume labelled cidata), else no data source.
datasource_list: [ NoCloud, None ]
EOF
cat > "$root/etc/fstab" <<'EOF'
LABEL=root / ext4 rw,discard,errors=remount-ro 0 1
EOF
# cloud-init's Debian renderer writes /etc/network/interfaces.d/50-cloud-init.
if ! grep -qs '^source.*interfaces\.d' "$root/etc/network/interfaces"; then
  printf '%s\n' 'source /etc/network/interfaces.d/*' '' 'auto lo' 'iface lo inet loopback' \
    > "$root/etc/network/interfaces"
fi
echo localhost > "$root/etc/hostname"
printf '%s\n' '127.0.0.1 localhost' '::1 localhost ip6-localhost ip6-loopback' \
  'ff02::1 ip6-allnodes' 'ff02::2 ip6-allrouters' > "$root/etc/hosts"
rm -f "$root/etc/resolv.conf"          # the host's, copied in by mmdebstrap; dhclient writes its own
chroot "$root" passwd --lock root >/dev/null
rm -f "$root"/etc/ssh/ssh_host_*       # cloud-init makes them at first boot
rm -rf "$root/var/lib/cloud" "$root"/var/log/cloud-init*
: > "$root/etc/machine-id"             # systemd makes one at first boot
rm -f "$root/var/lib/dbus/machine-id"
chroot "$root" dpkg-query -W -f='${Package} ${Version}\n' > "$tmp/$name.packages"

# The kernel package's links, /vmlinuz and /initrd.img (or in /boot): prints
# the link's path after checking that it points at a file in the image.
kernel_link() {
  local link=/$1 t
  [ -L "$root$link" ] || link=/boot/$1
  t=$(readlink "$root$link") || { echo "minivirt: no $1 link in the image" >&2; return 1; }
  case $t in /*) ;; *) t=$(dirname "$link")/$t ;; esac
  [ -f "$root$t" ] || { echo "minivirt: $link points at $t, which is not in the image" >&2; return 1; }
  echo "$link"
}
vmlinuz=$(kernel_link vmlinuz)
initrd=$(kernel_link initrd.img)
mkdir -p "$root/boot/grub"
cat > "$root/boot/grub/grub.cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
search --no-floppy --label root --set=root
menuentry 'Debian GNU/Linux 12' {
	linux $vmlinuz root=LABEL=root ro console=tty0 console=ttyS0,115200
	initrd $initrd
}
EOF

echo "cloud image: disk"
truncate -s "${disk_mib}M" "$raw"
printf 'label: dos\nstart=%d, type=83, bootable\n' $((part_off / 512)) |
  sfdisk --quiet --no-reread --no-tell-kernel "$raw"
mkfs.ext4 -q -L root -E offset=$part_off -d "$root" "$raw" $((disk_mib - 1))M
loops+=("$(losetup --find --show "$raw")")
loops+=("$(losetup --find --show -o $part_off --sizelimit $(((disk_mib - 1) * 1024 * 1024)) "$raw")")
mkdir -p "$mnt"
mount -t ext4 "${loops[1]}" "$mnt"
grub-install --target=i386-pc --boot-directory="$mnt/boot" \
  --modules="part_msdos ext2 search_label serial" --force "${loops[0]}"
umount "$mnt"
for l in "${loops[@]}"; do losetup -d "$l"; done
loops=()
fsck=$(e2fsck -fn "$raw?offset=$part_off" 2>&1) || { echo "$fsck" >&2; exit 1; }

echo "cloud image: qcow2"
qemu-img convert -f raw -O qcow2 "$raw" "$tmp/$name.qcow2"
rm -f "$out/$name.qcow2.recipe"
mv "$tmp/$name.packages" "$out/$name.packages"
mv "$tmp/$name.qcow2" "$image"
echo "$recipe" > "$tmp/recipe" && mv "$tmp/recipe" "$out/$name.qcow2.recipe"
echo "cloud image: $image ($(du -h --apparent-size "$image" | cut -f1), $(grep -c . "$out/$name.packages") packages)"
