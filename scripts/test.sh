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

echo "== build"
cargo build --all-targets --locked 2>&1 | tail -n 3

echo "== unit tests (pure transforms, wrapper errors, parsers)"
cargo test --locked --lib --bins

if [ "$fast" = 1 ]; then
    exit 0
fi

echo "== guest fixtures (cached by builder hash; ~2-4 min each when not cached)"
start=$(date +%s)
bash scripts/make-fixture.sh all >/dev/null
bash scripts/make-variant.sh all >/dev/null
bash scripts/make-guest.sh all >/dev/null
echo "fixtures, variants and guests ready in $(( $(date +%s) - start )) s"

echo "== integration tests: real appliance, real qemu-img/qemu-nbd, real boots (serial)"
cargo test --locked --test '*' -- --test-threads=1
