#!/usr/bin/env bash
# Fails unless every function the C header declares is called by the C or C++ tests, and is wrapped
# by the C++ header.
#
# "Called" is read from the compiler, not from the text: each test is compiled to an object file and
# its undefined `costguard_*` symbols are what it really calls (a name in a comment, or in a wrapper
# function the test never uses, does not count; inline functions that are never used are not
# emitted). Needs only the headers and a compiler, not the library.
#
# With a shared library as second argument, also fails when the library exports a `costguard_*`
# function the header does not declare, or the header declares one the library lacks (the
# feature-gated costguard_debug_panic_after aside).
#
# Usage: tests/c/coverage.sh [INCLUDE_DIR [LIBCOSTGUARD_FFI_SO]]   (default: include/ of this repository)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
include="${1:-$root/include}"
library="${2:-}"
header="$include/costguard.h"
[[ -f "$header" ]] || { echo "coverage: $header not found" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Function declarations: `name(` in the header after comments are removed, with the preprocessor
# keeping every #if branch (a function declared only under a feature define still counts).
sed -e 's://.*$::' "$header" | perl -0pe 's{/\*.*?\*/}{}gs' |
  grep -oE '\bcostguard_[A-Za-z0-9_]+[[:space:]]*\(' | sed -E 's/[[:space:]]*\($//' | sort -u >"$work/declared"
declared=$(wc -l <"$work/declared")
[[ "$declared" -gt 0 ]] || { echo "coverage: no functions found in $header" >&2; exit 1; }

# Feature-gated declarations (fault injection) are visible with their define.
defines=(-DCOSTGUARD_TEST_FAULTS -DCOSTGUARD_FAULT_INJECTION)
cc -std=c11 -I"$include" -I"$here" -c "$here/api_test.c" -o "$work/api_test.o"
cc -std=c11 -I"$include" -I"$here" "${defines[@]}" -c "$here/api_test.c" -o "$work/api_test_faults.o"
cc -std=c11 -I"$include" -I"$here" -c "$here/fork_test.c" -o "$work/fork_test.o"
c++ -std=c++17 -I"$include" -I"$here" -c "$here/cpp_test.cpp" -o "$work/cpp_test.o"
# The wrapper on its own: every inline function instantiated, to see what it wraps.
printf '#include "costguard.hpp"\n' >"$work/hpp.cpp"
c++ -std=c++17 -I"$include" -fkeep-inline-functions -c "$work/hpp.cpp" -o "$work/hpp.o"

called() { nm -u "$@" | awk '{print $NF}' | grep -E '^costguard_' | sort -u; }
called "$work"/api_test.o "$work"/api_test_faults.o "$work"/fork_test.o "$work"/cpp_test.o >"$work/called"
called "$work/hpp.o" >"$work/wrapped"

status=0
missing=$(comm -23 "$work/declared" "$work/called")
if [[ -n "$missing" ]]; then
  echo "coverage: declared in costguard.h but never called by the tests:"
  sed 's/^/  /' <<<"$missing"
  status=1
fi
# The wrapper covers the whole ABI but the test-only fault injection.
unwrapped=$(comm -23 "$work/declared" "$work/wrapped" | grep -v '^costguard_debug_panic_after$' || true)
if [[ -n "$unwrapped" ]]; then
  echo "coverage: declared in costguard.h but not wrapped by costguard.hpp:"
  sed 's/^/  /' <<<"$unwrapped"
  status=1
fi
if [[ -n "$library" ]]; then
  nm -D --defined-only "$library" | awk '$2 == "T" {print $3}' | grep -E '^costguard_' | sort -u >"$work/exported"
  undeclared=$(comm -13 "$work/declared" "$work/exported")
  unexported=$(comm -23 "$work/declared" "$work/exported" | grep -v '^costguard_debug_panic_after$' || true)
  if [[ -n "$undeclared" ]]; then
    echo "coverage: exported by $(basename "$library") but not declared in costguard.h:"
    sed 's/^/  /' <<<"$undeclared"
    status=1
  fi
  if [[ -n "$unexported" ]]; then
    echo "coverage: declared in costguard.h but not exported by $(basename "$library"):"
    sed 's/^/  /' <<<"$unexported"
    status=1
  fi
  echo "coverage: $(basename "$library") exports $(wc -l <"$work/exported") costguard_* functions"
fi
for t in api_test fork_test cpp_test; do
  echo "coverage: $t calls $(called "$work/$t.o" | wc -l) functions"
done
if [[ $status -eq 0 ]]; then
  echo "coverage: all $declared functions declared in costguard.h are called by the tests and wrapped by costguard.hpp"
fi
exit $status
