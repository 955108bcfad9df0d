#!/bin/sh
# Runs every fuzz target for SECONDS each (default 20), starting from the committed seeds
# (fuzz/seeds/TARGET) plus whatever earlier runs found (fuzz/corpus/TARGET, not committed).
# Exits non-zero when a target fails: a crash, a failed assertion, a leak, a timeout or
# an out-of-memory; the input that did it is left in fuzz/artifacts/TARGET/.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). The stable toolchain is told to accept
# the sanitizer flags with RUSTC_BOOTSTRAP=1. Extra arguments after SECONDS go to
# libFuzzer.
set -eu

seconds=${1:-20}
[ $# -gt 0 ] && shift
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
export RUSTC_BOOTSTRAP=1
cargo=${CARGO:-cargo}

targets="data_channel completion_queue config y4m decode_input"

"$cargo" fuzz build -O >/dev/null

status=0
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t" logs
    log="logs/$t.log"
    echo "fuzz: $t for ${seconds}s"
    if "$cargo" fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$@" \
        >"$log" 2>&1; then
        grep -E '^stat::number_of_executed_units|^Done ' "$log" | sed "s/^/fuzz: $t: /"
    else
        status=1
        echo "fuzz: $t FAILED; log $here/$log, reproducer in $here/artifacts/$t/" >&2
        tail -n 40 "$log" >&2
    fi
done
exit $status
