#!/usr/bin/env bash
# make-layout.sh NAME|all — build a guest whose boot layout is not Debian's GRUB one, and print the
# absolute path of its VMDK as the last stdout line.
#
#   photon5-bios   Photon OS 5's boot layout on Debian packages, NOT Photon itself (Photon's
#   photon5-uefi   packages cannot be fetched here): Debian 12's kernel, GRUB, dracut, systemd and
#                  rpm laid out as Photon's installer and kernel package leave them. GPT (BIOS: a
#                  4 MiB BIOS boot partition, as the installer makes; UEFI: an ESP) and one ext4
#                  root; fstab by PARTUUID=; GRUB with its prefix in /boot/grub2 and the
#                  installer-style /boot/grub2/grub.cfg ("DO NOT OVERWRITE", load_env of
#                  /boot/photon.cfg, then user.cfg, then systemd.cfg or net.ifnames=0,
#                  root=PARTUUID=…); /boot/photon.cfg a symlink to /boot/linux-<ver>.cfg, a GRUB
#                  environment block (grub-editenv) with photon_linux, photon_initrd and
#                  photon_cmdline; on UEFI EFI/BOOT/bootx64.efi with a small ESP grub.cfg that
#                  chains to /boot/grub2. The kernel's driver list in
#                  /var/lib/initramfs/kernel/<ver> names VMware's drivers only, and the hostonly
#                  dracut image /boot/initrd.img-<ver> has no virtio; systemd-networkd DHCP on
#                  Name=e* (eth0 through net.ifnames=0); Photon's os-release and photon-release
#                  (Debian's /etc/debian_version is removed so that inspection does not call it
#                  Debian); an empty rpm database made with Debian's rpm.
#   debian13-uefi-systemd-boot
#                  Debian 13 booting with systemd-boot: GPT ESP at /boot/efi (where Debian's
#                  installer mounts it) holding bootctl's loader and kernel-install's BLS entry
#                  (loader/entries/*.conf, options from /etc/kernel/cmdline: root=/dev/sda2);
#                  ext4 root /dev/sda2, fstab by /dev/sda2 and the ESP by UUID; initramfs-tools
#                  MODULES=list without virtio; systemd-networkd DHCP on ens192.
#   all            the three, one path per line
#
# Controls: photon5-bios boots on pvscsi, photon5-uefi and debian13-uefi-systemd-boot on SATA with
# OVMF; all three fail on virtio. Cached under ${H2K_CACHE_DIR:-~/.cache/h2k-guest}/layouts/KEY/,
# KEY hashing this script and scripts/fixtures/lib.sh; NAME.json beside NAME.vmdk holds the facts.
# Needs what make-fixture.sh needs, plus mtools (mmd, mcopy) and grub-editenv (grub-common).
set -euo pipefail
shopt -s nullglob

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
SCRIPTS_DIR=$(dirname "$SCRIPT_PATH")
FIXTURES_SRC=$SCRIPTS_DIR/fixtures
CACHE_ROOT=${H2K_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/h2k-guest}
MIRROR=${H2K_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${H2K_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
ALL_LAYOUTS=(photon5-bios photon5-uefi debian13-uefi-systemd-boot)
BASE_INCLUDE=systemd-sysv,udev,kmod,iproute2,netbase,procps,ca-certificates,dbus
BASE_FORMAT=1

exec 3>&1 1>&2

LOG_NAME=make-layout
CACHE_KIND=layouts
# shellcheck source=fixtures/lib.sh
. "$FIXTURES_SRC/lib.sh"

usage() {
    cat >&2 <<EOF
usage: $0 NAME|all
  NAME is one of: ${ALL_LAYOUTS[*]}
Prints the absolute path of each image's VMDK on stdout (the last line is the last image).
EOF
    exit 2
}

builder_key() {
    sha256sum "$SCRIPT_PATH" "$FIXTURES_SRC/lib.sh" | sed 's|  .*/|  |' | sha256sum | cut -c1-16
}

new_uuid() { cat /proc/sys/kernel/random/uuid; }

# ---------------------------------------------------------------------------------------------
# photon5-bios, photon5-uefi
# ---------------------------------------------------------------------------------------------

# Disk: 2 GiB GPT. BIOS: p1 1..5 MiB BIOS boot, p2 5..2047 MiB root. UEFI: p1 1..101 MiB ESP
# (Photon's is 10 MiB; FAT32 needs more), p2 101..2047 MiB root. The last MiB: backup GPT.
PH_DISK_MIB=2048
PH_BIOS_BOOT_TYPE=21686148-6449-6E6F-744E-656564454649
# What the Photon VM had on VMware, and the root file system (the image is hostonly).
PH_DRIVER_LIST=(vmw_pvscsi mptspi mptsas ahci libahci ata_piix sd_mod vmxnet3)
PH_CHECK_MODULES=(vmw_pvscsi ahci sd_mod ext4)
# Photon's kernel command line (its linux.spec) without "quiet" and "loglevel=3", so that a boot
# test sees what the kernel and dracut say (with loglevel=3 dracut's "initqueue: timeout" never
# reaches the console and an unfixed boot on virtio was only known to fail at the 420 s
# timeout); the serial console for the test harness.
PH_CMDLINE="init=/lib/systemd/systemd ro console=tty0 console=ttyS0,115200n8"

# The installer's grub.cfg as mk-setup-grub.sh writes it for a /boot on the root file system,
# with the serial terminal in place of gfxterm and the theme (the test harness reads the serial
# console; Debian has no Photon theme).
write_photon_grub_cfg() { # FILE ROOT_FS_UUID ROOT_PARTUUID
    cat >"$1" <<EOF
# Begin /boot/grub2/grub.cfg

# Generated by Photon Installer
# DO NOT OVERWRITE THIS FILE USING 'grub2-mkconfig'
# UNLESS YOU ARE ABSOLUTELY SURE

set default=0
set timeout=2
search -n -u $2 -s

insmod ext2
insmod part_gpt

serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial

load_env -f /boot/photon.cfg

if [ -f /boot/user.cfg ]; then
  load_env -f /boot/user.cfg
fi

if [ -f /boot/systemd.cfg ]; then
  load_env -f /boot/systemd.cfg
else
  set systemd_cmdline=net.ifnames=0
fi

set rootpartition=PARTUUID=$3

menuentry "Photon" {
  linux /boot/\$photon_linux root=\$rootpartition \$photon_cmdline \$systemd_cmdline \$user_cmdline

  if [ -f /boot/\$photon_initrd ]; then
    initrd /boot/\$photon_initrd
  fi
}

# End /boot/grub2/grub.cfg
EOF
    chmod 600 "$1"
}

write_photon_release() { # ROOT
    local r=$1
    rm -f "$r/etc/os-release" "$r/etc/debian_version"
    cat >"$r/usr/lib/os-release" <<'EOF'
NAME="VMware Photon OS"
VERSION="5.0"
ID=photon
VERSION_ID=5.0
PRETTY_NAME="VMware Photon OS/Linux"
ANSI_COLOR="1;34"
HOME_URL="https://vmware.github.io/photon/"
BUG_REPORT_URL="https://github.com/vmware/photon/issues"
EOF
    cp "$r/usr/lib/os-release" "$r/etc/os-release"
    cat >"$r/etc/photon-release" <<'EOF'
VMware Photon OS 5.0
PHOTON_BUILD_NUMBER=dde71ec57
EOF
    cat >"$r/etc/lsb-release" <<'EOF'
DISTRIB_ID="VMware Photon OS"
DISTRIB_RELEASE="5.0"
DISTRIB_CODENAME=Photon
DISTRIB_DESCRIPTION="VMware Photon OS 5.0"
EOF
}

build_photon5() { # OUTDIR NAME FIRMWARE MAC
    local out=$1 name=$2 fw=$3 mac=$4 r=$WORK/root kver
    local root_fs_uuid root_partuuid esp_partuuid disk_guid esp_id
    root_fs_uuid=$(new_uuid)
    root_partuuid=$(new_uuid)
    esp_partuuid=$(new_uuid)
    disk_guid=$(new_uuid)
    esp_id=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
    local p1_mib p2_start p2_mib grub_pkg grub_target
    if [ "$fw" = bios ]; then
        p1_mib=4 grub_pkg=grub-pc-bin grub_target=i386-pc
    else
        p1_mib=100 grub_pkg=grub-efi-amd64-bin grub_target=x86_64-efi
    fi
    p2_start=$((1 + p1_mib))
    p2_mib=$((PH_DISK_MIB - 1 - p2_start))

    make_base_tree "$r"
    prepare_chroot "$r"
    # dracut before the kernel, so that it (not initramfs-tools) is the kernel's initramfs tool.
    # GRUB's image and modules only (the -bin package): Photon has no update-grub, and its
    # grub.cfg is the installer's.
    log "installing packages (dracut, $grub_pkg, rpm)"
    apt_install "$r" dracut "$grub_pkg" rpm >&2
    if in_chroot "$r" dpkg-query -W -f='${Status}' initramfs-tools 2>/dev/null | grep -q 'install ok installed'; then
        die "initramfs-tools got installed next to dracut"
    fi
    # Hostonly, as Photon's mkinitrd builds it on the VMware VM. The host seen here is the
    # libguestfs appliance (virtio-scsi), so every virtio driver and dracut's qemu modules are
    # left out explicitly; ext4 is named because hostonly detection of / is all it has.
    cat >"$r/etc/dracut.conf.d/10-h2k-vmware.conf" <<'EOF'
hostonly="yes"
hostonly_cmdline="no"
add_drivers+=" ext4 "
omit_dracutmodules+=" qemu qemu-net virtiofs "
omit_drivers+=" virtio.* "
EOF
    # Photon's installer also writes noacl; Debian's kernel refuses it when systemd-remount-fs
    # remounts / (measured: / stays read-only, systemd-logind fails), so it is left out here.
    {
        echo "#system	mnt-pt	type	options	dump	fsck"
        echo "PARTUUID=$root_partuuid	/	ext4	defaults,barrier,noatime,data=ordered	1	1"
        if [ "$fw" = uefi ]; then
            echo "PARTUUID=$esp_partuuid	/boot/efi	vfat	defaults	1	2"
        fi
    } >"$r/etc/fstab"
    configure_identity "$r" photon-h2k
    mkdir -p "$r/etc/systemd/network"
    cat >"$r/etc/systemd/network/99-dhcp-en.network" <<'EOF'
[Match]
Name=e*

[Network]
DHCP=yes
IPv6AcceptRA=no
EOF
    in_chroot "$r" systemctl enable systemd-networkd.service >&2

    log "installing linux-image-amd64 (initramfs deferred to the appliance)"
    CHROOT_ENV="INITRD=No" apt_install "$r" linux-image-amd64 >&2
    kver=$(kernel_version "$r")
    # Debian's linux-base links /vmlinuz and /initrd.img at the top; Photon has no such links.
    rm -f "$r/vmlinuz" "$r/vmlinuz.old" "$r/initrd.img" "$r/initrd.img.old"
    echo "do_symlinks = no" >"$r/etc/kernel-img.conf"

    # What Photon's linux package leaves: the kernel's env block, photon.cfg linked to it, and
    # its registration for mkinitrd (the words dracut gets, read as xargs reads them).
    log "Photon boot files: env blocks, driver list, grub.cfg"
    in_chroot "$r" grub-editenv "/boot/linux-$kver.cfg" create
    in_chroot "$r" grub-editenv "/boot/linux-$kver.cfg" set "photon_cmdline=$PH_CMDLINE" \
        "photon_linux=vmlinuz-$kver" "photon_initrd=initrd.img-$kver"
    ln -s "linux-$kver.cfg" "$r/boot/photon.cfg"
    # The installer copies a user.cfg (an env block for user_cmdline) with umask 077.
    in_chroot "$r" grub-editenv /boot/user.cfg create
    chmod 600 "$r/boot/user.cfg"
    mkdir -p "$r/var/lib/initramfs/kernel"
    printf -- '--add-drivers "%s"\n' "${PH_DRIVER_LIST[*]}" >"$r/var/lib/initramfs/kernel/$kver"
    in_chroot "$r" grub-editenv /boot/photon.cfg list >"$WORK/photon.env"
    grep -qxF "photon_linux=vmlinuz-$kver" "$WORK/photon.env" &&
        grep -qxF "photon_cmdline=$PH_CMDLINE" "$WORK/photon.env" ||
        die "photon.cfg env block is not as written: $(cat "$WORK/photon.env")"
    [ "$(stat -c %s "$r/boot/linux-$kver.cfg")" = 1024 ] || die "linux-$kver.cfg is not a 1 KiB env block"

    # GRUB with its prefix in /boot/grub2 (Photon's grub2 names its directory so): the modules
    # there, an image whose embedded config finds the root file system and points the prefix at it.
    mkdir -p "$r/boot/grub2/$grub_target"
    cp "$r/usr/lib/grub/$grub_target"/*.mod "$r/usr/lib/grub/$grub_target"/*.lst \
        "$r/boot/grub2/$grub_target/"
    write_photon_grub_cfg "$r/boot/grub2/grub.cfg" "$root_fs_uuid" "$root_partuuid"
    cp "$r/boot/grub2/grub.cfg" "$WORK/grub.cfg.written"
    printf 'search.fs_uuid %s root\nset prefix=($root)/boot/grub2\n' "$root_fs_uuid" \
        >"$r/tmp/h2k-early.cfg"
    if [ "$fw" = bios ]; then
        cp "$r/usr/lib/grub/i386-pc/boot.img" "$r/boot/grub2/i386-pc/"
        in_chroot "$r" grub-mkimage -O i386-pc -o /boot/grub2/i386-pc/core.img \
            -c /tmp/h2k-early.cfg -p /boot/grub2 biosdisk part_gpt ext2 search_fs_uuid
    else
        # The firmware's removable-path entry, prefix on the ESP: it reads the ESP's grub.cfg,
        # which chains to /boot/grub2 on the root file system as Photon's does.
        in_chroot "$r" grub-mkimage -O x86_64-efi -o /tmp/bootx64.efi -p /EFI/BOOT \
            part_gpt fat ext2 normal configfile search search_fs_uuid linux loadenv test echo \
            serial terminal efi_gop all_video
        mv "$r/tmp/bootx64.efi" "$WORK/bootx64.efi"
        cat >"$WORK/esp-grub.cfg" <<EOF
search -n -u $root_fs_uuid -s
set prefix=(\$root)/boot/grub2
configfile /boot/grub2/grub.cfg
EOF
    fi
    rm -f "$r/tmp/h2k-early.cfg"
    # An rpm database where Photon keeps it, made by Debian's rpm (whose default is ~/.rpmdb:
    # the macro makes the guest's rpm use it too).
    mkdir -p "$r/etc/rpm" "$r/var/lib/rpm"
    echo "%_dbpath /var/lib/rpm" >"$r/etc/rpm/macros"
    in_chroot "$r" rpm --initdb --dbpath /var/lib/rpm
    local v_dracut v_grub v_rpm
    v_dracut=$(pkg_version "$r" dracut)
    v_grub=$(pkg_version "$r" "$grub_pkg")
    v_rpm=$(pkg_version "$r" rpm)
    write_photon_release "$r"
    if [ "$fw" = uefi ]; then
        mkdir -p "$r/boot/efi"
    fi
    finish_chroot "$r"

    log "making file-system images"
    mkfs_ext4_from_dir "$WORK/root.img" "$p2_mib" "$r" "$root_fs_uuid"
    rm -rf "$r"
    local disk=$WORK/disk.raw
    truncate -s "$((PH_DISK_MIB * MIB))" "$disk"
    if [ "$fw" = bios ]; then
        sfdisk -q "$disk" <<EOF
label: gpt
label-id: $disk_guid
unit: sectors
start=2048, size=$((p1_mib * 2048)), type=$PH_BIOS_BOOT_TYPE, uuid=$(new_uuid)
start=$((p2_start * 2048)), size=$((p2_mib * 2048)), type=L, uuid=$root_partuuid
EOF
    else
        truncate -s "$((p1_mib * MIB))" "$WORK/esp.img"
        mkfs.vfat -F 32 -S 512 -s 1 -i "$esp_id" -n EFI "$WORK/esp.img" >/dev/null
        mmd -i "$WORK/esp.img" ::/EFI ::/EFI/BOOT
        mcopy -i "$WORK/esp.img" "$WORK/bootx64.efi" ::/EFI/BOOT/bootx64.efi
        mcopy -i "$WORK/esp.img" "$WORK/esp-grub.cfg" ::/EFI/BOOT/grub.cfg
        sfdisk -q "$disk" <<EOF
label: gpt
label-id: $disk_guid
unit: sectors
start=2048, size=$((p1_mib * 2048)), type=U, uuid=$esp_partuuid, name="EFI System Partition"
start=$((p2_start * 2048)), size=$((p2_mib * 2048)), type=L, uuid=$root_partuuid
EOF
        put_image "$disk" "$WORK/esp.img" 1
        rm -f "$WORK/esp.img"
    fi
    put_image "$disk" "$WORK/root.img" "$p2_start"
    rm -f "$WORK/root.img"

    # In the appliance: the dracut image as Photon's mkinitrd makes it (the driver list's words
    # as arguments), then GRUB's boot sector on BIOS.
    log "dracut (and grub-bios-setup on BIOS) in the libguestfs appliance"
    local setup="" esp_checks=""
    if [ "$fw" = bios ]; then
        setup="sh \"/usr/lib/grub/i386-pc/grub-bios-setup -d /boot/grub2/i386-pc $GF_DISK\""
    else
        esp_checks="mount /dev/sda1 /boot/efi
is-file /boot/efi/EFI/BOOT/BOOTX64.EFI
download /boot/efi/EFI/BOOT/grub.cfg $WORK/esp-grub.cfg.read"
    fi
    run_guestfish --rw <<EOF
add-drive $disk format:raw label:target
run
mount /dev/sda2 /
sh "xargs -a /var/lib/initramfs/kernel/$kver dracut --force --kver $kver /boot/initrd.img-$kver"
$setup
sh "lsinitrd /boot/initrd.img-$kver >/tmp/h2k-lsinitrd.txt"
download /tmp/h2k-lsinitrd.txt $WORK/initramfs.list
rm /tmp/h2k-lsinitrd.txt
download /boot/grub2/grub.cfg $WORK/grub.cfg
is-symlink /boot/photon.cfg
download /boot/photon.cfg $WORK/photon.cfg
sh "ls /var/lib/rpm >/tmp/h2k-rpmdb.txt"
download /tmp/h2k-rpmdb.txt $WORK/rpmdb.list
rm /tmp/h2k-rpmdb.txt
$esp_checks
umount-all
EOF
    # The env block as GRUB will read it, checked with the host's grub-editenv.
    [ "$(stat -c %s "$WORK/photon.cfg")" = 1024 ] || die "photon.cfg on the disk is not a 1 KiB env block"
    grub-editenv "$WORK/photon.cfg" list | grep -qxF "photon_initrd=initrd.img-$kver" ||
        die "photon.cfg on the disk lacks photon_initrd=initrd.img-$kver"
    log "photon.cfg: $(grub-editenv "$WORK/photon.cfg" list | tr '\n' ';')"
    [ -s "$WORK/rpmdb.list" ] || die "no rpm database in /var/lib/rpm"
    log "rpm database: $(tr '\n' ' ' <"$WORK/rpmdb.list")"
    if [ "$fw" = uefi ]; then
        cmp -s "$WORK/esp-grub.cfg.read" "$WORK/esp-grub.cfg" || die "the ESP's grub.cfg is not the one written"
    fi
    check_initramfs_list "$WORK/initramfs.list" "${PH_CHECK_MODULES[@]}"
    cmp -s "$WORK/grub.cfg" "$WORK/grub.cfg.written" || die "/boot/grub2/grub.cfg changed in the appliance"
    if [ "$fw" = bios ]; then
        # GRUB's boot sector has "GRUB" in it; the BIOS boot partition holds the core image.
        dd if="$disk" bs=512 count=1 status=none | grep -aq GRUB || die "no GRUB boot sector"
        [ "$(dd if="$disk" bs=1M skip=1 count=1 status=none | tr -d '\0' | head -c 1 | wc -c)" = 1 ] ||
            die "the BIOS boot partition is empty (no core image)"
    fi

    log "converting to VMDK (monolithicSparse)"
    to_vmdk "$disk" "$out/$name.vmdk"
    rm -f "$disk"
    local fstab boot_json boot_expect
    if [ "$fw" = bios ]; then
        fstab=$(json_strings "PARTUUID=$root_partuuid / ext4 defaults,barrier,noatime,data=ordered 1 1")
        boot_json="\"target\": \"i386-pc\", \"core_image\": \"BIOS boot partition (/dev/sda1, 4 MiB), prefix (search.fs_uuid $root_fs_uuid)/boot/grub2\""
        boot_expect="\"pvscsi\": \"whole\""
    else
        fstab=$(json_strings "PARTUUID=$root_partuuid / ext4 defaults,barrier,noatime,data=ordered 1 1" "PARTUUID=$esp_partuuid /boot/efi vfat defaults 1 2")
        boot_json="\"target\": \"x86_64-efi\", \"installed_to\": \"/boot/efi/EFI/BOOT/bootx64.efi (removable path, no NVRAM entry)\", \"esp_grub_cfg\": \"/boot/efi/EFI/BOOT/grub.cfg (chains to /boot/grub2/grub.cfg)\""
        boot_expect="\"sata-q35\": \"whole\""
    fi
    cat >"$out/$name.json" <<EOF
{
  "name": "$name",
  "builder_key": "$KEY",
  "vmdk": "$name.vmdk",
  "distro": "photon",
  "version": "5.0",
  "what": "Photon OS 5's boot layout on Debian $SUITE packages, not Photon itself",
  "suite": "$SUITE",
  "arch": "x86_64",
  "firmware": "$fw",
  "hostname": "photon-h2k",
  "root_password": "h2k",
  "kernel_version": "$kver",
  "kernel_flavour": "linux",
  "root": {"fstype": "ext4", "partition": "/dev/sda2", "partuuid": "$root_partuuid", "uuid": "$root_fs_uuid"},
  "disk_guid": "$disk_guid",
  "fstab": $fstab,
  "bootloader": {"package": "$grub_pkg", "version": "$v_grub", "config": "/boot/grub2/grub.cfg", "installer_written": true, $boot_json},
  "photon_cfg": {"path": "/boot/photon.cfg", "link_target": "linux-$kver.cfg", "photon_linux": "vmlinuz-$kver", "photon_initrd": "initrd.img-$kver", "photon_cmdline": "$PH_CMDLINE"},
  "user_cfg": "/boot/user.cfg (empty env block)",
  "kernel_cmdline": "root=PARTUUID=$root_partuuid $PH_CMDLINE net.ifnames=0",
  "driver_list": {"path": "/var/lib/initramfs/kernel/$kver", "drivers": $(json_strings "${PH_DRIVER_LIST[@]}")},
  "initramfs": {"tool": "dracut", "version": "$v_dracut", "path": "/boot/initrd.img-$kver", "config": "/etc/dracut.conf.d/10-h2k-vmware.conf", "hostonly": true, "modules_present": $(json_strings "${PH_CHECK_MODULES[@]}"), "modules_absent": $(json_strings virtio_blk virtio_pci virtio_scsi)},
  "network": {"interface": "eth0", "mac": "$mac", "config": "/etc/systemd/network/99-dhcp-en.network", "renderer": "systemd-networkd"},
  "rpm": {"package": "rpm", "version": "$v_rpm", "database": "/var/lib/rpm (rpm --initdb, no packages)"},
  "serial_console": "ttyS0",
  "expected_boot": {$boot_expect, "virtio-blk": "fail: no virtio drivers in the dracut image, dracut times out waiting for PARTUUID=$root_partuuid"},
  "build_seconds": $(($(date +%s) - BUILD_START)),
  "built_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
EOF
}

# ---------------------------------------------------------------------------------------------
# debian13-uefi-systemd-boot
# ---------------------------------------------------------------------------------------------

# Disk: 2 GiB GPT. p1 1..257 MiB ESP (kernels and initramfs images live there with
# systemd-boot), p2 257..2047 MiB ext4 root.
SB_DISK_MIB=2048
SB_P1_START=1 SB_P1_MIB=256
SB_P2_START=257 SB_P2_MIB=1790
SB_MAC=00:50:56:8a:1b:51
SB_MODULES=(ahci libahci sd_mod ext4)
SB_CMDLINE="root=/dev/sda2 ro console=tty0 console=ttyS0,115200n8"
SB_TOKEN=debian

build_debian13_uefi_systemd_boot() { # OUTDIR
    local out=$1 name=debian13-uefi-systemd-boot r=$WORK/root kver root_uuid esp_id
    root_uuid=$(new_uuid)
    esp_id=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
    local esp_uc=${esp_id^^}
    local esp_fs_uuid=${esp_uc:0:4}-${esp_uc:4:4}

    make_base_tree "$r"
    prepare_chroot "$r"
    log "installing packages (initramfs-tools, systemd-boot)"
    apt_install "$r" initramfs-tools zstd systemd-boot dosfstools >&2
    # initramfs-tools as the VMware guest had it: MODULES=list, no virtio.
    sed -i 's/^MODULES=.*/MODULES=list/' "$r/etc/initramfs-tools/initramfs.conf"
    {
        echo "# Storage drivers of the VMware virtual machine this guest was installed on."
        printf '%s\n' "${SB_MODULES[@]}"
    } >>"$r/etc/initramfs-tools/modules"
    echo "RESUME=none" >"$r/etc/initramfs-tools/conf.d/resume"
    # kernel-install's command line and entry token (the build's machine-id is emptied).
    mkdir -p "$r/etc/kernel"
    echo "$SB_CMDLINE" >"$r/etc/kernel/cmdline"
    echo "$SB_TOKEN" >"$r/etc/kernel/entry-token"
    cat >"$r/etc/fstab" <<EOF
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
/dev/sda2       /               ext4    errors=remount-ro 0     1
UUID=$esp_fs_uuid  /boot/efi    vfat    umask=0077      0       1
EOF
    configure_identity "$r" h2k-deb13-sdboot
    mkdir -p "$r/etc/systemd/network"
    cat >"$r/etc/systemd/network/10-ens192.network" <<'EOF'
[Match]
Name=ens192

[Network]
DHCP=yes
EOF
    in_chroot "$r" systemctl enable systemd-networkd.service >&2

    log "installing linux-image-amd64 (initramfs and boot entry deferred to the appliance)"
    CHROOT_ENV="INITRD=No" apt_install "$r" linux-image-amd64 >&2
    kver=$(kernel_version "$r")
    local v_sdboot
    v_sdboot=$(pkg_version "$r" systemd-boot)
    mkdir -p "$r/boot/efi"
    # Nothing the chroot's hooks may have put on the (not mounted) ESP directory stays.
    rm -rf "${r:?}/boot/efi"/*
    finish_chroot "$r"

    log "making file-system images"
    mkfs_ext4_from_dir "$WORK/root.img" "$SB_P2_MIB" "$r" "$root_uuid"
    rm -rf "$r"
    truncate -s "$((SB_P1_MIB * MIB))" "$WORK/esp.img"
    mkfs.vfat -F 32 -S 512 -s 1 -i "$esp_id" -n EFI "$WORK/esp.img" >/dev/null

    log "assembling the GPT disk"
    local disk=$WORK/disk.raw
    truncate -s "$((SB_DISK_MIB * MIB))" "$disk"
    sfdisk -q "$disk" <<EOF
label: gpt
unit: sectors
start=$((SB_P1_START * 2048)), size=$((SB_P1_MIB * 2048)), type=U, name="EFI System Partition"
start=$((SB_P2_START * 2048)), size=$((SB_P2_MIB * 2048)), type=L
EOF
    put_image "$disk" "$WORK/esp.img" "$SB_P1_START"
    put_image "$disk" "$WORK/root.img" "$SB_P2_START"
    rm -f "$WORK/esp.img" "$WORK/root.img"

    # bootctl and kernel-install check that the ESP is one through udev, which the appliance's
    # chroot lacks: SYSTEMD_RELAX_ESP_CHECKS lets them take the mounted vfat as it is.
    log "bootctl install, update-initramfs, kernel-install in the libguestfs appliance"
    local relax="SYSTEMD_RELAX_ESP_CHECKS=1"
    run_guestfish --rw <<EOF
add-drive $disk format:raw label:target
run
mount /dev/sda2 /
mount /dev/sda1 /boot/efi
sh "$relax bootctl install --no-variables --esp-path=/boot/efi"
sh "$relax update-initramfs -c -k $kver"
sh "$relax kernel-install add $kver /boot/vmlinuz-$kver /boot/initrd.img-$kver"
sh "lsinitramfs /boot/initrd.img-$kver >/tmp/h2k-initramfs.txt"
download /tmp/h2k-initramfs.txt $WORK/initramfs.list
sh "$relax bootctl --esp-path=/boot/efi --no-variables list >/tmp/h2k-bootctl.txt 2>&1 || true"
download /tmp/h2k-bootctl.txt $WORK/bootctl.list
sh "cat /boot/efi/loader/entries/*.conf >/tmp/h2k-entries.txt"
download /tmp/h2k-entries.txt $WORK/entries.txt
sh "find /boot/efi -type f >/tmp/h2k-esp.txt"
download /tmp/h2k-esp.txt $WORK/esp.list
is-file /boot/efi/EFI/BOOT/BOOTX64.EFI
is-file /boot/efi/EFI/systemd/systemd-bootx64.efi
umount-all
EOF
    check_initramfs_list "$WORK/initramfs.list" "${SB_MODULES[@]}"
    log "ESP files: $(tr '\n' ' ' <"$WORK/esp.list")"
    log "bootctl list: $(tr '\n' ' ' <"$WORK/bootctl.list" | tr -s ' ')"
    grep -q "^options.*$SB_CMDLINE" "$WORK/entries.txt" ||
        die "no BLS entry with 'options $SB_CMDLINE': $(cat "$WORK/entries.txt")"
    grep -q "^linux.*/$SB_TOKEN/$kver/linux" "$WORK/entries.txt" ||
        die "the BLS entry's linux is not /$SB_TOKEN/$kver/linux: $(cat "$WORK/entries.txt")"
    local entry
    entry=$(grep -o "^/boot/efi/loader/entries/[^ ]*\.conf$" "$WORK/esp.list" | head -1)
    [ -n "$entry" ] || die "no loader/entries/*.conf on the ESP"

    log "converting to VMDK (monolithicSparse)"
    to_vmdk "$disk" "$out/$name.vmdk"
    rm -f "$disk"
    cat >"$out/$name.json" <<EOF
{
  "name": "$name",
  "builder_key": "$KEY",
  "vmdk": "$name.vmdk",
  "distro": "debian",
  "version": "13",
  "suite": "$SUITE",
  "arch": "x86_64",
  "firmware": "uefi",
  "hostname": "h2k-deb13-sdboot",
  "root_password": "h2k",
  "kernel_version": "$kver",
  "kernel_cmdline": "$SB_CMDLINE",
  "root": {"fstype": "ext4", "device": "/dev/sda2", "uuid": "$root_uuid"},
  "esp": {"device": "/dev/sda1", "mount": "/boot/efi", "uuid": "$esp_fs_uuid"},
  "fstab": $(json_strings "/dev/sda2 / ext4 errors=remount-ro 0 1" "UUID=$esp_fs_uuid /boot/efi vfat umask=0077 0 1"),
  "bootloader": {"package": "systemd-boot", "version": "$v_sdboot", "installed_to": $(json_strings /boot/efi/EFI/systemd/systemd-bootx64.efi /boot/efi/EFI/BOOT/BOOTX64.EFI), "nvram": false, "entry": "${entry#/boot/efi}", "entry_token": "$SB_TOKEN", "cmdline_source": "/etc/kernel/cmdline"},
  "initramfs": {"tool": "initramfs-tools", "modules_present": $(json_strings "${SB_MODULES[@]}"), "modules_absent": $(json_strings virtio_blk virtio_pci virtio_scsi)},
  "network": {"interface": "ens192", "mac": "$SB_MAC", "config": "/etc/systemd/network/10-ens192.network", "renderer": "systemd-networkd"},
  "serial_console": "ttyS0",
  "expected_boot": {"sata-q35": "whole", "virtio-blk": "fail: initramfs-tools gives up waiting for /dev/sda2"},
  "build_seconds": $(($(date +%s) - BUILD_START)),
  "built_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
EOF
}

# ---------------------------------------------------------------------------------------------
# Driver (the cache, lock and publish steps are lib.sh's ensure_fixture)
# ---------------------------------------------------------------------------------------------

build_one() { # NAME OUTDIR
    case $1 in
        photon5-bios) SUITE=bookworm build_photon5 "$2" photon5-bios bios 00:50:56:8a:1b:41 ;;
        photon5-uefi) SUITE=bookworm build_photon5 "$2" photon5-uefi uefi 00:50:56:8a:1b:42 ;;
        debian13-uefi-systemd-boot) SUITE=trixie build_debian13_uefi_systemd_boot "$2" ;;
    esac
}

main() {
    [ $# -eq 1 ] || usage
    local names=()
    case $1 in
        all) names=("${ALL_LAYOUTS[@]}") ;;
        photon5-bios | photon5-uefi | debian13-uefi-systemd-boot) names=("$1") ;;
        -h | --help) usage ;;
        *) log "unknown image '$1'"; usage ;;
    esac
    KEY=$(builder_key)
    CACHE_ROOT=$(mkdir -p "$CACHE_ROOT" && cd "$CACHE_ROOT" && pwd -P)
    local n
    for n in "${names[@]}"; do
        ensure_fixture "$n" mcopy:mtools mmd:mtools grub-editenv:grub-common
    done
}

main "$@"
