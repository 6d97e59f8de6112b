#!/usr/bin/env bash
# The C and C++ tests of the C ABI: builds libcostguard_ffi (release), installs it with the headers
# into a staging prefix, compiles the tests against that prefix only, and runs them plainly, under
# valgrind, and rebuilt with AddressSanitizer + UndefinedBehaviorSanitizer; then checks that every
# function of the header is called by the tests.
#
# Runs on a bare Debian machine with a Rust toolchain: installs valgrind and g++ with apt-get when they
# are missing. Every step runs even when an earlier one failed; the exit status is non-zero if any did.
#
# Environment: CARGO_TARGET_DIR (default target/ctest), CC (cc), CXX (c++),
#   FORK_ROUNDS / VALGRIND_FORK_ROUNDS / ASAN_FORK_ROUNDS (forks in fork_test: 200, 6, 40).
set -uo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/ctest}"
export CARGO_TERM_COLOR=never
CC="${CC:-cc}"
CXX="${CXX:-c++}"
out="$root/$CARGO_TARGET_DIR/c-tests"
[[ "$CARGO_TARGET_DIR" = /* ]] && out="$CARGO_TARGET_DIR/c-tests"
prefix="$out/prefix"
bin="$out/bin"
scratch="$out/scratch"

failed=()
passed=0
step() {
  local name="$1"
  shift
  echo
  echo "=== ${name}"
  local start=$SECONDS
  if "$@"; then
    passed=$((passed + 1))
    echo "=== ${name}: ok ($((SECONDS - start))s)"
  else
    failed+=("${name}")
    echo "=== ${name}: FAILED ($((SECONDS - start))s)"
  fi
}

ensure_tools() {
  local need=()
  command -v "$CC" >/dev/null 2>&1 || need+=(gcc)
  command -v "$CXX" >/dev/null 2>&1 || need+=(g++)
  command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
  command -v nm >/dev/null 2>&1 || need+=(binutils)
  command -v perl >/dev/null 2>&1 || need+=(perl)
  [[ ${#need[@]} -eq 0 ]] && return 0
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "need ${need[*]}, and not root without sudo" >&2; return 1; }
    sudo=(sudo)
  fi
  echo "installing ${need[*]}"
  "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}"
}

header_has() { grep -q "\b$1\b" include/costguard.h 2>/dev/null; }

# The library, twice: with the test-only fault-injection feature (for the panic-boundary tests), then
# the ordinary build the other tests use, which is what stays in $CARGO_TARGET_DIR/release. Only the
# costguard-ffi crate itself differs between the two, so the second build is quick.
build() {
  [[ -f include/costguard.h ]] || { echo "include/costguard.h is missing (cbindgen output)" >&2; return 1; }
  rm -rf "$prefix" && mkdir -p "$prefix/include" "$prefix/lib" "$prefix/lib-faults" "$bin" "$scratch" || return 1
  if header_has costguard_debug_panic_after; then
    cargo build -p costguard-ffi --release --features fault-injection || return 1
    cp "$CARGO_TARGET_DIR/release/libcostguard_ffi.a" "$prefix/lib-faults/" || return 1
  fi
  cargo build -p costguard-ffi --release || return 1
  # The "installation": headers and libraries, nothing else from the source tree.
  cp include/costguard.h include/costguard.hpp "$prefix/include/" &&
    cp "$CARGO_TARGET_DIR/release/libcostguard_ffi.a" "$CARGO_TARGET_DIR/release/libcostguard_ffi.so" "$prefix/lib/"
}

cflags=(-std=c11 -Wall -Wextra -Werror -g -O1 -I"$prefix/include" -Itests/c)
cxxflags=(-std=c++17 -Wall -Wextra -Werror -g -O1 -I"$prefix/include" -Itests/c)
syslibs=(-lpthread -ldl -lm)

# compile SUFFIX EXTRA_FLAGS...: every test, linked with the static library.
compile() {
  local suffix="$1"
  shift
  local static="$prefix/lib/libcostguard_ffi.a"
  "$CC" "${cflags[@]}" "$@" tests/c/api_test.c "$static" "${syslibs[@]}" -o "$bin/api_test$suffix" &&
    "$CC" "${cflags[@]}" "$@" tests/c/fork_test.c "$static" "${syslibs[@]}" -o "$bin/fork_test$suffix" &&
    "$CXX" "${cxxflags[@]}" "$@" tests/c/cpp_test.cpp "$static" "${syslibs[@]}" -o "$bin/cpp_test$suffix" || return 1
  if [[ -f "$prefix/lib-faults/libcostguard_ffi.a" ]]; then
    "$CC" "${cflags[@]}" "$@" -DCOSTGUARD_TEST_FAULTS -DCOSTGUARD_FAULT_INJECTION tests/c/api_test.c \
      "$prefix/lib-faults/libcostguard_ffi.a" "${syslibs[@]}" -o "$bin/api_test_faults$suffix" || return 1
  fi
}

compile_plain() {
  compile "" &&
    # The shared library too, found through an rpath, as an extension would load it.
    "$CC" "${cflags[@]}" tests/c/api_test.c -L"$prefix/lib" -Wl,-rpath,"$prefix/lib" -lcostguard_ffi \
      "${syslibs[@]}" -o "$bin/api_test_shared"
}

# run_all SUFFIX [WRAPPER...]: every test binary of that build.
run_all() {
  local suffix="$1"
  shift
  local ok=0 t
  for t in api_test api_test_faults cpp_test fork_test; do
    [[ -x "$bin/$t$suffix" ]] || continue
    local args=()
    case "$t" in
      api_test*) args=("$scratch") ;;
      cpp_test) args=("$root/examples/policy.toml") ;;
    esac
    echo "--- $t$suffix"
    # RUST_BACKTRACE=0: the injected panics of api_test_faults print one line each, not a backtrace.
    RUST_BACKTRACE=0 "$@" "$bin/$t$suffix" "${args[@]}" || { echo "--- $t$suffix: FAILED"; ok=1; }
  done
  return $ok
}

run_plain() {
  FORK_ROUNDS="${FORK_ROUNDS:-200}" run_all "" &&
    echo "--- api_test_shared" && "$bin/api_test_shared" "$scratch"
}

run_valgrind() {
  local supp=()
  [[ -f tests/c/valgrind.supp ]] && supp=(--suppressions=tests/c/valgrind.supp)
  # Forked children are checked too (valgrind follows fork); --error-exitcode makes a child with an
  # error exit 1, which fork_test reports.
  FORK_ROUNDS="${VALGRIND_FORK_ROUNDS:-6}" FORK_CHILD_SECONDS=120 run_all "" \
    valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect \
    --show-leak-kinds=definite,indirect "${supp[@]}"
}

# The tests and the wrapper instrumented with ASan and UBSan. The Rust library is linked as built
# (release, not instrumented): ASan still replaces malloc/free for the whole process, so its heap
# misuse at the boundary (double free, use after free, overflow of a caller buffer the library writes
# into, leaks) is caught, and the tests' own code is fully checked. An instrumented Rust build would
# need nightly's -Zsanitizer=address with -Zbuild-std (a rebuild of std), too slow and too fragile
# for this runner; the library's own memory safety is covered by its Rust tests, loom and fuzzing.
compile_asan() {
  compile "_asan" -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
}

# FORK_QUIESCE: the sanitizer runtime's own allocator (GCC 12's libasan) takes no lock around fork(),
# so a child forked while another thread is inside malloc can hang in the sanitizer itself; under ASan
# fork_test pauses its two hammer threads at each fork (see fork_test.c). The plain and valgrind runs
# fork while every thread is busy.
run_asan() {
  ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" FORK_QUIESCE=1 FORK_ROUNDS="${ASAN_FORK_ROUNDS:-40}" \
    run_all "_asan"
}

coverage() { tests/c/coverage.sh "$prefix/include" "$prefix/lib/libcostguard_ffi.so"; }

step "tools" ensure_tools
step "build libcostguard_ffi" build
step "compile" compile_plain
step "run" run_plain
step "run under valgrind" run_valgrind
step "compile with ASan+UBSan" compile_asan
step "run under ASan+UBSan" run_asan
step "coverage of the C ABI" coverage

echo
if [[ ${#failed[@]} -eq 0 ]]; then
  echo "C tests: all ${passed} steps passed"
  exit 0
fi
echo "C tests: ${#failed[@]} step(s) failed: ${failed[*]}"
exit 1
