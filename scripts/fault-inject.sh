#!/usr/bin/env bash
# fault-inject.sh [MOMENTS] — the full fault-injection run of tests/faults.rs: SIGKILL of
# `h2k-guest fix` at MOMENTS (default 20) moments spread over its timeline on the BIOS fixture
# (the last one as soon as CONVERT starts), then a full output filesystem and a killed qemu-nbd.
# Prints the table of moments; CI runs the same test with a sample of 3 (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export H2K_FAULT_MOMENTS=${1:-20}
cargo test --locked --test faults -- --test-threads=1 --nocapture 2>&1 | grep -E '^faults:|^test |test result'
