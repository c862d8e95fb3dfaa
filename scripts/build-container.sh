#!/usr/bin/env bash
# build-container.sh [DEB] — the h2k-guest container image, built offline: a Debian 12 root made
# with debootstrap (minbase) plus the runtime packages the .deb depends on, the .deb installed in
# it with the root's own dpkg, cleaned, and imported with `podman import` as
# localhost/h2k-guest:VERSION (ENTRYPOINT /usr/bin/h2k-guest). No registry is contacted: the
# packages come from the Debian mirror, the image from a tar. Prints the image name as the last
# stdout line; progress goes to stderr.
#
#   bash scripts/build-container.sh                       builds the .deb first (scripts/build-deb.sh)
#   bash scripts/build-container.sh target/debian/h2k-guest_0.1.0-1_amd64.deb
#
# Run it (no /dev/kvm: drop --device; see README "Container" for why each flag is there):
#   podman run --rm --runtime runc --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
#       --network none --device /dev/kvm -v /vms:/in:ro -v /out:/out \
#       localhost/h2k-guest:0.1.0 fix /in/vm.vmdk -o /out/vm.qcow2
#
# Cached (never required): the debootstrap tree as a tar, shared with the fixture builders
# (${CACHE_ROOT}/debootstrap/, the same minbase include list), and the root with the runtime
# packages installed in ${CACHE_ROOT}/container/KEY/runtime-root.tar, KEY hashing this script,
# scripts/fixtures/lib.sh and the package list (so a new Depends in Cargo.toml makes a new root).
# A build with the cache only unpacks that tar, installs the .deb and imports.
#
# Needs root (debootstrap, chroot, mount), debootstrap, podman, dpkg-deb, a Debian mirror.
# Environment: H2K_CACHE_DIR, H2K_DEBIAN_MIRROR, H2K_DEBIAN_SECURITY (as make-fixture.sh),
#   H2K_IMAGE   image name without the tag (default localhost/h2k-guest)
set -euo pipefail
shopt -s nullglob

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
SCRIPTS_DIR=$(dirname "$SCRIPT_PATH")
REPO=$(dirname "$SCRIPTS_DIR")
CACHE_ROOT=${H2K_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/h2k-guest}
MIRROR=${H2K_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${H2K_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
IMAGE=${H2K_IMAGE:-localhost/h2k-guest}
SUITE=bookworm
# The fixtures' minbase include list (make-fixture.sh), so both share one cached debootstrap
# tar; libguestfs0 needs most of it anyway (systemd-sysv, udev, kmod, isc-dhcp-client, iproute2).
BASE_INCLUDE=systemd-sysv,udev,kmod,ifupdown,isc-dhcp-client,iproute2,netbase,procps,ca-certificates
BASE_FORMAT=1

exec 3>&1 1>&2
LOG_NAME=build-container
CACHE_KIND=container
# shellcheck source=fixtures/lib.sh
. "$SCRIPTS_DIR/fixtures/lib.sh"

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mount)"
for t in debootstrap:debootstrap podman:podman dpkg-deb:dpkg tar:tar flock:util-linux; do
    command -v "${t%%:*}" >/dev/null || die "missing ${t%%:*} (package ${t#*:}; scripts/setup.sh installs it)"
done

deb=${1:-}
if [ -z "$deb" ]; then
    deb=$(bash "$SCRIPTS_DIR/build-deb.sh" | tail -n 1)
fi
[ -f "$deb" ] || die "$deb: no such .deb"
deb=$(readlink -f "$deb")
[ "$(dpkg-deb -f "$deb" Package)" = h2k-guest ] || die "$deb: not an h2k-guest package"
version=$(dpkg-deb -f "$deb" Version)
tag=$IMAGE:${version%-*}

# The runtime packages: each Depends entry's first alternative, without its version (apt picks
# the suite's; dpkg checks the versions when the .deb goes in).
mapfile -t runtime < <(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/[[:space:]]//g' |
    grep -v '^$' | LC_ALL=C sort -u)
[ ${#runtime[@]} -gt 0 ] || die "$deb has no Depends"
KEY=$({
    sha256sum <"$SCRIPT_PATH"
    sha256sum <"$SCRIPTS_DIR/fixtures/lib.sh"
    printf '%s|%s|%s\n' "$SUITE" "$MIRROR" "${runtime[*]}"
} | sha256sum | cut -c1-16)
cache=$CACHE_ROOT/container/$KEY
BUILD_START=$(date +%s)

mkdir -p "$CACHE_ROOT/container" "$CACHE_ROOT/tmp/container"
# One build at a time (the apt archive and the cached tars are shared).
exec 9>"$CACHE_ROOT/container/.build.lock"
flock -n 9 || { log "another build holds $CACHE_ROOT/container/.build.lock; waiting"; flock 9; }
sweep_stale_work
WORK=$(mktemp -d "$CACHE_ROOT/tmp/container/root.XXXXXX")
root=$WORK/root
mkdir -p "$root"

# dpkg in the image: no documentation, man pages or translations (nobody reads them in a
# container: ~120 MB less to import), and while building, no fsync per file (the tree is
# thrown away if the build dies).
container_dpkg_config() { # ROOT
    local r=$1
    cat >"$r/etc/dpkg/dpkg.cfg.d/h2k-container-excludes" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
EOF
    echo force-unsafe-io >"$r/etc/dpkg/dpkg.cfg.d/h2k-build-unsafe-io"
    # What debootstrap already put there.
    find "$r/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/*
    find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
}

if [ -f "$cache/runtime-root.tar" ]; then
    log "unpacking the cached runtime root ($KEY)"
    tar --numeric-owner --xattrs --xattrs-include='*' -C "$root" -xpf "$cache/runtime-root.tar"
else
    make_base_tree "$root"
    container_dpkg_config "$root"
    prepare_chroot "$root"
    log "installing the runtime packages: ${runtime[*]}"
    # INITRD=No: the kernel is there for libguestfs's appliance (supermin reads /boot/vmlinuz
    # and /lib/modules); an initramfs of its own would be ~60 MB never used.
    CHROOT_ENV=INITRD=No apt_install "$root" "${runtime[@]}" >&2
    finish_chroot "$root"
    rm -rf "$cache"
    mkdir -p "$cache"
    tar --numeric-owner --xattrs --xattrs-include='*' -C "$root" -cf "$cache/runtime-root.tar.part" .
    mv -f "$cache/runtime-root.tar.part" "$cache/runtime-root.tar"
    # Roots of an older version of this script are never used again (~1 GB each).
    find "$CACHE_ROOT/container" -mindepth 1 -maxdepth 1 -type d ! -name "$KEY" -exec rm -rf {} +
    log "runtime root cached as $cache/runtime-root.tar ($(du -m "$cache/runtime-root.tar" | cut -f1) MiB)"
fi

log "installing $(basename "$deb")"
cp "$deb" "$root/tmp/h2k-guest.deb"
chroot_mount "$root"
if ! in_chroot "$root" dpkg -i /tmp/h2k-guest.deb >&2; then
    # A Depends the cached root lacks (or a newer version): fetch it, then configure.
    log "dpkg -i left dependencies unmet; apt-get -f install"
    chroot_umount_all
    prepare_chroot "$root"
    CHROOT_ENV=INITRD=No in_chroot "$root" apt-get -f install -y -q --no-install-recommends \
        -o APT::Sandbox::User=root >&2
fi
in_chroot "$root" dpkg-query -W -f='${Status}\n' h2k-guest | grep -qx 'install ok installed' ||
    die "h2k-guest is not installed in the root"
in_chroot "$root" /usr/bin/h2k-guest --version >&2
finish_chroot "$root"
rm -f "$root/etc/dpkg/dpkg.cfg.d/h2k-build-unsafe-io" "$root/tmp/h2k-guest.deb" "$root"/boot/initrd.img* "$root"/var/cache/debconf/*-old \
    "$root"/var/log/apt/* "$root"/var/log/dpkg.log "$root"/var/log/alternatives.log
find "$root/var/cache/apt/archives" -name '*.deb' -delete

log "podman import as $tag"
old=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
tar --numeric-owner --xattrs --xattrs-include='*' -C "$root" -cf - . |
    podman import \
        --change 'ENTRYPOINT ["/usr/bin/h2k-guest"]' \
        --change 'CMD ["--help"]' \
        --change 'ENV LIBGUESTFS_BACKEND=direct' \
        --change 'ENV LIBGUESTFS_CACHEDIR=/var/tmp' \
        --change 'WORKDIR /' \
        --change "LABEL org.opencontainers.image.version=$version" \
        --change 'LABEL org.opencontainers.image.title=h2k-guest' \
        --message "h2k-guest $version from $(basename "$deb")" \
        - "$tag" >&2
new=$(podman image inspect --format '{{.Id}}' "$tag")
if [ -n "$old" ] && [ "$old" != "$new" ]; then
    podman image rm "$old" >/dev/null 2>&1 || log "the previous $tag ($old) is still in use; kept"
fi
log "built $tag ($(podman image inspect --format '{{.Size}}' "$tag" | awk '{printf "%d MiB", $1/1048576}')) in $(($(date +%s) - BUILD_START)) s"
echo "$tag" >&3
