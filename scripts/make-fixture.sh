#!/usr/bin/env bash
# make-fixture.sh NAME|all — build a real Debian 12 guest that looks like a VMware export, for the
# end-to-end tests of h2k-guest, and print the absolute path of its VMDK as the last stdout line.
#
#   debian12-bios             MBR, /dev/sda1 ext4 root + /dev/sda2 swap, grub-pc,
#                             initramfs-tools WITHOUT virtio (boots on pvscsi, not on virtio-blk)
#   debian12-uefi-dracut-lvm  GPT, ESP + /boot + LVM vg0/root, grub-efi (removable path), dracut
#                             host-only WITHOUT virtio (boots on q35 SATA/AHCI, not on virtio-blk)
#   all                       both, one path per line
#
# Results are cached in ${H2K_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/h2k-guest}/fixtures/KEY/
# where KEY hashes this script and the helper files in scripts/fixtures/ (editing the builder
# rebuilds; an unchanged builder returns at once). Beside NAME.vmdk lies NAME.json with the facts a
# test can check. NAME.json is renamed in last, so its presence means the fixture is complete.
#
# Needs root (debootstrap, chroot, mount), debootstrap, sfdisk, mkfs.ext4 (-d), mkswap, mkfs.vfat,
# qemu-img, guestfish and a reachable Debian mirror. Progress goes to stderr.
#
# Environment:
#   H2K_CACHE_DIR          cache root (see above)
#   H2K_DEBIAN_MIRROR      default http://deb.debian.org/debian
#   H2K_DEBIAN_SECURITY    default http://deb.debian.org/debian-security
#   H2K_ACCEL              tcg (default) or kvm: how the libguestfs appliance runs. Nested KVM is
#                          broken on the machines this was written on, so TCG is the safe default.
#   H2K_KEEP_WORK=1        keep the temporary build directory on failure (for debugging)
set -euo pipefail
shopt -s nullglob

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
SCRIPTS_DIR=$(dirname "$SCRIPT_PATH")
FIXTURES_SRC=$SCRIPTS_DIR/fixtures
CACHE_ROOT=${H2K_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/h2k-guest}
MIRROR=${H2K_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${H2K_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
SUITE=bookworm
ALL_FIXTURES=(debian12-bios debian12-uefi-dracut-lvm)

# Packages every fixture gets from debootstrap. The base root file system built from them is
# cached under a key of its own (see base_key), so a change to the rest of the builder does not
# redo the debootstrap.
BASE_INCLUDE=systemd-sysv,udev,kmod,ifupdown,isc-dhcp-client,iproute2,netbase,procps,ca-certificates
BASE_FORMAT=1   # bump to invalidate cached base trees when the way they are made changes

# stdout carries only the result paths: everything else goes to stderr.
exec 3>&1 1>&2

# Progress lines carry the seconds since the current build started.
log() {
    if [ -n "${BUILD_START:-}" ]; then
        printf 'make-fixture: [+%ss] %s\n' "$(($(date +%s) - BUILD_START))" "$*" >&2
    else
        printf 'make-fixture: %s\n' "$*" >&2
    fi
}
die() { log "error: $*"; exit 1; }

usage() {
    cat >&2 <<EOF
usage: $0 NAME|all
  NAME is one of: ${ALL_FIXTURES[*]}
Prints the absolute path of each fixture's VMDK on stdout (the last line is the last fixture).
EOF
    exit 2
}

# ---------------------------------------------------------------------------------------------
# Cache keys and locking
# ---------------------------------------------------------------------------------------------

# KEY = first 16 hex of sha256 over the builder's own files: this script and everything in
# scripts/fixtures/ except boot-test.sh, which only *checks* fixtures (editing it must not force a
# rebuild). File names are hashed too, so renaming or adding a helper changes the key.
builder_key() {
    {
        printf '%s  %s\n' "$(sha256sum <"$SCRIPT_PATH" | cut -d' ' -f1)" make-fixture.sh
        if [ -d "$FIXTURES_SRC" ]; then
            (cd "$FIXTURES_SRC" && find . -type f ! -name boot-test.sh -print0 | LC_ALL=C sort -z |
                xargs -0 -r sha256sum)
        fi
    } | sha256sum | cut -c1-16
}

# The cached debootstrap tree depends only on what debootstrap is asked for.
base_key() {
    printf '%s|%s|minbase|%s|%s\n' "$SUITE" "$MIRROR" "$BASE_INCLUDE" "$BASE_FORMAT" |
        sha256sum | cut -c1-16
}

fixture_is_complete() { # DIR NAME
    [ -f "$1/$2.json" ] && [ -f "$1/$2.vmdk" ]
}

# ---------------------------------------------------------------------------------------------
# Cleanup: chroot mounts must be gone before the work directory is removed, or rm -rf would
# descend into the host's /dev, /proc and /sys.
# ---------------------------------------------------------------------------------------------

WORK=""
CHROOT_MOUNTS=()   # mount points in mount order; unmounted in reverse

mounts_under() { # DIR: mount points at or below DIR, deepest first
    awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r
}

chroot_umount_all() {
    local i m
    for ((i = ${#CHROOT_MOUNTS[@]} - 1; i >= 0; i--)); do
        m=${CHROOT_MOUNTS[i]}
        if mountpoint -q "$m"; then
            umount -R "$m" 2>/dev/null || umount -R -l "$m" || log "warning: could not unmount $m"
        fi
    done
    CHROOT_MOUNTS=()
}

cleanup() {
    local rc=$? m
    chroot_umount_all
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        # Whatever else is mounted below the work dir (debootstrap leaves /proc and /sys mounted
        # in its target when it fails half-way).
        for m in $(mounts_under "$WORK"); do
            umount -R "$m" 2>/dev/null || umount -R -l "$m" 2>/dev/null || true
        done
        if [ -n "$(mounts_under "$WORK")" ]; then
            log "warning: something is still mounted under $WORK; leaving it in place"
        elif [ "$rc" -ne 0 ] && [ "${H2K_KEEP_WORK:-0}" = 1 ]; then
            log "build failed; work directory kept: $WORK"
        else
            # A killed build's chroot processes may still be writing for a moment; a directory
            # left behind anyway is swept by the next build (sweep_stale_work).
            rm -rf "$WORK" 2>/dev/null || { sleep 2; rm -rf "$WORK"; } ||
                log "warning: could not remove $WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Root file system in a directory: debootstrap (cached), then packages installed in a chroot
# ---------------------------------------------------------------------------------------------

chroot_mount() { # ROOT [APT_ARCHIVE_DIR]
    local r=$1
    # Each mount point is recorded right after its mount succeeds (a failed mount stops the
    # script through set -e, and the cleanup trap unmounts what was recorded).
    mount -t proc proc "$r/proc"
    CHROOT_MOUNTS+=("$r/proc")
    mount -t sysfs sysfs "$r/sys"
    CHROOT_MOUNTS+=("$r/sys")
    # rbind brings /dev/pts and /dev/shm along; rslave keeps umounts from propagating back.
    mount --rbind /dev "$r/dev"
    CHROOT_MOUNTS+=("$r/dev")
    mount --make-rslave "$r/dev"
    if [ -n "${2:-}" ]; then
        # Downloaded .debs are shared between builds (apt checks their hashes).
        mkdir -p "$2/partial" "$r/var/cache/apt/archives"
        mount --bind "$2" "$r/var/cache/apt/archives"
        CHROOT_MOUNTS+=("$r/var/cache/apt/archives")
    fi
}

in_chroot() { # ROOT CMD...
    local r=$1
    shift
    chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true ${CHROOT_ENV:-} "$@"
}

apt_install() { # ROOT PACKAGE...
    local r=$1
    shift
    # APT::Sandbox::User=root: the bind-mounted download cache belongs to the host's root, not to
    # the chroot's _apt user.
    in_chroot "$r" apt-get install -y -q --no-install-recommends -o APT::Sandbox::User=root \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

# debootstrap minbase with BASE_INCLUDE, cached as a tar (debootstrap takes ~35 s plus downloads;
# unpacking the tar ~5 s).
make_base_tree() { # ROOT
    local r=$1 dir tar
    dir=$CACHE_ROOT/debootstrap
    tar=$dir/$SUITE-$(base_key).tar
    mkdir -p "$dir" "$r"
    if [ ! -f "$tar" ]; then
        log "debootstrap $SUITE (minbase + $BASE_INCLUDE) from $MIRROR"
        local tmp
        tmp=$(mktemp -d "$WORK/debootstrap.XXXX")
        debootstrap --variant=minbase --include="$BASE_INCLUDE" "$SUITE" "$tmp" "$MIRROR" >&2
        tar --numeric-owner --xattrs --xattrs-include='*' -C "$tmp" -cf "$tar.part.$$" .
        mv -f "$tar.part.$$" "$tar"
        rm -rf "$tmp"
    fi
    log "unpacking cached base tree $(basename "$tar")"
    tar --numeric-owner --xattrs --xattrs-include='*' -C "$r" -xpf "$tar"
}

# Everything a guest needs before its distribution-specific packages: apt sources as an installed
# Debian 12 has them, no service starts inside the chroot, DNS for apt.
prepare_chroot() { # ROOT
    local r=$1
    cat >"$r/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
    # Services must not start inside the build chroot.
    printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
    chmod 755 "$r/usr/sbin/policy-rc.d"
    rm -f "$r/etc/resolv.conf"
    cp -L /etc/resolv.conf "$r/etc/resolv.conf"
    chroot_mount "$r" "$CACHE_ROOT/apt-archives"
    in_chroot "$r" apt-get update -q -o APT::Sandbox::User=root >&2
}

finish_chroot() { # ROOT
    local r=$1
    chroot_umount_all
    rm -f "$r/usr/sbin/policy-rc.d" "$r/etc/resolv.conf"
    rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/tmp/* "$r"/var/tmp/*
    # An installed system has a machine-id of its own; an empty file makes systemd create one on
    # first boot instead of every clone sharing the build's.
    : >"$r/etc/machine-id"
}

# Settings shared by both fixtures: the things a VMware-era Debian guest carries.
#   $1 root, $2 hostname, $3 VMware MAC of the NIC pinned to ens192
configure_common() {
    local r=$1 host=$2 mac=$3
    echo "$host" >"$r/etc/hostname"
    cat >"$r/etc/hosts" <<EOF
127.0.0.1	localhost
127.0.1.1	$host

::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
EOF
    echo "root:h2k" | in_chroot "$r" chpasswd
    # ifupdown config for the VMware vmxnet3 NIC name
    cat >"$r/etc/network/interfaces" <<'EOF'
# This file describes the network interfaces available on your system
# and how to activate them. For more information, see interfaces(5).

source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback

# The primary network interface
allow-hotplug ens192
iface ens192 inet dhcp
EOF
    # The MAC pinning that VMware guests accumulate (old persistent-net generator style).
    mkdir -p "$r/etc/udev/rules.d"
    cat >"$r/etc/udev/rules.d/70-persistent-net.rules" <<EOF
# This file was automatically generated by the /lib/udev/write_net_rules
# program, run by the persistent-net-generator.rules rules file.
#
# You can modify it, as long as you keep each rule on a single line.

# PCI device 0x15ad:0x07b0 (vmxnet3)
SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="$mac", ATTR{dev_id}=="0x0", ATTR{type}=="1", KERNEL=="eth*", NAME="ens192"
EOF
    # A login prompt on the serial console, whatever the kernel command line says.
    mkdir -p "$r/etc/systemd/system/getty.target.wants"
    ln -sf /lib/systemd/system/serial-getty@.service \
        "$r/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"
}

# /etc/default/grub: short menu timeout, GRUB and the kernel on the serial console too.
write_default_grub() { # ROOT EXTRA_LINES
    cat >"$1/etc/default/grub" <<EOF
# If you change this file, run 'update-grub' afterwards to update
# /boot/grub/grub.cfg.
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=\`lsb_release -i -s 2> /dev/null || echo Debian\`
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
$2
EOF
}

kernel_version() { # ROOT (or a /boot directory's parent)
    local k=("$1"/boot/vmlinuz-*)
    [ ${#k[@]} -eq 1 ] || die "expected one kernel in $1/boot, found ${#k[@]}"
    basename "${k[0]}" | sed 's/^vmlinuz-//'
}

pkg_version() { # ROOT PACKAGE
    in_chroot "$1" dpkg-query -W -f='${Version}' "$2"
}

# ---------------------------------------------------------------------------------------------
# Disk assembly: file-system images made on the host (mkfs.ext4 -d is ~10x faster than copying
# files through the libguestfs appliance under TCG), dd'd into a partitioned raw file.
# ---------------------------------------------------------------------------------------------

MIB=1048576

mkfs_ext4_from_dir() { # IMAGE SIZE_MIB DIR UUID
    rm -f "$1"
    truncate -s "$(($2 * MIB))" "$1"
    mkfs.ext4 -q -F -U "$4" -d "$3" "$1"
}

put_image() { # DISK IMAGE START_MIB
    dd if="$2" of="$1" bs=1M seek="$3" conv=notrunc,sparse status=none
}

# guestfish over the appliance, TCG unless H2K_ACCEL=kvm.
run_guestfish() { # guestfish args..., script on stdin
    local settings=${LIBGUESTFS_BACKEND_SETTINGS:-}
    if [ "${H2K_ACCEL:-tcg}" != kvm ] && [[ $settings != *force_tcg* ]]; then
        settings=${settings:+$settings:}force_tcg
    fi
    LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct} LIBGUESTFS_BACKEND_SETTINGS=$settings \
        guestfish "$@"
}

# Raw disk → VMware monolithicSparse VMDK (what a VMware Workstation / vSphere download gives).
to_vmdk() { # RAW VMDK [SUBFORMAT]
    qemu-img convert -f raw -O vmdk -o "subformat=${3:-monolithicSparse}" "$1" "$2"
}

# JSON string list from arguments.
json_strings() {
    local first=1 s
    printf '['
    for s in "$@"; do
        [ $first = 1 ] || printf ', '
        first=0
        s=${s//\\/\\\\}
        printf '"%s"' "${s//\"/\\\"}"
    done
    printf ']'
}

# ---------------------------------------------------------------------------------------------
# debian12-bios
# ---------------------------------------------------------------------------------------------

# Disk: 2 GiB MBR. p1 1 MiB..1792 MiB ext4 /, p2 1792..2048 MiB swap.
BIOS_DISK_MIB=2048
BIOS_P1_START=1 BIOS_P1_MIB=1791
BIOS_P2_START=1792 BIOS_P2_MIB=256
BIOS_MAC=00:50:56:8a:1b:01
# Storage drivers for the VMware virtual hardware (pvscsi, LSI Logic SPI/SAS, SATA, IDE) and the
# root file system: what MODULES=dep picks up on such a VM, and no virtio.
BIOS_INITRAMFS_MODULES=(vmw_pvscsi mptspi mptsas ahci ata_piix sd_mod ext4)

build_debian12_bios() { # OUTDIR
    local out=$1 r=$WORK/root kver root_uuid swap_uuid
    root_uuid=$(cat /proc/sys/kernel/random/uuid)
    swap_uuid=$(cat /proc/sys/kernel/random/uuid)

    make_base_tree "$r"
    prepare_chroot "$r"
    log "installing packages (initramfs-tools, grub-pc, open-vm-tools)"
    in_chroot "$r" debconf-set-selections <<'EOF'
grub-pc grub-pc/install_devices multiselect
grub-pc grub-pc/install_devices_empty boolean true
EOF
    # zstd: initramfs-tools compresses with it by default (a Recommends, so name it).
    apt_install "$r" initramfs-tools zstd grub-pc open-vm-tools >&2

    # Everything the initramfs build reads must be in place before the kernel's postinst runs
    # update-initramfs: MODULES=list (MODULES=dep in a chroot would detect the *build host's*
    # disk, virtio here), the VMware driver list, the fstab the fsck hook reads, no resume device.
    sed -i 's/^MODULES=.*/MODULES=list/' "$r/etc/initramfs-tools/initramfs.conf"
    {
        echo "# Storage drivers of the VMware virtual machine this guest was installed on."
        printf '%s\n' "${BIOS_INITRAMFS_MODULES[@]}"
    } >>"$r/etc/initramfs-tools/modules"
    echo "RESUME=none" >"$r/etc/initramfs-tools/conf.d/resume"
    # The fsck hook probes the root device named in fstab, which the chroot does not have; tell
    # it the type for this one build (the file is removed again below).
    echo "FSTYPE=ext4" >"$r/etc/initramfs-tools/conf.d/zz-h2k-build-fstype"
    cat >"$r/etc/fstab" <<'EOF'
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
/dev/sda1       /               ext4    errors=remount-ro 0       1
/dev/sda2       none            swap    sw              0       0
EOF
    configure_common "$r" h2k-bios "$BIOS_MAC"
    # GRUB_DISABLE_LINUX_UUID: grub-mkconfig writes root=/dev/sda1, as on many VMware guests.
    write_default_grub "$r" "GRUB_DISABLE_LINUX_UUID=true"

    log "installing linux-image-amd64 (update-initramfs runs in the chroot)"
    apt_install "$r" linux-image-amd64 >&2
    kver=$(kernel_version "$r")
    rm -f "$r/etc/initramfs-tools/conf.d/zz-h2k-build-fstype"

    # The initramfs must carry the VMware drivers and no virtio ones.
    in_chroot "$r" lsinitramfs "/boot/initrd.img-$kver" >"$WORK/initramfs.list"
    check_initramfs_list "$WORK/initramfs.list" "${BIOS_INITRAMFS_MODULES[@]}"
    grep -q 'sbin/fsck.ext4$' "$WORK/initramfs.list" || die "initramfs lacks fsck.ext4"

    local v_grub v_itools v_ovt
    v_grub=$(pkg_version "$r" grub-pc)
    v_itools=$(pkg_version "$r" initramfs-tools)
    v_ovt=$(pkg_version "$r" open-vm-tools)
    finish_chroot "$r"

    log "making file-system images"
    mkfs_ext4_from_dir "$WORK/p1.img" "$BIOS_P1_MIB" "$r" "$root_uuid"
    rm -rf "$r"
    truncate -s "$((BIOS_P2_MIB * MIB))" "$WORK/p2.img"
    mkswap -U "$swap_uuid" "$WORK/p2.img" >/dev/null

    log "assembling the MBR disk"
    local disk=$WORK/disk.raw
    truncate -s "$((BIOS_DISK_MIB * MIB))" "$disk"
    sfdisk -q "$disk" <<EOF
label: dos
unit: sectors
start=$((BIOS_P1_START * 2048)), size=$((BIOS_P1_MIB * 2048)), type=83, bootable
start=$((BIOS_P2_START * 2048)), size=$((BIOS_P2_MIB * 2048)), type=82
EOF
    put_image "$disk" "$WORK/p1.img" "$BIOS_P1_START"
    put_image "$disk" "$WORK/p2.img" "$BIOS_P2_START"
    rm -f "$WORK/p1.img" "$WORK/p2.img"

    # grub-install needs the real disk, and grub-mkconfig must probe / as /dev/sda1 (the
    # appliance's name for it is the same as VMware's).
    log "grub-install + update-grub in the libguestfs appliance"
    run_guestfish --rw <<EOF
add-drive $disk format:raw
run
mount /dev/sda1 /
command "grub-install --target=i386-pc /dev/sda"
command "update-grub"
download /boot/grub/grub.cfg $WORK/grub.cfg
umount-all
EOF
    grep -q "linux.*/boot/vmlinuz-$kver root=/dev/sda1 ro console=tty0 console=ttyS0,115200n8" \
        "$WORK/grub.cfg" || die "grub.cfg has no 'root=/dev/sda1' kernel line"

    log "converting to VMDK (monolithicSparse and streamOptimized)"
    # Both at once: the streamOptimized one is CPU-bound (zlib), the sparse one I/O-bound.
    local sparse_pid
    to_vmdk "$disk" "$out/debian12-bios.vmdk" &
    sparse_pid=$!
    to_vmdk "$disk" "$out/debian12-bios-stream.vmdk" streamOptimized
    wait "$sparse_pid"
    rm -f "$disk"

    cat >"$out/debian12-bios.json" <<EOF
{
  "name": "debian12-bios",
  "builder_key": "$KEY",
  "vmdk": "debian12-bios.vmdk",
  "vmdk_subformat": "monolithicSparse",
  "stream_vmdk": "debian12-bios-stream.vmdk",
  "virtual_size_bytes": $((BIOS_DISK_MIB * MIB)),
  "distro": "debian",
  "version": "12",
  "arch": "x86_64",
  "hostname": "h2k-bios",
  "root_password": "h2k",
  "firmware": "bios",
  "partition_table": "mbr",
  "partitions": [
    {"number": 1, "device": "/dev/sda1", "start_bytes": $((BIOS_P1_START * MIB)), "size_bytes": $((BIOS_P1_MIB * MIB)), "fstype": "ext4", "uuid": "$root_uuid", "mountpoint": "/", "bootable": true},
    {"number": 2, "device": "/dev/sda2", "start_bytes": $((BIOS_P2_START * MIB)), "size_bytes": $((BIOS_P2_MIB * MIB)), "fstype": "swap", "uuid": "$swap_uuid", "mountpoint": null}
  ],
  "lvm": null,
  "fstab": $(json_strings "/dev/sda1 / ext4 errors=remount-ro 0 1" "/dev/sda2 none swap sw 0 0"),
  "kernel_version": "$kver",
  "kernel_cmdline": "root=/dev/sda1 ro console=tty0 console=ttyS0,115200n8",
  "bootloader": {"package": "grub-pc", "version": "$v_grub", "config": "/boot/grub/grub.cfg", "target": "i386-pc", "installed_to": "/dev/sda (MBR)", "default_grub_extra": "GRUB_DISABLE_LINUX_UUID=true"},
  "initramfs": {"tool": "initramfs-tools", "version": "$v_itools", "path": "/boot/initrd.img-$kver", "modules_policy": "MODULES=list", "modules_present": $(json_strings "${BIOS_INITRAMFS_MODULES[@]}"), "modules_absent": $(json_strings virtio_blk virtio_pci virtio_scsi)},
  "network": {"interface": "ens192", "mac": "$BIOS_MAC", "config": "/etc/network/interfaces", "mac_pinning": "/etc/udev/rules.d/70-persistent-net.rules"},
  "vmware_tools": {"package": "open-vm-tools", "version": "$v_ovt"},
  "serial_console": "ttyS0",
  "expected_boot": {"pvscsi": "login", "sata": "login", "virtio-blk": "fail: initramfs-tools 'Gave up waiting for root file system device.  Common problems:' then 'ALERT!  /dev/sda1 does not exist.  Dropping to a shell!' (~30 s wait)"},
  "build_seconds": $(($(date +%s) - BUILD_START)),
  "built_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
EOF
}

# Fail the build when an initramfs listing lacks a wanted module or carries a virtio one.
check_initramfs_list() { # LIST_FILE MODULE...
    local list=$1 m
    shift
    for m in "$@"; do
        # module file names mix - and _ (dm-mod.ko, vmw_pvscsi.ko): match either
        grep -Eq "/${m//[-_]/[-_]}\.ko(\.[a-z]+)?$" "$list" || die "initramfs lacks $m.ko"
    done
    if grep -E '/virtio[^/]*\.ko' "$list" >&2; then
        die "initramfs contains virtio modules (listed above)"
    fi
    log "initramfs check: has $*; no virtio modules"
}

# ---------------------------------------------------------------------------------------------
# debian12-uefi-dracut-lvm
# ---------------------------------------------------------------------------------------------

# Disk: 2 GiB GPT. p1 1..101 MiB ESP, p2 101..357 MiB /boot, p3 357..2047 MiB LVM PV (the last MiB
# leaves room for the backup GPT). LVM: 1 MiB metadata area at the start of the PV (pvcreate
# --dataalignment 1m), 4 MiB extents, vg0/root takes all 422 extents starting at extent 0.
UEFI_DISK_MIB=2048
UEFI_P1_START=1 UEFI_P1_MIB=100
UEFI_P2_START=101 UEFI_P2_MIB=256
UEFI_P3_START=357 UEFI_P3_MIB=1690
UEFI_PE_START_MIB=1 UEFI_EXTENT_MIB=4
UEFI_LV_MIB=$(((UEFI_P3_MIB - UEFI_PE_START_MIB) / UEFI_EXTENT_MIB * UEFI_EXTENT_MIB))
UEFI_MAC=00:50:56:8a:1b:02
# What udev names the SATA disk's partition 2 when the guest runs under qemu -machine q35 with the
# disk on the built-in AHCI controller's first port (ide.0), found by booting it and listing
# /dev/disk/by-path: systemd 252 makes both pci-0000:00:1f.2-ata-1.0-part2 and the older-style
# pci-0000:00:1f.2-ata-1-part2 (its ID_PATH_ATA_COMPAT link). The older style is what a guest
# installed before systemd 251 carries in its fstab.
UEFI_BOOT_BYPATH=/dev/disk/by-path/pci-0000:00:1f.2-ata-1-part2
UEFI_BOOT_BYPATH_ALIAS=/dev/disk/by-path/pci-0000:00:1f.2-ata-1.0-part2
UEFI_DRACUT_DRIVERS=(ahci libahci sd_mod ext4 dm_mod)

build_debian12_uefi_dracut_lvm() { # OUTDIR
    local out=$1 r=$WORK/root kver root_uuid boot_uuid esp_id
    root_uuid=$(cat /proc/sys/kernel/random/uuid)
    boot_uuid=$(cat /proc/sys/kernel/random/uuid)
    esp_id=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
    local esp_id_uc=${esp_id^^}

    make_base_tree "$r"
    prepare_chroot "$r"
    # dracut goes in before the kernel so it, not initramfs-tools, satisfies the kernel's
    # initramfs dependency.
    log "installing packages (dracut, lvm2, grub-efi-amd64, open-vm-tools)"
    apt_install "$r" dracut lvm2 grub-efi-amd64 dosfstools open-vm-tools >&2
    if in_chroot "$r" dpkg-query -W -f='${Status}' initramfs-tools 2>/dev/null | grep -q 'install ok installed'; then
        die "initramfs-tools got installed next to dracut"
    fi

    # Host-only dracut, as the Debian VM made it on VMware SATA: the AHCI/SCSI-disk drivers, LVM
    # and ext4 are named explicitly (host-only detection runs in the libguestfs appliance, whose
    # disk is virtio-scsi), every virtio driver is left out, and so is dracut's "qemu" module,
    # which adds virtio when it sees it runs in a VM. hostonly_cmdline=no: the kernel command line
    # comes from GRUB alone. omit_drivers entries are regular expressions matched against whole
    # module names: virtio.* drops virtio_blk, virtio_scsi, virtio_pci(_modern_dev), virtio_net,
    # virtio_mmio, virtiofs ... (hostonly still pulls some in: the appliance runs on virtio).
    cat >"$r/etc/dracut.conf.d/10-h2k-vmware.conf" <<EOF
hostonly="yes"
hostonly_cmdline="no"
add_drivers+=" ${UEFI_DRACUT_DRIVERS[*]} "
add_dracutmodules+=" lvm "
omit_dracutmodules+=" qemu qemu-net virtiofs "
omit_drivers+=" virtio.* "
EOF
    cat >"$r/etc/fstab" <<EOF
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
/dev/mapper/vg0-root /          ext4    errors=remount-ro 0       1
$UEFI_BOOT_BYPATH /boot ext4    defaults        0       2
/dev/sda1       /boot/efi       vfat    umask=0077      0       1
EOF
    configure_common "$r" h2k-uefi "$UEFI_MAC"
    write_default_grub "$r" ""

    # INITRD=No: dracut's kernel hook would build a host-only image of the *build host* here; the
    # real image is made in the appliance, where / is the guest's LVM volume.
    log "installing linux-image-amd64 (initramfs deferred to the appliance)"
    CHROOT_ENV="INITRD=No" apt_install "$r" linux-image-amd64 >&2
    kver=$(kernel_version "$r")

    local v_grub v_dracut v_ovt
    v_grub=$(pkg_version "$r" grub-efi-amd64)
    v_dracut=$(pkg_version "$r" dracut)
    v_ovt=$(pkg_version "$r" open-vm-tools)
    finish_chroot "$r"

    # /boot is its own file system: move its contents out of the root tree.
    local bootdir=$WORK/bootfs
    mkdir -p "$bootdir"
    mv "$r/boot"/* "$bootdir"/
    mkdir -p "$bootdir/efi"

    log "making file-system images"
    mkfs_ext4_from_dir "$WORK/root.img" "$UEFI_LV_MIB" "$r" "$root_uuid"
    mkfs_ext4_from_dir "$WORK/boot.img" "$UEFI_P2_MIB" "$bootdir" "$boot_uuid"
    rm -rf "$r" "$bootdir"
    truncate -s "$((UEFI_P1_MIB * MIB))" "$WORK/esp.img"
    mkfs.vfat -F 32 -S 512 -s 1 -i "$esp_id" -n EFI "$WORK/esp.img" >/dev/null

    log "assembling the GPT disk"
    local disk=$WORK/disk.raw
    truncate -s "$((UEFI_DISK_MIB * MIB))" "$disk"
    sfdisk -q "$disk" <<EOF
label: gpt
unit: sectors
start=$((UEFI_P1_START * 2048)), size=$((UEFI_P1_MIB * 2048)), type=U, name="EFI System Partition"
start=$((UEFI_P2_START * 2048)), size=$((UEFI_P2_MIB * 2048)), type=L
start=$((UEFI_P3_START * 2048)), size=$((UEFI_P3_MIB * 2048)), type=V
EOF
    put_image "$disk" "$WORK/esp.img" "$UEFI_P1_START"
    put_image "$disk" "$WORK/boot.img" "$UEFI_P2_START"
    # The root file system goes where vg0/root's first extent will be, so the appliance only has
    # to write LVM metadata (copying 1 GiB through it under TCG would cost minutes).
    put_image "$disk" "$WORK/root.img" "$((UEFI_P3_START + UEFI_PE_START_MIB))"
    rm -f "$WORK/esp.img" "$WORK/boot.img" "$WORK/root.img"

    # In the appliance: LVM metadata around the pre-placed file system (-Zn -Wn: lvcreate must
    # neither zero nor wipe the LV's start, that is our superblock), checked to sit where we put
    # it; then GRUB to the removable path, the host-only dracut image, grub.cfg.
    log "LVM, grub-install, dracut, update-grub in the libguestfs appliance"
    local expect_seg="/dev/sda3:0-$((UEFI_LV_MIB / UEFI_EXTENT_MIB - 1))"
    run_guestfish --rw <<EOF
add-drive $disk format:raw
run
debug sh "set -e; lvm pvcreate -q -y -ff --dataalignment ${UEFI_PE_START_MIB}m /dev/sda3; lvm vgcreate -q -s ${UEFI_EXTENT_MIB}m vg0 /dev/sda3; lvm lvcreate -q -y -Zn -Wn -l 100%FREE -n root vg0; lvm pvs --noheadings --units b --nosuffix -o pe_start /dev/sda3 | grep -qwF $((UEFI_PE_START_MIB * MIB)); lvm lvs --noheadings -o seg_pe_ranges vg0/root | grep -qwF $expect_seg; blkid -o value -s UUID /dev/mapper/vg0-root | grep -qxF $root_uuid"
mount /dev/vg0/root /
mount /dev/sda2 /boot
mount /dev/sda1 /boot/efi
command "grub-install --target=x86_64-efi --efi-directory=/boot/efi --boot-directory=/boot --removable --no-nvram"
command "dracut --force --kver $kver /boot/initrd.img-$kver"
command "update-grub"
command "sh -c 'lsinitrd /boot/initrd.img-$kver >/tmp/h2k-lsinitrd.txt'"
download /tmp/h2k-lsinitrd.txt $WORK/initramfs.list
rm /tmp/h2k-lsinitrd.txt
download /boot/grub/grub.cfg $WORK/grub.cfg
is-file /boot/efi/EFI/BOOT/BOOTX64.EFI
umount-all
EOF
    check_initramfs_list "$WORK/initramfs.list" "${UEFI_DRACUT_DRIVERS[@]}"
    grep -q "linux.*/vmlinuz-$kver root=/dev/mapper/vg0-root ro console=tty0 console=ttyS0,115200n8" \
        "$WORK/grub.cfg" || die "grub.cfg has no 'root=/dev/mapper/vg0-root' kernel line"
    grep -q 'sbin/lvm$' "$WORK/initramfs.list" || die "dracut image has no lvm binary"

    log "converting to VMDK (monolithicSparse)"
    to_vmdk "$disk" "$out/debian12-uefi-dracut-lvm.vmdk"
    rm -f "$disk"

    cat >"$out/debian12-uefi-dracut-lvm.json" <<EOF
{
  "name": "debian12-uefi-dracut-lvm",
  "builder_key": "$KEY",
  "vmdk": "debian12-uefi-dracut-lvm.vmdk",
  "vmdk_subformat": "monolithicSparse",
  "virtual_size_bytes": $((UEFI_DISK_MIB * MIB)),
  "distro": "debian",
  "version": "12",
  "arch": "x86_64",
  "hostname": "h2k-uefi",
  "root_password": "h2k",
  "firmware": "uefi",
  "partition_table": "gpt",
  "partitions": [
    {"number": 1, "device": "/dev/sda1", "start_bytes": $((UEFI_P1_START * MIB)), "size_bytes": $((UEFI_P1_MIB * MIB)), "fstype": "vfat", "uuid": "${esp_id_uc:0:4}-${esp_id_uc:4:4}", "mountpoint": "/boot/efi", "gpt_type": "EFI System"},
    {"number": 2, "device": "/dev/sda2", "start_bytes": $((UEFI_P2_START * MIB)), "size_bytes": $((UEFI_P2_MIB * MIB)), "fstype": "ext4", "uuid": "$boot_uuid", "mountpoint": "/boot", "gpt_type": "Linux filesystem"},
    {"number": 3, "device": "/dev/sda3", "start_bytes": $((UEFI_P3_START * MIB)), "size_bytes": $((UEFI_P3_MIB * MIB)), "fstype": "LVM2_member", "mountpoint": null, "gpt_type": "Linux LVM"}
  ],
  "lvm": {"vg": "vg0", "pv": "/dev/sda3", "extent_bytes": $((UEFI_EXTENT_MIB * MIB)), "lvs": [{"name": "root", "device": "/dev/mapper/vg0-root", "size_bytes": $((UEFI_LV_MIB * MIB)), "fstype": "ext4", "uuid": "$root_uuid", "mountpoint": "/"}]},
  "fstab": $(json_strings "/dev/mapper/vg0-root / ext4 errors=remount-ro 0 1" "$UEFI_BOOT_BYPATH /boot ext4 defaults 0 2" "/dev/sda1 /boot/efi vfat umask=0077 0 1"),
  "boot_bypath": {"path": "$UEFI_BOOT_BYPATH", "alias": "$UEFI_BOOT_BYPATH_ALIAS", "resolves_to": "/dev/sda2", "machine": "qemu -machine q35, disk on the built-in AHCI port 0 (-device ide-hd,bus=ide.0)"},
  "kernel_version": "$kver",
  "kernel_cmdline": "root=/dev/mapper/vg0-root ro console=tty0 console=ttyS0,115200n8",
  "bootloader": {"package": "grub-efi-amd64", "version": "$v_grub", "config": "/boot/grub/grub.cfg", "target": "x86_64-efi", "installed_to": "/boot/efi/EFI/BOOT/BOOTX64.EFI (removable path, no NVRAM entry)"},
  "initramfs": {"tool": "dracut", "version": "$v_dracut", "path": "/boot/initrd.img-$kver", "config": "/etc/dracut.conf.d/10-h2k-vmware.conf", "hostonly": true, "modules_present": $(json_strings "${UEFI_DRACUT_DRIVERS[@]}"), "modules_absent": $(json_strings virtio_blk virtio_pci virtio_scsi)},
  "network": {"interface": "ens192", "mac": "$UEFI_MAC", "config": "/etc/network/interfaces", "mac_pinning": "/etc/udev/rules.d/70-persistent-net.rules"},
  "vmware_tools": {"package": "open-vm-tools", "version": "$v_ovt"},
  "serial_console": "ttyS0",
  "expected_boot": {"sata-q35": "login", "virtio-blk": "fail: 'dracut-initqueue: timeout, still waiting', 'Warning: Could not boot.', 'Warning: \\"/dev/mapper/vg0-root\\" does not exist', 'Entering emergency mode' (dracut's default wait, ~5 min under TCG)"},
  "build_seconds": $(($(date +%s) - BUILD_START)),
  "built_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
EOF
}

# ---------------------------------------------------------------------------------------------
# Driver: cache lookup, lock, build into a temp dir, publish by rename
# ---------------------------------------------------------------------------------------------

# Work directories of builds that were killed (SIGKILL, a lost machine): only ever called with the
# build lock held, so no live build owns them. Anything still mounted there is left alone.
sweep_stale_work() {
    local d
    for d in "$CACHE_ROOT"/tmp/*/; do
        d=${d%/}
        if [ -z "$(mounts_under "$d")" ]; then
            log "removing the leftover work directory $d"
            rm -rf "$d"
        fi
    done
}

# Fail early, naming the Debian package, when a build tool is missing (scripts/setup.sh installs
# them all).
require_tools() {
    local t pkg missing=()
    for t in debootstrap:debootstrap sfdisk:fdisk mkfs.ext4:e2fsprogs mkswap:util-linux \
        mkfs.vfat:dosfstools qemu-img:qemu-utils guestfish:libguestfs-tools flock:util-linux; do
        pkg=${t#*:}
        t=${t%%:*}
        command -v "$t" >/dev/null || missing+=("$t (package $pkg)")
    done
    [ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]}"
}

ensure_fixture() { # NAME
    local name=$1 dest=$CACHE_ROOT/fixtures/$KEY
    if fixture_is_complete "$dest" "$name"; then
        echo "$dest/$name.vmdk" >&3
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "building $name needs root (debootstrap, chroot, mount)"
    require_tools
    mkdir -p "$CACHE_ROOT/fixtures" "$CACHE_ROOT/tmp"
    # One build at a time per cache: a second caller waits here, then finds the fixture built.
    exec 9>"$CACHE_ROOT/fixtures/.build.lock"
    if ! flock -n 9; then
        log "another build holds $CACHE_ROOT/fixtures/.build.lock; waiting"
        flock 9
    fi
    if fixture_is_complete "$dest" "$name"; then
        exec 9>&-
        echo "$dest/$name.vmdk" >&3
        return
    fi

    sweep_stale_work
    BUILD_START=$(date +%s)
    WORK=$(mktemp -d "$CACHE_ROOT/tmp/$name.XXXXXX")
    mkdir -p "$WORK/out"
    log "building $name (key $KEY) in $WORK"
    case $name in
        debian12-bios) build_debian12_bios "$WORK/out" ;;
        debian12-uefi-dracut-lvm) build_debian12_uefi_dracut_lvm "$WORK/out" ;;
    esac

    # Publish: disk images first, the JSON (the completeness marker) last; each rename is atomic
    # and the temp dir is on the same file system as the cache.
    mkdir -p "$dest"
    local f
    for f in "$WORK/out"/*.vmdk; do mv -f "$f" "$dest/"; done
    mv -f "$WORK/out/$name.json" "$dest/$name.json"
    rm -rf "$WORK"
    WORK=""
    # Fixtures built by an older version of this builder are never used again (~1.5 GB each).
    find "$CACHE_ROOT/fixtures" -mindepth 1 -maxdepth 1 -type d ! -name "$KEY" -exec rm -rf {} +
    exec 9>&-
    log "built $name in $(($(date +%s) - BUILD_START)) s"
    BUILD_START=""
    echo "$dest/$name.vmdk" >&3
}

main() {
    [ $# -eq 1 ] || usage
    local names=()
    case $1 in
        all) names=("${ALL_FIXTURES[@]}") ;;
        debian12-bios | debian12-uefi-dracut-lvm) names=("$1") ;;
        -h | --help) usage ;;
        *) log "unknown fixture '$1'"; usage ;;
    esac
    KEY=$(builder_key)
    CACHE_ROOT=$(mkdir -p "$CACHE_ROOT" && cd "$CACHE_ROOT" && pwd -P)
    local n
    for n in "${names[@]}"; do
        ensure_fixture "$n"
    done
}

main "$@"
