#!/usr/bin/env bash
# The threaded C tests under ThreadSanitizer, with the Rust library instrumented too.
#
# api_test (a free racing charges from four threads) and fork_test (two threads hammering the engine
# while the main thread forks) are compiled with gcc's -fsanitize=thread and linked with a build of
# libcostguard_ffi instrumented by rustc (-Zsanitizer=thread, std rebuilt with -Zbuild-std), so that
# both sides of the boundary are seen. gcc's own TSan runtime (GCC 12) lacks entry points that
# rustc's instrumentation calls (__tsan_memcpy and friends), so the programs link the runtime that
# ships with the nightly toolchain instead; gcc's instrumentation calls are a subset of what it
# provides.
#
# Needs nightly with rust-src (the caller installs them); without them it says so and passes, or
# fails when TSAN_REQUIRED=1 (as CI sets it: a check that could not run has not passed).
# Environment: CARGO_TARGET_DIR (default target/tsan), CC (cc), TSAN_FORK_ROUNDS (20), TSAN_REQUIRED.
set -uo pipefail
cd "$(dirname "$0")/../.."

# Stops without running anything: a pass, unless the caller requires the check.
skip() {
  echo "$1"
  [[ "${TSAN_REQUIRED:-0}" == 1 ]] && exit 1
  exit 0
}

if ! cargo +nightly --version >/dev/null 2>&1; then
  skip "no nightly toolchain: C tests under ThreadSanitizer skipped"
fi
sysroot=$(rustc +nightly --print sysroot)
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
if [[ ! -d "$sysroot/lib/rustlib/src/rust/library" ]]; then
  skip "no rust-src for nightly: C tests under ThreadSanitizer skipped"
fi
runtime=$(ls "$sysroot/lib/rustlib/$host/lib/"librustc-nightly_rt.tsan.a 2>/dev/null | head -1)
if [[ -z "$runtime" ]]; then
  skip "nightly has no ThreadSanitizer runtime for $host: skipped"
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/tsan}"
CC="${CC:-cc}"
RUSTFLAGS="-Zsanitizer=thread" cargo +nightly build -Zbuild-std --target "$host" -p costguard-ffi || exit 1
lib="$CARGO_TARGET_DIR/$host/debug/libcostguard_ffi.a"
bin="$CARGO_TARGET_DIR/c-tsan"
mkdir -p "$bin/scratch" || exit 1

failed=0
for t in api_test fork_test; do
  "$CC" -std=c11 -Wall -Wextra -Werror -g -O1 -fsanitize=thread -Iinclude -Itests/c \
    -c "tests/c/$t.c" -o "$bin/$t.o" &&
    "$CC" "$bin/$t.o" "$lib" -Wl,--whole-archive "$runtime" -Wl,--no-whole-archive \
      -lstdc++ -lpthread -ldl -lm -lrt -o "$bin/$t" || { echo "--- $t: build FAILED"; failed=1; continue; }
  echo "--- $t under ThreadSanitizer"
  # halt_on_error: a report fails the test. die_after_fork=0: fork_test's children go on after a
  # fork with threads running (they are bounded by alarm()); FORK_QUIESCE pauses the hammer threads
  # at each fork, as under ASan, so a child never inherits the runtime mid-operation.
  TSAN_OPTIONS="halt_on_error=1 die_after_fork=0 second_deadlock_stack=1" FORK_QUIESCE=1 \
    FORK_ROUNDS="${TSAN_FORK_ROUNDS:-20}" RUST_BACKTRACE=0 "$bin/$t" "$bin/scratch" ||
    { echo "--- $t: FAILED"; failed=1; }
done
exit $failed
