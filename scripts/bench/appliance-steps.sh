#!/usr/bin/env bash
# appliance-steps.sh VMDK KVER dracut|initramfs-tools DEV:MOUNTPOINT... — time, in one TCG appliance like
# h2k-guest's (same vCPUs and memory), the steps h2k-guest runs inside it, and variants of the
# initramfs rebuild, on a throw-away overlay (the source is not written). Used to find where the
# FIX stage's time goes; prints guestfish's `time` lines.
set -euo pipefail
src=$(readlink -f "$1"); kver=$2; tool=$3; shift 3
mounts=""; for m in "$@"; do mounts+="mount ${m%%:*} ${m#*:}"$'\n'; done
vcpus=$(( $(nproc) < 4 ? $(nproc) : 4 ))
work=$(mktemp -d "${TMPDIR:-/var/tmp}/h2k-steps.XXXXXX"); trap 'rm -rf "$work"' EXIT
qemu-img create -q -f qcow2 -F "$(qemu-img info --output=json "$src" | python3 -c 'import json,sys;print(json.load(sys.stdin)["format"])')" -b "$src" "$work/ov.qcow2"
drv="virtio_blk virtio_scsi virtio_pci virtio_net virtio_ring virtio"
if [ "$tool" = dracut ]; then
  steps=$(cat <<G
echo "== lsinitrd (listing, as inspect does)"
time sh "lsinitrd /boot/initrd.img-$kver | wc -l"
echo "== dracut compression settings"
sh "grep -rhs compress /etc/dracut.conf /etc/dracut.conf.d /usr/lib/dracut/dracut.conf.d || true"
echo "== dracut as h2k-guest runs it"
time sh "dracut --force --add-drivers '$drv' --kver $kver /tmp/a.img && ls -l /tmp/a.img"
echo "== + --no-early-microcode"
time sh "dracut --force --no-early-microcode --add-drivers '$drv' --kver $kver /tmp/b.img && ls -l /tmp/b.img"
echo "== + --no-early-microcode --compress cat (uncompressed)"
time sh "dracut --force --no-early-microcode --compress cat --add-drivers '$drv' --kver $kver /tmp/c.img && ls -l /tmp/c.img"
G
)
else
  steps=$(cat <<G
echo "== lsinitramfs (listing, as inspect does)"
time sh "lsinitramfs /boot/initrd.img-$kver | wc -l"
echo "== update-initramfs as h2k-guest runs it"
time sh "printf '%s\n' $drv >> /etc/initramfs-tools/modules; update-initramfs -u -k $kver && ls -l /boot/initrd.img-$kver"
echo "== mkinitramfs straight (no update-initramfs wrapper, no backup copy)"
time sh "mkinitramfs -o /tmp/a.img $kver && ls -l /tmp/a.img"
echo "== grub-mkconfig"
time sh "grub-mkconfig -o /tmp/grub.cfg"
G
)
fi
LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg guestfish -a "$work/ov.qcow2" <<G
set-smp $vcpus
set-memsize 2048
echo "== launch"
time run
echo "== inspect-os"
time inspect-os
$mounts
$steps
G
