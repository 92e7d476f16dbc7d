#!/bin/sh
# Builds the two AMP box fuzz targets (libFuzzer, ASan, UBSan), fuzz_decode
# and fuzz_encode, which share their checks with the C tests
# (tests/c/check_box.c), and runs each for FUZZ_SECONDS (60 by default) on a
# copy of fuzz/corpus in fuzz/build/corpus-<target>, so that what they learn
# never lands in the repository.  Exits non-zero when either finds a crash;
# the input that caused it is left in fuzz/build/ (crash-*, prefixed with the
# target's name).
#
# Needs clang with its libFuzzer runtime; when they are missing and apt-get is
# there (Debian, Ubuntu, as root), installs them.  CLANG picks another
# compiler (CLANG=clang-16), FUZZ_ARGS passes more libFuzzer options
# (FUZZ_ARGS="-max_len=70000 -seed=1").
set -eu

cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
clang=${CLANG:-clang}
build=fuzz/build
mkdir -p "$build"

can_build_fuzzers() {
    printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n)\n{ (void)d; (void)n; return 0; }\n' \
        > "$build/probe.c"
    "$clang" -fsanitize=fuzzer,address,undefined "$build/probe.c" -o "$build/probe" > /dev/null 2>&1
}

if ! can_build_fuzzers; then
    if ! command -v apt-get > /dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
        echo "fuzz/run.sh: $clang cannot build libFuzzer targets; install clang and its compiler-rt" \
             "runtime (Debian: apt-get install clang libclang-rt-dev)" >&2
        exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    command -v "$clang" > /dev/null 2>&1 || apt-get install -y -q --no-install-recommends clang
    # The libFuzzer and sanitizer runtimes are packaged apart from clang
    # since LLVM 14 on Debian (only recommended by it); older releases ship
    # them with libclang-common-N-dev, which clang already pulled in.
    if ! can_build_fuzzers; then
        apt-get install -y -q --no-install-recommends libclang-rt-dev ||
            apt-get install -y -q --no-install-recommends \
                "libclang-rt-$("$clang" -dumpversion | cut -d. -f1)-dev"
    fi
    can_build_fuzzers || { echo "fuzz/run.sh: still cannot build libFuzzer targets" >&2; exit 2; }
fi

failed=0
for target in fuzz_decode fuzz_encode; do
    "$clang" -g -O1 -std=gnu99 -Wall -Wextra -Werror \
        -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Icsrc -Itests/c \
        "fuzz/$target.c" fuzz/common.c tests/c/check_box.c csrc/ampbox.c -o "$build/$target"

    corpus="$build/corpus-$target"
    rm -rf "$corpus"
    mkdir -p "$corpus"
    cp fuzz/corpus/* "$corpus/"

    log="$build/$target.log"
    status=0
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of options
    "$build/$target" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$build/$target-" ${FUZZ_ARGS:-} "$corpus" > "$log" 2>&1 || status=$?

    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    if [ "$status" != 0 ]; then
        tail -n 60 "$log" >&2
        echo "$target: FAILED (status $status) after ${execs:-?} executions; log in $log" >&2
        failed=1
    else
        echo "$target: ${execs:-?} executions in ${seconds}s (${rate:-?}/s), no crash ($(ls "$corpus" | wc -l) inputs in $corpus)"
    fi
done
exit "$failed"
