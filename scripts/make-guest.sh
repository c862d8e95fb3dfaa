#!/usr/bin/env bash
# make-guest.sh NAME|all — build a Debian guest of another release and layout than make-fixture.sh's
# Debian 12 pair, the way VMware templates of those releases are laid out, and print the absolute
# path of its VMDK as the last stdout line.
#
#   debian11-bios-xfs-nm        Debian 11. MBR: /dev/sda1 ext4 /boot, /dev/sda2 LVM sysvg with root
#                               (XFS) and swap; fstab by LABEL= (root, boot); NetworkManager keyfile
#                               with a static 10.0.2.15/24 on ens192 bound to the VMware MAC;
#                               initramfs-tools MODULES=list without virtio.
#   debian13-uefi-btrfs-netplan Debian 13. GPT: ESP + btrfs with subvolumes @ (/) and @home; fstab
#                               and root= by /dev/sda2 (rootflags=subvol=@); netplan (networkd
#                               renderer) matching the VMware MAC with set-name ens192, DHCP;
#                               grub-efi on the removable path; initramfs-tools without virtio.
#   all                         both, one path per line
#
# Each boots on the VMware-like bus (pvscsi, or SATA with OVMF) with its network up and fails on
# virtio. Cached like make-fixture.sh's under ${H2K_CACHE_DIR:-~/.cache/h2k-guest}/guests/KEY/, KEY
# hashing this script and scripts/fixtures/lib.sh; NAME.json beside NAME.vmdk holds the facts.
#
# Needs what make-fixture.sh needs, plus mkfs.xfs (xfsprogs), mkfs.btrfs and btrfs (btrfs-progs)
# and loop mounts (the file systems are filled on the host: through the appliance under TCG it
# takes minutes).
set -euo pipefail
shopt -s nullglob

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
SCRIPTS_DIR=$(dirname "$SCRIPT_PATH")
FIXTURES_SRC=$SCRIPTS_DIR/fixtures
CACHE_ROOT=${H2K_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/h2k-guest}
MIRROR=${H2K_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${H2K_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
ALL_GUESTS=(debian11-bios-xfs-nm debian13-uefi-btrfs-netplan)
BASE_INCLUDE=systemd-sysv,udev,kmod,iproute2,netbase,procps,ca-certificates,dbus
BASE_FORMAT=1

exec 3>&1 1>&2

LOG_NAME=make-guest
CACHE_KIND=guests
# shellcheck source=fixtures/lib.sh
. "$FIXTURES_SRC/lib.sh"

usage() {
    cat >&2 <<EOF
usage: $0 NAME|all
  NAME is one of: ${ALL_GUESTS[*]}
Prints the absolute path of each guest's VMDK on stdout (the last line is the last guest).
EOF
    exit 2
}

builder_key() {
    sha256sum "$SCRIPT_PATH" "$FIXTURES_SRC/lib.sh" | sed 's|  .*/|  |' | sha256sum | cut -c1-16
}

# Copy a root tree into a file-system image through a loop mount (numeric owners, xattrs and
# capabilities kept). OPTIONS are extra mount options (subvol=…).
fill_image() { # IMAGE SOURCE_DIR [OPTIONS]
    local m=$WORK/fill
    mkdir -p "$m"
    mount -o "loop${3:+,$3}" "$1" "$m"
    tar --numeric-owner --xattrs --xattrs-include='*' -C "$2" -cf - . |
        tar --numeric-owner --xattrs --xattrs-include='*' -C "$m" -xpf -
    umount "$m"
}

# initramfs-tools as the VMware guest had it: MODULES=list with the VMware storage drivers and
# the root file system, no virtio, and the image built later in the appliance (INITRD=No at
# kernel install: a chroot build would probe the build host's disk).
configure_initramfs_tools() { # ROOT RESUME MODULE...
    local r=$1 resume=$2
    shift 2
    sed -i 's/^MODULES=.*/MODULES=list/' "$r/etc/initramfs-tools/initramfs.conf"
    {
        echo "# Storage drivers of the VMware virtual machine this guest was installed on."
        printf '%s\n' "$@"
    } >>"$r/etc/initramfs-tools/modules"
    echo "RESUME=$resume" >"$r/etc/initramfs-tools/conf.d/resume"
}

# JSON facts shared by both guests.
write_facts() { # OUT NAME VERSION FIRMWARE HOSTNAME KVER MAC NETCONF FSTAB_JSON EXTRA_JSON
    cat >"$1/$2.json" <<EOF
{
  "name": "$2",
  "builder_key": "$KEY",
  "vmdk": "$2.vmdk",
  "distro": "debian",
  "version": "$3",
  "suite": "$SUITE",
  "arch": "x86_64",
  "firmware": "$4",
  "hostname": "$5",
  "root_password": "h2k",
  "kernel_version": "$6",
  "network": {"interface": "ens192", "mac": "$7", "config": "$8"},
  "fstab": $9,
  ${10},
  "serial_console": "ttyS0",
  "build_seconds": $(($(date +%s) - BUILD_START)),
  "built_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
EOF
}

# ---------------------------------------------------------------------------------------------
# debian11-bios-xfs-nm
# ---------------------------------------------------------------------------------------------

# Disk: 3 GiB MBR. p1 1..257 MiB ext4 /boot, p2 257..3071 MiB LVM PV (1 MiB metadata, 4 MiB
# extents): sysvg/root 2 GiB XFS at extent 0, sysvg/swap 256 MiB after it.
D11_DISK_MIB=3072
D11_P1_START=1 D11_P1_MIB=256
D11_P2_START=257 D11_P2_MIB=2814
D11_ROOT_MIB=2048 D11_SWAP_MIB=256
D11_MAC=00:50:56:8a:1b:21
D11_MODULES=(vmw_pvscsi mptspi mptsas ahci ata_piix sd_mod dm_mod xfs)

build_debian11_bios_xfs_nm() { # OUTDIR
    local out=$1 r=$WORK/root kver root_uuid boot_uuid con_uuid
    root_uuid=$(cat /proc/sys/kernel/random/uuid)
    boot_uuid=$(cat /proc/sys/kernel/random/uuid)
    con_uuid=$(cat /proc/sys/kernel/random/uuid)

    make_base_tree "$r"
    prepare_chroot "$r"
    in_chroot "$r" debconf-set-selections <<'EOF'
grub-pc grub-pc/install_devices multiselect
grub-pc grub-pc/install_devices_empty boolean true
EOF
    log "installing packages (initramfs-tools, grub-pc, lvm2, xfsprogs, network-manager, open-vm-tools)"
    apt_install "$r" initramfs-tools zstd grub-pc lvm2 xfsprogs network-manager open-vm-tools >&2
    configure_initramfs_tools "$r" /dev/mapper/sysvg-swap "${D11_MODULES[@]}"
    cat >"$r/etc/fstab" <<'EOF'
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
# / was on /dev/mapper/sysvg-root during installation
LABEL=root      /               xfs     defaults        0       0
# /boot was on /dev/sda1 during installation
LABEL=boot      /boot           ext4    defaults        0       2
/dev/mapper/sysvg-swap none     swap    sw              0       0
EOF
    configure_identity "$r" h2k-deb11
    # NetworkManager owns the NIC (a keyfile bound to the VMware NIC by name and MAC, as nmcli
    # writes one); the loopback alone stays in ifupdown's file.
    mkdir -p "$r/etc/NetworkManager/system-connections"
    cat >"$r/etc/NetworkManager/system-connections/ens192.nmconnection" <<EOF
[connection]
id=ens192
uuid=$con_uuid
type=ethernet
interface-name=ens192
permissions=

[ethernet]
mac-address=${D11_MAC^^}
mac-address-blacklist=

[ipv4]
address1=10.0.2.15/24,10.0.2.2
dns=10.0.2.3;
dns-search=
method=manual

[ipv6]
addr-gen-mode=stable-privacy
dns-search=
method=ignore

[proxy]
EOF
    chmod 600 "$r/etc/NetworkManager/system-connections/ens192.nmconnection"
    write_default_grub "$r" ""

    log "installing linux-image-amd64 (initramfs deferred to the appliance)"
    CHROOT_ENV="INITRD=No" apt_install "$r" linux-image-amd64 >&2
    kver=$(kernel_version "$r")
    local v_nm v_grub
    v_nm=$(pkg_version "$r" network-manager)
    v_grub=$(pkg_version "$r" grub-pc)
    finish_chroot "$r"

    local bootdir=$WORK/bootfs
    mkdir -p "$bootdir"
    mv "$r/boot"/* "$bootdir"/

    log "making file-system images (XFS filled through a loop mount)"
    rm -f "$WORK/root.img"
    truncate -s "$((D11_ROOT_MIB * MIB))" "$WORK/root.img"
    # The features xfsprogs 5.10 (Debian 11's) formats with: no bigtime, no inobtcount.
    mkfs.xfs -q -f -L root -m uuid="$root_uuid",bigtime=0,inobtcount=0 "$WORK/root.img"
    fill_image "$WORK/root.img" "$r"
    rm -f "$WORK/boot.img"
    truncate -s "$((D11_P1_MIB * MIB))" "$WORK/boot.img"
    mkfs.ext4 -q -F -L boot -U "$boot_uuid" -d "$bootdir" "$WORK/boot.img"
    rm -rf "$r" "$bootdir"

    log "assembling the MBR disk"
    local disk=$WORK/disk.raw
    truncate -s "$((D11_DISK_MIB * MIB))" "$disk"
    sfdisk -q "$disk" <<EOF
label: dos
unit: sectors
start=$((D11_P1_START * 2048)), size=$((D11_P1_MIB * 2048)), type=83, bootable
start=$((D11_P2_START * 2048)), size=$((D11_P2_MIB * 2048)), type=8e
EOF
    put_image "$disk" "$WORK/boot.img" "$D11_P1_START"
    put_image "$disk" "$WORK/root.img" "$((D11_P2_START + 1))"
    rm -f "$WORK/boot.img" "$WORK/root.img"

    log "LVM, mkswap, update-initramfs, grub-install, update-grub in the libguestfs appliance"
    local expect_seg="${GF_DISK}2:0-$((D11_ROOT_MIB / 4 - 1))"
    run_guestfish --rw <<EOF
add-drive $disk format:raw label:target
run
debug sh "set -e; lvm pvcreate -q -y -ff --dataalignment 1m ${GF_DISK}2; lvm vgcreate -q -s 4m sysvg ${GF_DISK}2; lvm lvcreate -q -y -Zn -Wn -l $((D11_ROOT_MIB / 4)) -n root sysvg; lvm lvcreate -q -y -l $((D11_SWAP_MIB / 4)) -n swap sysvg; lvm lvs --noheadings -o seg_pe_ranges sysvg/root | grep -qwF $expect_seg; blkid -o value -s UUID /dev/mapper/sysvg-root | grep -qxF $root_uuid"
mkswap /dev/sysvg/swap label:swap
mount /dev/sysvg/root /
mount /dev/sda1 /boot
command "update-initramfs -c -k $kver"
sh "grub-install --target=i386-pc $GF_DISK"
command "update-grub"
$(gf_grub_cfg_as_sda /boot/grub/grub.cfg)
command "sh -c 'lsinitramfs /boot/initrd.img-$kver >/tmp/h2k-initramfs.txt'"
download /tmp/h2k-initramfs.txt $WORK/initramfs.list
rm /tmp/h2k-initramfs.txt
download /boot/grub/grub.cfg $WORK/grub.cfg
umount-all
EOF
    check_initramfs_list "$WORK/initramfs.list" "${D11_MODULES[@]}"
    grep -q 'sbin/lvm$' "$WORK/initramfs.list" || die "initramfs has no lvm binary"
    grep -q "linux.*/vmlinuz-$kver root=/dev/mapper/sysvg-root ro console=tty0 console=ttyS0,115200n8" \
        "$WORK/grub.cfg" || die "grub.cfg has no 'root=/dev/mapper/sysvg-root' kernel line"

    log "converting to VMDK (monolithicSparse)"
    to_vmdk "$disk" "$out/debian11-bios-xfs-nm.vmdk"
    rm -f "$disk"
    write_facts "$out" debian11-bios-xfs-nm 11 bios h2k-deb11 "$kver" "$D11_MAC" \
        /etc/NetworkManager/system-connections/ens192.nmconnection \
        "$(json_strings "LABEL=root / xfs defaults 0 0" "LABEL=boot /boot ext4 defaults 0 2" "/dev/mapper/sysvg-swap none swap sw 0 0")" \
        "\"static_address\": \"10.0.2.15/24\", \"network_manager\": \"$v_nm\", \"bootloader\": {\"package\": \"grub-pc\", \"version\": \"$v_grub\"}, \"lvm\": {\"vg\": \"sysvg\", \"root\": {\"fstype\": \"xfs\", \"uuid\": \"$root_uuid\", \"label\": \"root\"}}, \"boot_uuid\": \"$boot_uuid\", \"initramfs\": {\"tool\": \"initramfs-tools\", \"modules_present\": $(json_strings "${D11_MODULES[@]}"), \"modules_absent\": $(json_strings virtio_blk virtio_pci virtio_scsi)}, \"expected_boot\": {\"pvscsi\": \"whole\", \"virtio-blk\": \"fail: initramfs-tools gives up waiting for the root device\"}"
}

# ---------------------------------------------------------------------------------------------
# debian13-uefi-btrfs-netplan
# ---------------------------------------------------------------------------------------------

# Disk: 2.5 GiB GPT. p1 1..101 MiB ESP, p2 101..2559 MiB btrfs (the last MiB: backup GPT).
D13_DISK_MIB=2560
D13_P1_START=1 D13_P1_MIB=100
D13_P2_START=101 D13_P2_MIB=2458
D13_MAC=00:50:56:8a:1b:31
D13_MODULES=(ahci libahci sd_mod btrfs)

build_debian13_uefi_btrfs_netplan() { # OUTDIR
    local out=$1 r=$WORK/root kver fs_uuid esp_id
    fs_uuid=$(cat /proc/sys/kernel/random/uuid)
    esp_id=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')

    make_base_tree "$r"
    prepare_chroot "$r"
    log "installing packages (initramfs-tools, grub-efi-amd64, btrfs-progs, netplan.io, open-vm-tools)"
    apt_install "$r" initramfs-tools zstd grub-efi-amd64 dosfstools btrfs-progs netplan.io \
        open-vm-tools >&2
    configure_initramfs_tools "$r" none "${D13_MODULES[@]}"
    local esp_uc=${esp_id^^}
    cat >"$r/etc/fstab" <<EOF
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
/dev/sda2       /               btrfs   defaults,subvol=@ 0     0
/dev/sda2       /home           btrfs   defaults,subvol=@home 0 0
UUID=${esp_uc:0:4}-${esp_uc:4:4}  /boot/efi vfat umask=0077   0       1
EOF
    configure_identity "$r" h2k-deb13
    # What cloud-init's VMware datasource leaves: the NIC matched by MAC and named ens192.
    mkdir -p "$r/etc/netplan"
    cat >"$r/etc/netplan/50-cloud-init.yaml" <<EOF
# This file is generated from information provided by the datasource.  Changes
# to it will not persist across an instance reboot.
network:
    version: 2
    ethernets:
        ens192:
            match:
                macaddress: '$D13_MAC'
            set-name: ens192
            dhcp4: true
EOF
    chmod 600 "$r/etc/netplan/50-cloud-init.yaml"
    in_chroot "$r" systemctl enable systemd-networkd.service >&2
    # GRUB_DISABLE_LINUX_UUID: root=/dev/sda2 (rootflags=subvol=@ comes from grub-mkconfig).
    write_default_grub "$r" "GRUB_DISABLE_LINUX_UUID=true"

    log "installing linux-image-amd64 (initramfs deferred to the appliance)"
    CHROOT_ENV="INITRD=No" apt_install "$r" linux-image-amd64 >&2
    kver=$(kernel_version "$r")
    local v_netplan v_grub
    v_netplan=$(pkg_version "$r" netplan.io)
    v_grub=$(pkg_version "$r" grub-efi-amd64)
    finish_chroot "$r"

    log "making file-system images (btrfs subvolumes filled through a loop mount)"
    local img=$WORK/fs.img m=$WORK/top
    rm -f "$img"
    truncate -s "$((D13_P2_MIB * MIB))" "$img"
    mkfs.btrfs -q -f -U "$fs_uuid" "$img"
    mkdir -p "$m" "$r/boot/efi"
    mount -o loop "$img" "$m"
    btrfs subvolume create "$m/@" >/dev/null
    btrfs subvolume create "$m/@home" >/dev/null
    umount "$m"
    local home=$WORK/home
    mv "$r/home" "$home"
    mkdir -p "$r/home"
    fill_image "$img" "$r" subvol=@
    fill_image "$img" "$home" subvol=@home
    rm -rf "$r" "$home"
    truncate -s "$((D13_P1_MIB * MIB))" "$WORK/esp.img"
    mkfs.vfat -F 32 -S 512 -s 1 -i "$esp_id" -n EFI "$WORK/esp.img" >/dev/null

    log "assembling the GPT disk"
    local disk=$WORK/disk.raw
    truncate -s "$((D13_DISK_MIB * MIB))" "$disk"
    sfdisk -q "$disk" <<EOF
label: gpt
unit: sectors
start=$((D13_P1_START * 2048)), size=$((D13_P1_MIB * 2048)), type=U, name="EFI System Partition"
start=$((D13_P2_START * 2048)), size=$((D13_P2_MIB * 2048)), type=L
EOF
    put_image "$disk" "$WORK/esp.img" "$D13_P1_START"
    put_image "$disk" "$img" "$D13_P2_START"
    rm -f "$WORK/esp.img" "$img"

    log "update-initramfs, grub-install, update-grub in the libguestfs appliance"
    run_guestfish --rw <<EOF
add-drive $disk format:raw label:target
run
mount-options subvol=@ /dev/sda2 /
mount-options subvol=@home /dev/sda2 /home
mount /dev/sda1 /boot/efi
command "update-initramfs -c -k $kver"
command "grub-install --target=x86_64-efi --efi-directory=/boot/efi --removable --no-nvram"
command "update-grub"
$(gf_grub_cfg_as_sda /boot/grub/grub.cfg)
command "sh -c 'lsinitramfs /boot/initrd.img-$kver >/tmp/h2k-initramfs.txt'"
download /tmp/h2k-initramfs.txt $WORK/initramfs.list
rm /tmp/h2k-initramfs.txt
download /boot/grub/grub.cfg $WORK/grub.cfg
is-file /boot/efi/EFI/BOOT/BOOTX64.EFI
umount-all
EOF
    check_initramfs_list "$WORK/initramfs.list" "${D13_MODULES[@]}"
    grep -q "linux.*/vmlinuz-$kver root=/dev/sda2 ro rootflags=subvol=@ console=tty0 console=ttyS0,115200n8" \
        "$WORK/grub.cfg" || die "grub.cfg has no 'root=/dev/sda2 ro rootflags=subvol=@' kernel line"

    log "converting to VMDK (monolithicSparse)"
    to_vmdk "$disk" "$out/debian13-uefi-btrfs-netplan.vmdk"
    rm -f "$disk"
    write_facts "$out" debian13-uefi-btrfs-netplan 13 uefi h2k-deb13 "$kver" "$D13_MAC" \
        /etc/netplan/50-cloud-init.yaml \
        "$(json_strings "/dev/sda2 / btrfs defaults,subvol=@ 0 0" "/dev/sda2 /home btrfs defaults,subvol=@home 0 0" "UUID=${esp_uc:0:4}-${esp_uc:4:4} /boot/efi vfat umask=0077 0 1")" \
        "\"netplan\": \"$v_netplan\", \"bootloader\": {\"package\": \"grub-efi-amd64\", \"version\": \"$v_grub\"}, \"btrfs\": {\"uuid\": \"$fs_uuid\", \"subvolumes\": [\"@\", \"@home\"]}, \"initramfs\": {\"tool\": \"initramfs-tools\", \"modules_present\": $(json_strings "${D13_MODULES[@]}"), \"modules_absent\": $(json_strings virtio_blk virtio_pci virtio_scsi)}, \"expected_boot\": {\"sata-q35\": \"whole\", \"virtio-blk\": \"fail: initramfs-tools gives up waiting for the root device\"}"
}

# ---------------------------------------------------------------------------------------------
# Driver (the cache, lock and publish steps are lib.sh's ensure_fixture)
# ---------------------------------------------------------------------------------------------

build_one() { # NAME OUTDIR
    case $1 in
        debian11-bios-xfs-nm) SUITE=bullseye build_debian11_bios_xfs_nm "$2" ;;
        debian13-uefi-btrfs-netplan) SUITE=trixie build_debian13_uefi_btrfs_netplan "$2" ;;
    esac
}

main() {
    [ $# -eq 1 ] || usage
    local names=()
    case $1 in
        all) names=("${ALL_GUESTS[@]}") ;;
        debian11-bios-xfs-nm | debian13-uefi-btrfs-netplan) names=("$1") ;;
        -h | --help) usage ;;
        *) log "unknown guest '$1'"; usage ;;
    esac
    KEY=$(builder_key)
    CACHE_ROOT=$(mkdir -p "$CACHE_ROOT" && cd "$CACHE_ROOT" && pwd -P)
    local n
    for n in "${names[@]}"; do
        ensure_fixture "$n" mkfs.xfs:xfsprogs mkfs.btrfs:btrfs-progs losetup:mount
    done
}

main "$@"
