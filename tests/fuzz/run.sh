#!/bin/sh
# Runs each libFuzzer target for a bounded time; fails on the first crash,
# leak, sanitizer report or hang (an input slower than 10 s).
#
#   tests/fuzz/run.sh BUILD_DIR SECONDS_PER_TARGET [TARGET...]
#
# New inputs go to BUILD_DIR/fuzz-corpus/<target> (the checked-in seeds in
# tests/fuzz/corpus/<target> are only read); a failing input is written to
# BUILD_DIR/fuzz-artifacts/ and its path printed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=$1
seconds=$2
shift 2
targets=${*:-fuzz_http fuzz_form fuzz_v2 fuzz_tls fuzz_h2 fuzz_etcd_client}
# ASan's default 256 MiB quarantine lifts fuzz_form to ~700 MiB; 64 MiB
# keeps a use-after-free window of many inputs at a third of the memory.
export ASAN_OPTIONS="${ASAN_OPTIONS:-quarantine_size_mb=64}"
for t in $targets; do
    case $t in
    fuzz_http | fuzz_tls) max_len=12000 dict="-dict=$here/http.dict" ;;
    fuzz_v2) max_len=4096 dict="-dict=$here/http.dict" ;;
    fuzz_h2 | fuzz_etcd_client) max_len=8192 dict="" ;;
    *) max_len=2048 dict="" ;;
    esac
    mkdir -p "$build/fuzz-corpus/$t" "$build/fuzz-artifacts"
    echo "== $t: ${seconds}s"
    # shellcheck disable=SC2086
    if ! "$build/tests/fuzz/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -max_len="$max_len" $dict -print_final_stats=1 \
        -artifact_prefix="$build/fuzz-artifacts/$t-" \
        "$build/fuzz-corpus/$t" "$here/corpus/$t" >"$build/fuzz-$t.log" 2>&1; then
        tail -n 60 "$build/fuzz-$t.log"
        echo "FAIL: $t; reproduce with: $build/tests/fuzz/$t $build/fuzz-artifacts/$t-*" >&2
        exit 1
    fi
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^stat::new_units_added" \
        "$build/fuzz-$t.log" | tr '\n' ' '
    grep -E "cov: [0-9]+" "$build/fuzz-$t.log" | tail -n 1 | sed 's/^/\n  last: /'
done
