#!/usr/bin/env bash
# nbd-floor.sh IMAGE OUT — the copy floor through NBD: what h2k-guest's CONVERT stage does, with
# nothing of h2k-guest's own. qemu-nbd exports IMAGE read-only on a unix socket, qemu-img convert
# (same options as h2k-guest: -W, qcow2) copies it to OUT, then OUT is fsynced. Used by bench.sh
# to separate the cost of the NBD hop (which the design asks for) from h2k-guest's overhead.
set -euo pipefail
image=$1 out=$2
fmt=$(qemu-img info --output=json "$image" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])')
dir=$(mktemp -d "${TMPDIR:-/tmp}/h2k-nbd-floor.XXXXXX")
sock=$dir/nbd.sock
qemu-nbd --read-only --persistent --shared=8 --format "$fmt" --socket "$sock" "$image" &
nbd=$!
trap 'kill $nbd 2>/dev/null; wait $nbd 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 750); do [ -S "$sock" ] && break; sleep 0.02; done
qemu-img convert -f raw -O qcow2 -W "nbd+unix:///?socket=$sock" "$out"
sync "$out"
