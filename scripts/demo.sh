#!/usr/bin/env bash
# The main job, end to end, on a guest this project builds itself:
#   1. install what is needed (scripts/setup.sh),
#   2. build a VMware-style Debian 12 BIOS guest (cached; scripts/make-fixture.sh),
#   3. show that it does NOT boot on virtio as exported (the control),
#   4. `h2k-guest fix --manifest` it into a qcow2,
#   5. boot the result on virtio (disk and NIC) and probe that it came up whole: every mount and
#      swap, no failed unit, no stall, its network on ens192 with the address DHCP gives.
# Work files go to ${H2K_DEMO_DIR:-/tmp/h2k-demo}.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --release --locked 2>&1 | tail -n 1
bin=$PWD/target/release/h2k-guest

fixture=$(bash scripts/make-fixture.sh debian12-bios | tail -n 1)
work=${H2K_DEMO_DIR:-/tmp/h2k-demo}
mkdir -p "$work"
rm -f "$work"/debian12-bios-kvm.qcow2 "$work"/debian12-bios-kvm.qcow2.report.json

cat >"$work/manifest.json" <<JSON
{
  "version": "1.0",
  "pipeline": {
    "load": { "source_type": "vmdk", "source_path": "$fixture" },
    "inspect": { "enabled": true, "detect_os": true },
    "fix": {
      "fstab": { "enabled": true, "mode": "stabilize-all" },
      "grub": { "enabled": true },
      "initramfs": { "enabled": true, "regenerate": true }
    },
    "convert": { "output_format": "qcow2", "compress": false, "output_path": "debian12-bios-kvm.qcow2" }
  }
}
JSON

echo "== the source as exported from VMware: $fixture"
"$bin" inspect "$fixture"

echo "== control: the unfixed guest on virtio-blk (expected to fail)"
if "$bin" validate --boot "$fixture" --bus virtio --timeout 300; then
    echo "unexpected: the unfixed guest booted on virtio" >&2
    exit 1
fi

echo "== h2k-guest fix --manifest $work/manifest.json"
"$bin" fix --manifest "$work/manifest.json"

echo "== the converted guest on virtio, probed whole (a new MAC: the guest's udev pin cannot name it)"
"$bin" validate --boot --probe "$work/debian12-bios-kvm.qcow2" --bus virtio --timeout 300 \
    --mac 52:54:00:4b:00:10 --expect-iface ens192=10.0.2.15/24 --console-log "$work/console.log"
echo "== last lines of its serial console ($work/console.log):"
tail -n 5 "$work/console.log"
