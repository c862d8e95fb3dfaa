#!/usr/bin/env bash
# bench-daemon.sh — the spool daemon's throughput for a migration wave: N small real jobs
# (the debian12-bios fixture, boot check off) through `h2k-guest daemon -j 1` and then `-j 2`,
# against N × the same job run alone, and the daemon's own overhead per job.
#
#   flock /tmp/h2k-vm.lock bash scripts/bench-daemon.sh [--count N] [--jobs 1,2] [--solo RUNS]
#                                                       [--accel tcg|kvm|auto] [--doc FILE] [--no-doc]
#
# Run it under the machine-wide VM lock (it does not take it itself, so it can be wrapped).
# Steps:
#   solo   `h2k-guest fix --manifest M` alone, RUNS times (default 2); the median wall time is
#          "one job alone" (process start to exit, its report's total_seconds beside it).
#   -j J   a fresh spool and a daemon `-j J`, ready before the clock starts; the N manifests are
#          submitted as one batch file renamed into to_be_processed/ (split by the daemon into N
#          jobs); the wave's wall time runs from that rename to the last job's `completed_at`.
# Per job the daemon's filed report gives: the pipeline's own time (`total_seconds`), the job
# thread's time (`duration_seconds`: manifest read + pipeline) and when filing ended
# (`completed_at`, against the pipeline's `ended_at`). Overheads:
#   in-job     duration_seconds − total_seconds + (completed_at − ended_at): reading the manifest,
#              making the output directory, filing the report and manifest;
#   wave       (J × wall − Σ total_seconds) / N: every slot-second of the wave not spent inside a
#              pipeline (claim latency, splitting, the in-job overhead, idle slots at the tail),
#              per job. With J = 1 it is simply (wall − Σ total_seconds) / N.
# Results: a table on stdout and, unless --no-doc, the block between the bench-daemon markers of
# docs/benchmarks.md (appended when absent; the rest of the file is kept).
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(dirname "$(dirname "$SCRIPT_PATH")")
COUNT=10
JOBS=1,2
SOLO=2
ACCEL=${H2K_ACCEL:-tcg}
DOC=$REPO/docs/benchmarks.md
WRITE_DOC=1
ORIG_ARGS="$*"

usage() { sed -n '2,8p' "$SCRIPT_PATH" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
        --count) COUNT=${2:?}; shift 2 ;;
        --jobs) JOBS=${2:?}; shift 2 ;;
        --solo) SOLO=${2:?}; shift 2 ;;
        --accel) ACCEL=${2:?}; shift 2 ;;
        --doc) DOC=${2:?}; shift 2 ;;
        --no-doc) WRITE_DOC=0; shift ;;
        -h | --help) usage ;;
        *) echo "bench-daemon.sh: unknown argument $1" >&2; usage ;;
    esac
done
log() { echo "bench-daemon: $*" >&2; }

if [ -z "${H2K_BIN:-}" ]; then
    log "building h2k-guest (cargo build --release)"
    (cd "$REPO" && cargo build --release -q >&2)
    H2K_BIN=$REPO/target/release/h2k-guest
fi
VMDK=$(bash "$REPO/scripts/make-fixture.sh" debian12-bios | tail -n 1)
[ -f "$VMDK" ] || { log "no fixture: $VMDK"; exit 1; }
if pgrep -f '^(/usr/bin/)?qemu-system' >/dev/null; then
    log "warning: a QEMU is already running on this machine; the numbers will be contended"
fi

WORK=$(mktemp -d /var/tmp/h2k-bench-daemon.XXXXXX)
DAEMON_PID=
cleanup() {
    if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -KILL "$DAEMON_PID" 2>/dev/null || true
        wait "$DAEMON_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

manifest() { # NAME OUTPUT_PATH
    cat <<EOF
{"version": "1.0",
 "pipeline": {
   "load": {"source_type": "vmdk", "source_path": "$VMDK"},
   "inspect": {"enabled": true, "detect_os": true},
   "fix": {"fstab": {"enabled": true, "mode": "stabilize-all"}, "grub": {"enabled": true},
           "initramfs": {"enabled": true, "regenerate": true}},
   "convert": {"output_format": "qcow2", "compress": false, "output_path": "$2"}}}
EOF
}

now() { date +%s.%N; }

# --- one job alone ----------------------------------------------------------------------------
SOLO_TIMES=()
SOLO_REPORTS=()
for i in $(seq 1 "$SOLO"); do
    d=$WORK/solo-$i
    mkdir -p "$d"
    manifest solo "solo.qcow2" >"$d/solo.json"
    log "solo run $i of $SOLO"
    t0=$(now)
    "$H2K_BIN" --accel "$ACCEL" -q fix --manifest "$d/solo.json" >"$d/out.txt" 2>"$d/err.txt" \
        || { log "solo run failed:"; tail -5 "$d/err.txt" >&2; exit 1; }
    t1=$(now)
    SOLO_TIMES+=("$(awk "BEGIN {print $t1 - $t0}")")
    SOLO_REPORTS+=("$d/solo.qcow2.report.json")
    rm -f "$d/solo.qcow2"
done

# --- waves through the daemon -----------------------------------------------------------------
WAVES=()
IFS=, read -r -a JLIST <<<"$JOBS"
for j in "${JLIST[@]}"; do
    w=$WORK/wave-j$j
    mkdir -p "$w/vms"
    list=()
    for i in $(seq -w 1 "$COUNT"); do
        manifest "vm$i" "vm$i.qcow2" >"$w/vms/vm$i.json"
        list+=("\"$w/vms/vm$i.json\"")
    done
    (IFS=,; echo "[${list[*]}]") >"$w/.wave.json.tmp"
    log "wave of $COUNT through daemon -j $j"
    "$H2K_BIN" --accel "$ACCEL" daemon --dir "$w/spool" --output-dir "$w/out" -j "$j" \
        --log-file "$w/daemon.log" 2>"$w/daemon.stderr" &
    DAEMON_PID=$!
    for _ in $(seq 1 600); do
        grep -q "daemon ready" "$w/daemon.log" 2>/dev/null && break
        sleep 0.1
    done
    grep -q "daemon ready" "$w/daemon.log" || { log "the daemon did not start"; cat "$w/daemon.stderr" >&2; exit 1; }
    t0=$(now)
    mv "$w/.wave.json.tmp" "$w/spool/to_be_processed/wave.json"
    while :; do
        # Every date directory (a wave may cross midnight UTC); failed/ does not exist while
        # nothing failed, and find's status must not end the script.
        done_n=$( (find "$w/spool/processed" "$w/spool/failed" -mindepth 2 -maxdepth 2 -name 'vm*.json' \
            ! -name '*.report.json' ! -name '*.error.json' 2>/dev/null || true) | wc -l)
        [ "$done_n" -ge "$COUNT" ] && break
        kill -0 "$DAEMON_PID" 2>/dev/null || { log "the daemon died"; tail -20 "$w/daemon.stderr" >&2; exit 1; }
        sleep 0.2
    done
    kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" || true
    DAEMON_PID=
    echo "$t0" >"$w/t0"
    WAVES+=("$j:$w")
    rm -rf "$w/out"
done

# --- the table --------------------------------------------------------------------------------
TABLE=$(python3 - "$COUNT" "$(IFS=,; echo "${SOLO_TIMES[*]}")" "$(IFS=,; echo "${SOLO_REPORTS[*]}")" "${WAVES[@]}" <<'PY'
import json, sys, glob, os, statistics
from datetime import datetime

def ts(s):
    # RFC 3339 with nanoseconds: keep microseconds for fromisoformat.
    s = s.replace("Z", "+00:00")
    if "." in s:
        head, rest = s.split(".", 1)
        frac, tz = rest[:rest.index("+")], rest[rest.index("+"):]
        s = f"{head}.{frac[:6].ljust(6, '0')}{tz}"
    return datetime.fromisoformat(s).timestamp()

count = int(sys.argv[1])
solo = [float(x) for x in sys.argv[2].split(",")]
solo_reports = [json.load(open(p)) for p in sys.argv[3].split(",")]
one = statistics.median(solo)
one_pipe = statistics.median(r["total_seconds"] for r in solo_reports)
rows = []
for arg in sys.argv[4:]:
    j, w = arg.split(":", 1)
    j = int(j)
    t0 = float(open(os.path.join(w, "t0")).read())
    reps = []
    for p in glob.glob(os.path.join(w, "spool/processed/*/vm*.json.report.json")):
        reps.append(json.load(open(p)))
    failed = glob.glob(os.path.join(w, "spool/failed/*/vm*.json.error.json"))
    split = glob.glob(os.path.join(w, "spool/processed/*/wave.json.report.json"))
    split_s = json.load(open(split[0]))["duration_seconds"] if split else float("nan")
    end = max(ts(r["completed_at"]) for r in reps) if reps else t0
    wall = end - t0
    pipe = sum(r["total_seconds"] for r in reps)
    injob = [r["duration_seconds"] - r["total_seconds"] + (ts(r["completed_at"]) - ts(r["ended_at"])) for r in reps]
    wave_over = (j * wall - pipe) / max(len(reps), 1)
    rows.append((j, len(reps), len(failed), wall, pipe, statistics.mean(injob) if injob else float("nan"),
                 max(injob) if injob else float("nan"), wave_over, split_s))
out = []
out.append(f"One job alone (`fix --manifest`, median of {len(solo)}): {one:.1f} s wall "
           f"({', '.join(f'{x:.1f}' for x in solo)}), pipeline {one_pipe:.1f} s; "
           f"{count} × one job alone = {count * one:.1f} s.")
out.append("")
out.append("| daemon | jobs ok | failed | wave wall s | vs %d × alone | Σ pipeline s | in-job overhead s/job (mean, max) | wave overhead s/job | batch split s |" % count)
out.append("|---|---|---|---|---|---|---|---|---|")
for j, ok, bad, wall, pipe, im, imax, wo, sp in rows:
    out.append(f"| -j {j} | {ok}/{count} | {bad} | {wall:.1f} | {wall / (count * one):.2f} × ({count * one / wall:.2f}x throughput) | {pipe:.1f} | {im:.2f}, {imax:.2f} | {wo:.2f} | {sp:.3f} |")
print("\n".join(out))
PY
)

HOST="$(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
VERSION=$("$H2K_BIN" --version | head -1)
BLOCK="Measured $(date -u +%FT%H:%MZ) on $HOST, accelerator ${ACCEL^^} (\`--accel $ACCEL\`), $VERSION, fixture debian12-bios (boot check off).

Command: \`flock /tmp/h2k-vm.lock bash scripts/bench-daemon.sh${ORIG_ARGS:+ $ORIG_ARGS}\`.

$TABLE

*in-job overhead*: the daemon's work inside a job's slot outside its pipeline (reading the
manifest, the output directory, filing report and manifest). *wave overhead*: (J × wave wall −
Σ pipeline) / jobs, every slot-second of the wave not spent in a pipeline (claim latency, the
split, the in-job overhead, slots idle at the tail of the wave)."

echo "$BLOCK"
if [ "$WRITE_DOC" = 1 ]; then
    python3 - "$DOC" "$BLOCK" <<'PY'
import sys
path, block = sys.argv[1], sys.argv[2]
begin, end = "<!-- bench-daemon:begin (written by scripts/bench-daemon.sh) -->", "<!-- bench-daemon:end -->"
text = open(path).read()
section = f"{begin}\n{block}\n{end}"
if begin in text and end in text:
    a, b = text.index(begin), text.index(end) + len(end)
    text = text[:a] + section + text[b:]
else:
    text = text.rstrip("\n") + "\n\n## Daemon throughput for a wave\n\n" \
        "`flock /tmp/h2k-vm.lock bash scripts/bench-daemon.sh` runs 10 jobs on the BIOS fixture through the spool " \
        "daemon with `-j 1` and `-j 2` (submitted as one batch file) and compares the wave with 10 × one job run alone.\n\n" \
        + section + "\n"
open(path, "w").write(text)
PY
    log "wrote $DOC"
fi
