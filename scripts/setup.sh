#!/usr/bin/env bash
# Install every system package h2k-guest and its tests need on a fresh Debian 12 (bookworm)
# machine, then check that a libguestfs appliance launches. Idempotent: a second run only checks.
set -euo pipefail

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup.sh: installing system packages needs root (run it with sudo)" >&2
        exit 1
    fi
}

# qemu-utils on these machines comes from bookworm-backports (10.x); qemu-system-x86 from plain
# bookworm depends on the older qemu and conflicts with it, so it must come from backports too.
BACKPORTS_LIST=/etc/apt/sources.list.d/h2k-bookworm-backports.list
PACKAGES=(
    libguestfs-dev libguestfs-tools libguestfs0 guestfs-tools
    linux-image-amd64 libclang-dev clang pkg-config
    ovmf debootstrap dosfstools e2fsprogs xfsprogs btrfs-progs lvm2 parted gdisk fdisk util-linux zstd
    qemu-utils
    systemd
    python3-venv  # the venv of the Kubernetes schema validator (scripts/k8s-validate.sh, tests/kubernetes.rs)
    # man -l / man -w of the generated pages (tests/docs.rs, tests/deb.rs); pulls groff-base
    man-db
    # scripts/build-deb.sh: dpkg-shlibdeps fills the package's $auto Depends; strip (binutils)
    dpkg-dev binutils
    # scripts/build-container.sh imports the image, tests/container.rs runs it; runc because
    # crun refuses this machine's hybrid cgroup layout
    podman runc
    prometheus    # tests/metrics.rs: a real Prometheus server scrapes the daemon; promtool checks the textfile
    # tests/libvirt.rs, tests/ova.rs: a real libvirtd (no qemu downgrade: it takes the backports
    # qemu-system-x86; --no-install-recommends keeps dnsmasq, swtpm and the other drivers out),
    # virsh and virt-xml-validate, which needs xmllint
    libvirt-daemon-system libvirt-clients libxml2-utils
)
BACKPORT_PACKAGES=(qemu-system-x86 qemu-system-data qemu-system-common qemu-block-extra)

missing=()
for p in "${PACKAGES[@]}" "${BACKPORT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
    need_root
    export DEBIAN_FRONTEND=noninteractive
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "deb http://deb.debian.org/debian bookworm-backports main" >"$BACKPORTS_LIST"
    fi
    # Third-party sources that are unreachable here must not stop the install.
    apt-get update -q || echo "setup.sh: apt-get update reported errors; continuing" >&2
    apt-get install -y -q -t bookworm-backports "${BACKPORT_PACKAGES[@]}" qemu-utils
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
fi

# The appliance's kernel: libguestfs needs one in /boot, readable by the invoking user.
if ! ls /boot/vmlinuz-* >/dev/null 2>&1; then
    echo "setup.sh: no kernel in /boot even though linux-image-amd64 is installed" >&2
    exit 1
fi

# The offline Kubernetes schema validator (PyPI, pinned) for tests/kubernetes.rs.
bash "$(dirname "$0")/k8s-validate.sh" --install

if [ "${H2K_SETUP_SKIP_CHECK:-0}" != 1 ]; then
    echo "setup.sh: checking that a libguestfs appliance launches (TCG here: ~20 s)"
    start=$(date +%s)
    if ! LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg libguestfs-test-tool >/tmp/h2k-libguestfs-test-tool.log 2>&1; then
        echo "setup.sh: libguestfs-test-tool failed; see /tmp/h2k-libguestfs-test-tool.log" >&2
        tail -n 20 /tmp/h2k-libguestfs-test-tool.log >&2
        exit 1
    fi
    echo "setup.sh: appliance launched and shut down in $(( $(date +%s) - start )) s"
fi
