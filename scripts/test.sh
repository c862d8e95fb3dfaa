#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this): install what is needed, build the
# guest fixtures (cached), run the fast unit tests in parallel, then the appliance and boot
# tests one at a time (two TCG guests on two cores starve each other into timeouts).
#
#   scripts/test.sh           everything
#   scripts/test.sh --fast    unit tests only (no appliance, no guests): seconds
set -euo pipefail
cd "$(dirname "$0")/.."

fast=0
[ "${1:-}" = "--fast" ] && fast=1

if [ "$fast" = 0 ]; then
    bash scripts/setup.sh
fi

# The guest images build in the background while Rust compiles and the unit tests run: their
# debootstrap and apt downloads wait on the network, not the CPU. make-fixture.sh/make-variant.sh
# and make-guest.sh/make-layout.sh lock separate caches, so they run side by side too.
logs=$(mktemp -d)
# A failed build or test must not leave the image builders running (they clean up on SIGTERM).
# `kill` with no jobs left exits 2, and under `set -e` that would become the script's status:
# keep the status of the run itself.
stop_builders() {
    local status=$?
    local pids
    pids=$(jobs -p)
    if [ -n "$pids" ]; then kill $pids 2>/dev/null || true; fi
    wait || true
    rm -rf "$logs"
    exit "$status"
}
trap stop_builders EXIT
images_start=$(date +%s)
if [ "$fast" = 0 ]; then
    (bash scripts/make-fixture.sh all && bash scripts/make-variant.sh all) >"$logs/fixtures.out" 2>"$logs/fixtures.err" &
    fixtures_pid=$!
    (bash scripts/make-guest.sh all && bash scripts/make-layout.sh all) >"$logs/guests.out" 2>"$logs/guests.err" &
    guests_pid=$!
fi

echo "== build"
cargo build --all-targets --locked 2>&1 | tail -n 3

echo "== unit tests (pure transforms, wrapper errors, parsers)"
cargo test --locked --lib --bins

if [ "$fast" = 1 ]; then
    exit 0
fi

# Integration tests that need no guest image run while the images build (cold, that is 25+
# minutes); every other file in tests/ runs after them. A new test file lands in the second
# set unless it is listed here.
EARLY_TESTS=(hostile_manifests hostile_sources hostile_spool systemd_unit webhook workflow_watch guest_agent_apt kubernetes kubernetes_entrypoint docs deb spool_batch container)
early_args=()
late_args=()
for f in tests/*.rs; do
    t=$(basename "$f" .rs)
    if [[ " ${EARLY_TESTS[*]} " == *" $t "* ]]; then early_args+=(--test "$t"); else late_args+=(--test "$t"); fi
done
status=0
echo "== integration tests that need no guest image (while the images build)"
cargo test --locked "${early_args[@]}" -- --test-threads=1 || status=$?

echo "== guest images (cached by builder hash; ~3-5 min each when not cached)"
for job in fixtures:$fixtures_pid guests:$guests_pid; do
    if ! wait "${job#*:}"; then
        echo "building the ${job%%:*} failed:" >&2
        tail -n 40 "$logs/${job%%:*}.err" >&2
        exit 1
    fi
done
echo "fixtures, variants, guests and layouts ready $(( $(date +%s) - images_start )) s after the start"

echo "== integration tests: real appliance, real qemu-img/qemu-nbd, real boots (serial)"
probes=target/tmp/probes.tsv   # one line per probe boot, written by tests/common/probe.rs
rm -f "$probes"
cargo test --locked "${late_args[@]}" -- --test-threads=1 || status=$?
if [ -s "$probes" ]; then
    echo "== every probe boot of this run (test, image, bus, result, wall s, multi-user s, problems)"
    cat "$probes"
fi
exit "$status"
