#!/usr/bin/env bash
# bench.sh — h2k-guest against virt-v2v and the qemu-img copy floor, on the same fixtures, in one
# run, alternating the order of the tools from round to round so machine drift cancels.
#
#   bash scripts/bench.sh [--rounds N] [--fixtures a[:N],b[:N]] [--no-boot] [--no-grow] [--keep]
#                         [--wait-idle SECS] [--doc FILE] [--no-doc] [--baseline BIN]
#                         [--tools h2k,v2v,...]
#
# NAME:N in --fixtures overrides --rounds for that fixture; --tools keeps only the runs it names
# (default: all below; floor-same and floor-nbd follow h2k). Per fixture and round (the order
# reverses every other round):
#   h2k         h2k-guest fix SRC -o OUT.qcow2 -q                      (--initramfs auto, the default)
#   h2k-rebuild h2k-guest fix SRC -o OUT.qcow2 -q --initramfs rebuild  (the guest's own tool)
#   h2k-z       h2k-guest fix SRC -o OUT.qcow2 -q --compress            (zstd)
#   h2k-base    BIN fix SRC -o OUT.qcow2 -q, with --baseline BIN (an older build, for before/after)
#   v2v         virt-v2v -i disk SRC -o local -os DIR -of qcow2 -on NAME
#   floor       qemu-img convert -W -O qcow2 SRC OUT                    (h2k's qemu-img options)
#   floor-z     qemu-img convert -W -O qcow2 -c -o compression_type=zstd SRC OUT
#   floor-same  qemu-img convert -W -O qcow2 H2K_OUT OUT                (the data h2k copies)
#   floor-nbd   qemu-nbd SRC + qemu-img convert nbd+unix:// + fsync      (h2k's CONVERT, bare)
#   appliance   guestfish --ro -a SRC set-smp V : set-memsize M : run   (h2k's vCPUs/memory)
# then once per fixture: validate --boot --probe --bus virtio of h2k's (both strategies) and
# virt-v2v's last outputs, the NIC on the VM's own MAC (is it whole: mounts, swap, network, no
# failed unit); and once (first fixture) the growth check: the source copied to qcow2 and
# resized to 100 GiB (the new space unallocated), h2k-guest fix on it.
#
# Fixtures are every guest the project builds: make-fixture.sh, make-variant.sh, make-guest.sh
# and make-layout.sh names (multi-disk variants are left out: virt-v2v -i disk takes one disk).
#
# Every run is timed (wall), its own peak RSS is sampled from /proc/PID/status VmHWM (the
# process itself, not its children: /usr/bin/time's %M is the largest of the process and its
# waited-for descendants, i.e. the appliance's QEMU, and is shown as "tree RSS"). A failing tool
# is recorded as failed with its last error line; the bench goes on.
#
# Everything runs under TCG when KVM is not usable (LIBGUESTFS_BACKEND_SETTINGS=force_tcg is set
# for h2k-guest, virt-v2v and guestfish alike unless H2K_BENCH_KVM=1). Before each run the bench
# waits (up to --wait-idle seconds, default 600) until no qemu-system process runs on the
# machine; a run that started or ran beside a foreign QEMU is flagged "contended".
#
# Results: a table on stdout, and the same between the bench markers of docs/benchmarks.md
# (text outside the markers is kept). Needs root for apt-get when virt-v2v is missing.
set -uo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
SCRIPTS_DIR=$(dirname "$SCRIPT_PATH")
REPO=$(dirname "$SCRIPTS_DIR")
ROUNDS=2
FIXTURES=debian12-bios,debian12-uefi-dracut-lvm,debian12-bios-static-nopin:1,debian12-uefi-dracut-omit:1,debian11-bios-xfs-nm:1,debian13-uefi-btrfs-netplan:1,photon5-bios:1,photon5-uefi:1,debian13-uefi-systemd-boot:1
BOOT=1
GROW=1
KEEP=0
WAIT_IDLE=600
DOC=$REPO/docs/benchmarks.md
WRITE_DOC=1
BASELINE=
TOOLS=
ORIG_ARGS="$*"

usage() {
    sed -n '2,11p' "$SCRIPT_PATH" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=${2:?}; shift 2 ;;
        --fixtures) FIXTURES=${2:?}; shift 2 ;;
        --no-boot) BOOT=0; shift ;;
        --no-grow) GROW=0; shift ;;
        --keep) KEEP=1; shift ;;
        --wait-idle) WAIT_IDLE=${2:?}; shift 2 ;;
        --doc) DOC=$(readlink -f "${2:?}"); shift 2 ;;
        --no-doc) WRITE_DOC=0; shift ;;
        --baseline) BASELINE=$(readlink -f "${2:?}"); shift 2 ;;
        --tools) TOOLS=${2:?}; shift 2 ;;
        -h|--help) usage ;;
        *) echo "bench: unknown argument $1" >&2; usage ;;
    esac
done
case $ROUNDS in ''|*[!0-9]*|0) echo "bench: --rounds wants a positive number" >&2; exit 2 ;; esac

log() { printf 'bench: [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---- tools -----------------------------------------------------------------------------------
need_pkgs=()
command -v virt-v2v >/dev/null || need_pkgs+=(virt-v2v)
# Debian's virt-v2v 2.x does not depend on what it runs: nbdkit (input) and nbdcopy (output).
command -v nbdkit >/dev/null || need_pkgs+=(nbdkit)
command -v nbdcopy >/dev/null || need_pkgs+=(libnbd-bin)
[ -x /usr/bin/time ] || need_pkgs+=(time)
command -v guestfish >/dev/null || need_pkgs+=(guestfish)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_pkgs[@]}" >&2; then
        log "apt-get install ${need_pkgs[*]} failed; the runs needing them will be recorded as failed"
    fi
fi
command -v qemu-img >/dev/null || { log "qemu-img missing (bash scripts/setup.sh)"; exit 1; }

log "building h2k-guest (cargo build --release)"
if ! (cd "$REPO" && cargo build --release -q >&2); then
    log "cargo build failed"; exit 1
fi
H2K=$REPO/target/release/h2k-guest

if [ "${H2K_BENCH_KVM:-0}" = 1 ]; then
    TOOL_ENV=(LIBGUESTFS_BACKEND=direct)
    ACCEL=auto
else
    TOOL_ENV=(LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg H2K_ACCEL=tcg)
    ACCEL=tcg
fi
NPROC=$(nproc)
VCPUS=$(( NPROC < 4 ? NPROC : 4 ))   # what h2k-guest gives its appliance (src/appliance.rs)
APP_MEM=2048

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/h2k-bench.XXXXXX")
RES=$WORK/results
mkdir -p "$RES"
cleanup() {
    if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
printf 'fixture\ttool\tround\tstatus\twall\town_kib\ttree_kib\tsize\tcontended\treport\tnote\n' >"$RES/runs.tsv"
printf 'fixture\ttool\tbooted\tseconds\tsummary\n' >"$RES/boots.tsv"

# ---- waiting for a quiet machine ---------------------------------------------------------------
CONTENDED_ANY=0
wait_idle() {
    local waited=0 n
    while n=$(pgrep -c qemu-system); [ "$n" -gt 0 ]; do
        if [ "$waited" -ge "$WAIT_IDLE" ]; then
            log "still $n qemu-system process(es) after ${WAIT_IDLE}s; measuring anyway (contended)"
            return 1
        fi
        [ $((waited % 60)) = 0 ] && log "waiting for $n foreign qemu-system process(es) to end"
        sleep 10; waited=$((waited + 10))
    done
    return 0
}

# Is any qemu-system running that is not a descendant of $1?
foreign_qemu() {
    local root=$1 pid p
    for pid in $(pgrep qemu-system); do
        p=$pid
        [ -d "/proc/$pid" ] || continue
        while [ -n "$p" ] && [ "$p" -gt 1 ] && [ "$p" != "$root" ]; do
            p=$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null) || p=
        done
        [ "$p" = "$root" ] || return 0
    done
    return 1
}

# measure FIXTURE TOOL ROUND OUTPUT REPORT -- CMD...: run CMD, append one line to runs.tsv.
measure() {
    local fixture=$1 tool=$2 round=$3 output=$4 report=$5
    shift 6
    local contended=0
    wait_idle || contended=1
    local logf=$RES/$fixture.$tool.$round.log tf=$WORK/time.out
    rm -f "$tf"
    log "$fixture round $round: $tool"
    /usr/bin/time -f '%e %M' -o "$tf" env "${TOOL_ENV[@]}" "$@" >"$logf" 2>&1 &
    local tpid=$! child= hwm=0 k v rest ticks=0
    while kill -0 "$tpid" 2>/dev/null; do
        [ -z "$child" ] && child=$(pgrep -P "$tpid" | head -n1)
        if [ -n "$child" ] && [ -r "/proc/$child/status" ]; then
            while read -r k v rest; do
                [ "$k" = VmHWM: ] && { hwm=$v; break; }
            done <"/proc/$child/status" 2>/dev/null
        fi
        if [ $((ticks % 8)) = 0 ] && foreign_qemu "$tpid"; then contended=1; fi
        ticks=$((ticks + 1))
        sleep 0.25
    done
    wait "$tpid"; local rc=$?
    local wall=NA tree=NA status=ok note=
    if [ -s "$tf" ]; then
        read -r wall tree < <(grep -E '^[0-9.]+ [0-9]+$' "$tf" | tail -n1)
    fi
    if [ "$rc" != 0 ]; then
        status=failed
        # The last line naming an error (virt-v2v ends with a "run with -v -x" hint), else the last line.
        note=$(grep -v '^\s*$' "$logf" | grep -v 'Command exited with non-zero' | grep -iE 'error|fail' | tail -n1)
        [ -n "$note" ] || note=$(grep -v '^\s*$' "$logf" | grep -v 'Command exited with non-zero' | tail -n1)
        note=$(printf '%s' "$note" | tr '\t' ' ' | cut -c1-200)
        note="exit $rc: $note"
        log "$tool failed: $note"
    fi
    local size=NA
    if [ "$status" = ok ] && [ -n "$output" ]; then
        if [ -f "$output" ]; then size=$(stat -c %s "$output"); else status=failed; note="no output $output"; fi
    fi
    [ "$contended" = 1 ] && CONTENDED_ANY=1
    local rep=
    if [ -n "$report" ] && [ -f "$report" ]; then
        rep=$RES/$fixture.$tool.$round.report.json
        cp "$report" "$rep"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$fixture" "$tool" "$round" "$status" \
        "${wall:-NA}" "$hwm" "${tree:-NA}" "$size" "$contended" "$rep" "$note" >>"$RES/runs.tsv"
    log "$tool: ${status} ${wall:-NA} s, own RSS ${hwm} KiB, size ${size}"
}

boot_check() {
    local fixture=$1 tool=$2 image=$3
    if [ ! -f "$image" ]; then
        printf '%s\t%s\t%s\t%s\t%s\n' "$fixture" "$tool" "n/a" NA "no output to boot" >>"$RES/boots.tsv"
        return
    fi
    wait_idle || CONTENDED_ANY=1
    log "$fixture: booting $tool's output on virtio with the probe"
    local j=$RES/$fixture.$tool.boot.json
    # The NIC keeps the VM's MAC, as a migration does by default (virt-v2v and h2k-guest's
    # libvirt XML alike): a guest whose network config matches its MAC (netplan, NetworkManager)
    # has no network on QEMU's default MAC, whoever converted it. $src is the fixture's source.
    local mac_args=()
    local mac
    mac=$(python3 -c 'import json,sys; print((json.load(open(sys.argv[1])).get("network") or {}).get("mac") or "")' \
        "${src%.*}.json" 2>/dev/null || true)
    [ -n "$mac" ] && mac_args=(--mac "$mac")
    env "${TOOL_ENV[@]}" "$H2K" validate --accel "$ACCEL" --boot --probe "$image" --bus virtio \
        "${mac_args[@]}" --timeout 420 --json -q >"$j" 2>"$RES/$fixture.$tool.boot.log"
    python3 - "$j" "$fixture" "$tool" "$RES/$fixture.$tool.boot.log" >>"$RES/boots.tsv" <<'EOF'
import json, sys
path, fixture, tool, errlog = sys.argv[1:5]
try:
    o = json.load(open(path))
    p = o.get("probe") or {}
    booted = "whole" if p.get("whole") else ("not whole" if p.get("reached") else "no")
    secs = p.get("seconds_to_probe") or o.get("seconds_to_login") or (o.get("failure") or {}).get("seconds") or o.get("seconds")
    if p.get("reached"):
        summ = "; ".join(p.get("problems") or []) or "multi-user, mounts, swap, network, no failed unit"
    else:
        f = o.get("failure") or {}
        summ = "%s; console: %s" % (f.get("reason", "?"), (f.get("console_line") or "")[:120])
except Exception as e:
    booted, secs = "error", None
    lines = [l.strip() for l in open(errlog, errors="replace") if l.strip()]
    summ = "validate failed: " + (lines[-1] if lines else str(e))
summ = summ.replace("\t", " ").replace("\n", " ")
print(f"{fixture}\t{tool}\t{booted}\t{secs if secs is not None else 'NA'}\t{summ}")
EOF
    tail -n1 "$RES/boots.tsv" | cut -f2- | sed 's/^/bench: boot /' >&2
}

# The script that builds FIXTURE (each prints the image's path last).
builder_of() {
    case $1 in
        photon5-*|debian13-uefi-systemd-boot) echo make-layout.sh ;;
        debian11-*|debian13-*) echo make-guest.sh ;;
        debian12-bios|debian12-uefi-dracut-lvm) echo make-fixture.sh ;;
        *) echo make-variant.sh ;;
    esac
}

# ---- the runs ----------------------------------------------------------------------------------
BENCH_START=$(date +%s)
IFS=, read -r -a FIX_LIST <<<"$FIXTURES"
first=1
for spec in "${FIX_LIST[@]}"; do
    fixture=${spec%%:*}
    fixture_rounds=$ROUNDS
    [ "$spec" != "$fixture" ] && fixture_rounds=${spec#*:}
    log "fixture $fixture ($fixture_rounds round(s))"
    src=$(bash "$SCRIPTS_DIR/$(builder_of "$fixture")" "$fixture" 2>"$RES/$fixture.make.log" | tail -n1)
    if [ -z "$src" ] || [ ! -f "$src" ]; then
        log "make-fixture.sh $fixture failed: $(tail -n1 "$RES/$fixture.make.log")"
        printf '%s\tfixture\t0\tfailed\tNA\t0\tNA\tNA\t0\t\t%s\n' "$fixture" \
            "make-fixture failed: $(tail -n1 "$RES/$fixture.make.log" | tr '\t' ' ')" >>"$RES/runs.tsv"
        continue
    fi
    printf '%s\t%s\t%s\n' "$fixture" "$src" "$(qemu-img info --output=json "$src" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["virtual-size"], d.get("actual-size", 0))')" >>"$RES/sources.tsv"
    D=$WORK/$fixture
    for ((r = 1; r <= fixture_rounds; r++)); do
        rm -rf "$D"; mkdir -p "$D/v2v"
        order=(h2k v2v h2k-rebuild h2k-z floor floor-z appliance)
        if [ $((r % 2)) = 0 ]; then order=(appliance floor-z floor h2k-z h2k-rebuild v2v h2k); fi
        if [ -n "$BASELINE" ]; then
            # Next to h2k, on the other side of it each round, so drift hits both alike.
            if [ $((r % 2)) = 0 ]; then order=(h2k-base "${order[@]}"); else order=(h2k h2k-base "${order[@]:1}"); fi
        fi
        for tool in "${order[@]}"; do
            if [ -n "$TOOLS" ] && [[ ",$TOOLS," != *",$tool,"* ]]; then continue; fi
            case $tool in
                h2k) measure "$fixture" h2k "$r" "$D/h2k.qcow2" "$D/h2k.qcow2.report.json" -- \
                        "$H2K" fix "$src" -o "$D/h2k.qcow2" -q --accel "$ACCEL" ;;
                h2k-rebuild) measure "$fixture" h2k-rebuild "$r" "$D/h2kr.qcow2" "$D/h2kr.qcow2.report.json" -- \
                        "$H2K" fix "$src" -o "$D/h2kr.qcow2" -q --initramfs rebuild --accel "$ACCEL" ;;
                h2k-z) measure "$fixture" h2k-z "$r" "$D/h2kz.qcow2" "$D/h2kz.qcow2.report.json" -- \
                        "$H2K" fix "$src" -o "$D/h2kz.qcow2" -q --compress --accel "$ACCEL" ;;
                h2k-base) measure "$fixture" h2k-base "$r" "$D/h2kb.qcow2" "$D/h2kb.qcow2.report.json" -- \
                        "$BASELINE" fix "$src" -o "$D/h2kb.qcow2" -q --accel "$ACCEL" ;;
                v2v) measure "$fixture" v2v "$r" "$D/v2v/v2v-sda" "" -- \
                        virt-v2v -i disk "$src" -o local -os "$D/v2v" -of qcow2 -on v2v ;;
                floor) measure "$fixture" floor "$r" "$D/floor.qcow2" "" -- \
                        qemu-img convert -W -O qcow2 "$src" "$D/floor.qcow2" ;;
                floor-z) measure "$fixture" floor-z "$r" "$D/floorz.qcow2" "" -- \
                        qemu-img convert -W -O qcow2 -c -o compression_type=zstd "$src" "$D/floorz.qcow2" ;;
                appliance) measure "$fixture" appliance "$r" "" "" -- \
                        guestfish --ro -a "$src" set-smp "$VCPUS" : set-memsize "$APP_MEM" : run ;;
            esac
            # Only the last round's h2k/virt-v2v outputs are kept (for the boot check).
            rm -f "$D/floor.qcow2" "$D/floorz.qcow2"
        done
        if [ -f "$D/h2k.qcow2" ]; then
            measure "$fixture" floor-same "$r" "$D/floor-same.qcow2" "" -- \
                qemu-img convert -W -O qcow2 "$D/h2k.qcow2" "$D/floor-same.qcow2"
            rm -f "$D/floor-same.qcow2"
            measure "$fixture" floor-nbd "$r" "$D/floor-nbd.qcow2" "" -- \
                bash "$SCRIPTS_DIR/bench/nbd-floor.sh" "$src" "$D/floor-nbd.qcow2"
            rm -f "$D/floor-nbd.qcow2"
        fi
        [ "$r" -lt "$fixture_rounds" ] && rm -rf "$D/v2v" "$D"/h2k*.qcow2*
    done
    rm -f "$D/h2kz.qcow2"
    if [ "$BOOT" = 1 ]; then
        boot_check "$fixture" h2k "$D/h2k.qcow2"
        boot_check "$fixture" h2k-rebuild "$D/h2kr.qcow2"
        boot_check "$fixture" v2v "$D/v2v/v2v-sda"
    fi
    rm -rf "$D"
    if [ "$GROW" = 1 ] && [ "$first" = 1 ]; then
        G=$WORK/grow; mkdir -p "$G"
        log "$fixture: growth check (100 GiB virtual, same data)"
        if qemu-img convert -W -O qcow2 "$src" "$G/grown-src.qcow2" && qemu-img resize -q "$G/grown-src.qcow2" 100G; then
            measure "$fixture" h2k-grown 1 "$G/out.qcow2" "$G/out.qcow2.report.json" -- \
                "$H2K" fix "$G/grown-src.qcow2" -o "$G/out.qcow2" -q --accel "$ACCEL"
            rm -f "$G/out.qcow2"
            measure "$fixture" floor-grown 1 "$G/floor.qcow2" "" -- \
                qemu-img convert -W -O qcow2 "$G/grown-src.qcow2" "$G/floor.qcow2"
        else
            printf '%s\th2k-grown\t1\tfailed\tNA\t0\tNA\tNA\t0\t\tcannot make the 100 GiB copy\n' "$fixture" >>"$RES/runs.tsv"
        fi
        rm -rf "$G"
    fi
    first=0
done
BENCH_SECONDS=$(( $(date +%s) - BENCH_START ))

# ---- the table ---------------------------------------------------------------------------------
MEM_GIB=$(awk '/^MemTotal:/{printf "%.1f", $2/1048576}' /proc/meminfo)
CPU_MODEL=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
if [ "$ACCEL" = tcg ]; then ACCEL_DESC="TCG (LIBGUESTFS_BACKEND_SETTINGS=force_tcg; no usable KVM)"; else ACCEL_DESC="auto (KVM when usable)"; fi
cat >"$RES/meta.env" <<EOF
date=$(date -u +%Y-%m-%dT%H:%MZ)
machine=$NPROC cores ($CPU_MODEL), $MEM_GIB GiB RAM, accelerator $ACCEL_DESC
command=bash scripts/bench.sh ${ORIG_ARGS:-(defaults)}
rounds=$ROUNDS
contended=$CONTENDED_ANY
bench_seconds=$BENCH_SECONDS
h2k=$("$H2K" --version 2>/dev/null) ($(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)$(cd "$REPO" && git diff --quiet HEAD 2>/dev/null || echo '+dirty'))
virt_v2v=$(virt-v2v --version 2>/dev/null || echo missing)
qemu=$(qemu-img --version | head -n1)
libguestfs=$(guestfish --version 2>/dev/null)
appliance=$VCPUS vCPU, $APP_MEM MiB
EOF
python3 "$SCRIPTS_DIR/bench/summarize.py" "$RES" >"$RES/table.md" || { log "summarize failed"; exit 1; }
cat "$RES/table.md"

if [ "$WRITE_DOC" = 1 ]; then
    mkdir -p "$(dirname "$DOC")"
    python3 - "$DOC" "$RES/table.md" <<'EOF'
import sys, os
doc, table = sys.argv[1], open(sys.argv[2]).read()
begin, end = "<!-- bench:begin (written by scripts/bench.sh) -->", "<!-- bench:end -->"
block = f"{begin}\n{table.rstrip()}\n{end}\n"
text = open(doc).read() if os.path.exists(doc) else "# Benchmarks\n\n"
if begin in text and end in text:
    pre, rest = text.split(begin, 1)
    post = rest.split(end, 1)[1].lstrip("\n")
    text = pre + block + ("\n" + post if post else "")
else:
    text = text.rstrip() + "\n\n" + block
open(doc, "w").write(text)
EOF
    log "table written to $DOC"
fi
