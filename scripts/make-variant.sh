#!/usr/bin/env bash
# make-variant.sh NAME|all — derive a guest from one of make-fixture.sh's Debian 12 guests the way
# VMware templates differ from one another (network naming, a data disk, generator drop-ins), and
# print the absolute path of its first VMDK as the last stdout line.
#
#   debian12-bios-static-nopin  debian12-bios with a static ifupdown address on ens192 and no udev
#                               MAC pin: the name comes from VMware's PCI slot (160/192/…), as on
#                               templates made since Debian 9. Boots on pvscsi with the NIC behind a
#                               VMware-like PCIe slot 192; on KVM the virtio NIC is named otherwise.
#   debian12-bios-twodisk       debian12-bios plus a data disk mounted as /dev/sdb1 on /srv and
#                               RESUME=/dev/sda2 in initramfs-tools' conf.d/resume (initramfs rebuilt)
#   debian12-uefi-dracut-omit   debian12-uefi-dracut-lvm plus the template drop-in
#                               /etc/dracut.conf.d/90-vmware-template.conf that omits the virtio
#                               drivers by name
#   all                         every variant, one path per line
#
# Variants are edited copies made through the libguestfs appliance (a minute or two each under TCG)
# and cached in ${H2K_CACHE_DIR:-~/.cache/h2k-guest}/variants/KEY/, KEY hashing this script and the
# base fixtures' builder key. Beside NAME.vmdk lies NAME.json (the facts; written last).
set -euo pipefail
shopt -s nullglob

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
SCRIPTS_DIR=$(dirname "$SCRIPT_PATH")
CACHE_ROOT=${H2K_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/h2k-guest}
ALL_VARIANTS=(debian12-bios-static-nopin debian12-bios-twodisk debian12-uefi-dracut-omit)
MIB=1048576

exec 3>&1 1>&2

log() { printf 'make-variant: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

run_guestfish() { # guestfish args..., script on stdin (TCG unless H2K_ACCEL=kvm)
    local settings=${LIBGUESTFS_BACKEND_SETTINGS:-}
    if [ "${H2K_ACCEL:-tcg}" != kvm ] && [[ $settings != *force_tcg* ]]; then
        settings=${settings:+$settings:}force_tcg
    fi
    LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct} LIBGUESTFS_BACKEND_SETTINGS=$settings \
        guestfish "$@"
}

base_fixture() { # NAME → path of its VMDK
    bash "$SCRIPTS_DIR/make-fixture.sh" "$1" 3>&- | tail -n 1
}

base_facts() { # VMDK → its JSON facts file
    echo "${1%.vmdk}.json"
}

variant_key() {
    local base_dir
    base_dir=$(dirname "$(base_fixture debian12-bios)")
    printf '%s|%s\n' "$(sha256sum <"$SCRIPT_PATH" | cut -d' ' -f1)" "$(basename "$base_dir")" |
        sha256sum | cut -c1-16
}

to_raw() { qemu-img convert -f vmdk -O raw "$1" "$2"; }
to_vmdk() { qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse "$1" "$2"; }

# The interface config of a static template: the address user-mode networking hands out, so the
# same guest is reachable in the boot check.
STATIC_INTERFACES='# This file describes the network interfaces available on your system
# and how to activate them. For more information, see interfaces(5).

source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback

# The primary network interface
auto ens192
iface ens192 inet static
	address 10.0.2.15/24
	gateway 10.0.2.2
	# dns-* options are implemented by the resolvconf package, if installed
	dns-nameservers 10.0.2.3
'

build_static_nopin() { # WORK OUT
    local work=$1 out=$2 base
    base=$(base_fixture debian12-bios)
    to_raw "$base" "$work/disk.raw"
    printf '%s' "$STATIC_INTERFACES" >"$work/interfaces"
    run_guestfish --rw -a "$work/disk.raw" <<EOF
run
mount /dev/sda1 /
rm-f /etc/udev/rules.d/70-persistent-net.rules
upload $work/interfaces /etc/network/interfaces
write /etc/hostname "h2k-static\n"
write /etc/resolv.conf "nameserver 10.0.2.3\n"
umount-all
EOF
    to_vmdk "$work/disk.raw" "$out/debian12-bios-static-nopin.vmdk"
    cat >"$out/debian12-bios-static-nopin.json" <<EOF
{
  "name": "debian12-bios-static-nopin",
  "base": "debian12-bios",
  "vmdk": "debian12-bios-static-nopin.vmdk",
  "disks": ["debian12-bios-static-nopin.vmdk"],
  "firmware": "bios",
  "hostname": "h2k-static",
  "network": {"interface": "ens192", "method": "static", "address": "10.0.2.15/24", "gateway": "10.0.2.2",
              "mac": "00:50:56:8a:1b:11", "mac_pinning": null, "vmware_pci_slot": 192},
  "fstab_mounts": ["/"], "swap": ["/dev/sda2"]
}
EOF
}

build_twodisk() { # WORK OUT
    local work=$1 out=$2 base data_uuid
    base=$(base_fixture debian12-bios)
    to_raw "$base" "$work/disk.raw"
    data_uuid=$(cat /proc/sys/kernel/random/uuid)
    # The data disk: MBR, one ext4 partition made on the host with a marker file.
    mkdir -p "$work/data"
    echo "h2k data disk" >"$work/data/DATA-DISK"
    truncate -s $((255 * MIB)) "$work/p1.img"
    mkfs.ext4 -q -F -U "$data_uuid" -L h2kdata -d "$work/data" "$work/p1.img"
    truncate -s $((256 * MIB)) "$work/data.raw"
    sfdisk -q "$work/data.raw" <<'EOF'
label: dos
unit: sectors
start=2048, type=83
EOF
    dd if="$work/p1.img" of="$work/data.raw" bs=1M seek=1 conv=notrunc,sparse status=none
    rm -f "$work/p1.img"
    cat >"$work/fstab" <<'EOF'
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
/dev/sda1       /               ext4    errors=remount-ro 0       1
/dev/sda2       none            swap    sw              0       0
/dev/sdb1       /srv            ext4    defaults        0       2
EOF
    # update-initramfs in the appliance, where the guest's disks are /dev/sda and /dev/sdb as on
    # the VMware VM: the resume hook records /dev/sda2 as it would have there.
    run_guestfish --rw -a "$work/disk.raw" -a "$work/data.raw" <<EOF
run
mount /dev/sda1 /
upload $work/fstab /etc/fstab
mkdir-p /srv
write /etc/initramfs-tools/conf.d/resume "RESUME=/dev/sda2\n"
write /etc/hostname "h2k-twodisk\n"
command "update-initramfs -u -k all"
umount-all
EOF
    to_vmdk "$work/disk.raw" "$out/debian12-bios-twodisk.vmdk"
    to_vmdk "$work/data.raw" "$out/debian12-bios-twodisk-data.vmdk"
    cat >"$out/debian12-bios-twodisk.json" <<EOF
{
  "name": "debian12-bios-twodisk",
  "base": "debian12-bios",
  "vmdk": "debian12-bios-twodisk.vmdk",
  "disks": ["debian12-bios-twodisk.vmdk", "debian12-bios-twodisk-data.vmdk"],
  "firmware": "bios",
  "hostname": "h2k-twodisk",
  "data_disk": {"device": "/dev/sdb1", "uuid": "$data_uuid", "mountpoint": "/srv", "marker": "/srv/DATA-DISK"},
  "resume": {"file": "/etc/initramfs-tools/conf.d/resume", "value": "RESUME=/dev/sda2",
             "swap_uuid": "$(jq_swap_uuid "$(base_facts "$base")")"},
  "network": {"interface": "ens192", "method": "dhcp", "mac": "00:50:56:8a:1b:01",
              "mac_pinning": "/etc/udev/rules.d/70-persistent-net.rules"},
  "fstab_mounts": ["/", "/srv"], "swap": ["/dev/sda2"]
}
EOF
}

jq_swap_uuid() { # FACTS_JSON → the swap partition's UUID
    grep -o '"fstype": "swap", "uuid": "[^"]*"' "$1" | sed 's/.*"uuid": "//; s/"$//'
}

DRACUT_OMIT='# Drivers the VMware virtual hardware does not have; keeps the image small.
omit_drivers+=" virtio_blk virtio_scsi virtio_net virtio_pci virtio_console "
'

build_dracut_omit() { # WORK OUT
    local work=$1 out=$2 base
    base=$(base_fixture debian12-uefi-dracut-lvm)
    to_raw "$base" "$work/disk.raw"
    printf '%s' "$DRACUT_OMIT" >"$work/90-vmware-template.conf"
    run_guestfish --rw -a "$work/disk.raw" <<EOF
run
mount /dev/vg0/root /
upload $work/90-vmware-template.conf /etc/dracut.conf.d/90-vmware-template.conf
write /etc/hostname "h2k-omit\n"
umount-all
EOF
    to_vmdk "$work/disk.raw" "$out/debian12-uefi-dracut-omit.vmdk"
    cat >"$out/debian12-uefi-dracut-omit.json" <<EOF
{
  "name": "debian12-uefi-dracut-omit",
  "base": "debian12-uefi-dracut-lvm",
  "vmdk": "debian12-uefi-dracut-omit.vmdk",
  "disks": ["debian12-uefi-dracut-omit.vmdk"],
  "firmware": "uefi",
  "hostname": "h2k-omit",
  "dracut_dropin": {"file": "/etc/dracut.conf.d/90-vmware-template.conf",
                    "omits": ["virtio_blk", "virtio_scsi", "virtio_net", "virtio_pci", "virtio_console"]},
  "network": {"interface": "ens192", "method": "dhcp", "mac": "00:50:56:8a:1b:02",
              "mac_pinning": "/etc/udev/rules.d/70-persistent-net.rules"},
  "fstab_mounts": ["/", "/boot", "/boot/efi"], "swap": []
}
EOF
}

ensure_variant() { # NAME
    local name=$1 dest=$CACHE_ROOT/variants/$KEY
    if [ -f "$dest/$name.json" ]; then
        echo "$dest/$name.vmdk" >&3
        return
    fi
    mkdir -p "$CACHE_ROOT/variants" "$CACHE_ROOT/tmp"
    exec 9>"$CACHE_ROOT/variants/.build.lock"
    flock 9
    if [ ! -f "$dest/$name.json" ]; then
        local start work
        start=$(date +%s)
        work=$(mktemp -d "$CACHE_ROOT/tmp/variant-$name.XXXXXX")
        trap 'rm -rf "$work"' EXIT
        mkdir -p "$work/out"
        log "building $name (key $KEY)"
        case $name in
            debian12-bios-static-nopin) build_static_nopin "$work" "$work/out" ;;
            debian12-bios-twodisk) build_twodisk "$work" "$work/out" ;;
            debian12-uefi-dracut-omit) build_dracut_omit "$work" "$work/out" ;;
        esac
        mkdir -p "$dest"
        local f
        for f in "$work/out"/*.vmdk; do mv -f "$f" "$dest/"; done
        mv -f "$work/out/$name.json" "$dest/$name.json"
        rm -rf "$work"
        trap - EXIT
        find "$CACHE_ROOT/variants" -mindepth 1 -maxdepth 1 -type d ! -name "$KEY" -exec rm -rf {} +
        log "built $name in $(($(date +%s) - start)) s"
    fi
    exec 9>&-
    echo "$dest/$name.vmdk" >&3
}

main() {
    [ $# -eq 1 ] || { log "usage: $0 NAME|all (NAME: ${ALL_VARIANTS[*]})"; exit 2; }
    local names=()
    case $1 in
        all) names=("${ALL_VARIANTS[@]}") ;;
        *) [[ " ${ALL_VARIANTS[*]} " == *" $1 "* ]] || die "unknown variant '$1' (${ALL_VARIANTS[*]})"
           names=("$1") ;;
    esac
    command -v guestfish >/dev/null || die "guestfish missing (run scripts/setup.sh)"
    CACHE_ROOT=$(mkdir -p "$CACHE_ROOT" && cd "$CACHE_ROOT" && pwd -P)
    KEY=$(variant_key)
    local n
    for n in "${names[@]}"; do
        ensure_variant "$n"
    done
}

main "$@"
