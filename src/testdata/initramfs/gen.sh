#!/bin/sh
# Regenerates the fixtures used by src/initramfs_image.rs (needs cpio, gzip, zstd, xz, lz4).
# The outputs are committed; the tests never run this script.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export LC_ALL=C SOURCE_DATE_EPOCH=0

mkdir -p "$tmp/early/kernel/x86/microcode"
printf 'microcode\n' > "$tmp/early/kernel/x86/microcode/GenuineIntel.bin"
mkdir -p "$tmp/main/usr/lib/modules/6.1.0-56-amd64/kernel/drivers/block" "$tmp/main/etc" "$tmp/main/scripts"
printf 'virtio\n' > "$tmp/main/usr/lib/modules/6.1.0-56-amd64/kernel/drivers/block/virtio_blk.ko"
printf '#!/bin/sh\n' > "$tmp/main/init"
chmod 755 "$tmp/main/init"
printf 'x\n' > "$tmp/main/etc/fstab"
ln -s usr/bin "$tmp/main/bin"
find "$tmp" -exec touch -h -d @0 {} +

# Debian initramfs-tools layout: early cpio (no compression) then a compressed main archive.
(cd "$tmp/early" && find . | sort | cpio --quiet -R 0:0 -o -H newc) > "$tmp/early.cpio"
(cd "$tmp/main" && find . | sort | cpio --quiet -R 0:0 -o -H newc) > "$tmp/main.cpio"
cp "$tmp/early.cpio" "$here/early.cpio"
zstd -q -19 -c "$tmp/main.cpio" > "$here/main.cpio.zst"
gzip -n -9 -c "$tmp/main.cpio" > "$here/main.cpio.gz"
# dracut's xz options (the kernel's xz decoder wants crc32).
xz -q --check=crc32 --lzma2=dict=1MiB -c "$tmp/main.cpio" > "$here/main.cpio.xz"
lz4 -q -l -c "$tmp/main.cpio" > "$here/main.cpio.lz4"
# The archive in "crc" format (070702), with its per-file checksums.
(cd "$tmp/main" && find . | sort | cpio --quiet -R 0:0 -o -H crc) > "$here/main-crc.cpio"
cpio --quiet -t < "$tmp/main.cpio" > "$here/main.list"
