#!/usr/bin/env bash
# The PHP binding's checks, from a fresh machine: installs php-cli if missing, builds
# libcostguard_ffi.so (release), checks the generated FFI declarations against include/costguard.h,
# runs the tests with the real php command line, and runs the gallery example, checking that the
# 10,000-image gallery is refused at the file-lookup limit.
#
#   bindings/php/run-tests.sh            (CARGO_TARGET_DIR defaults to target/php)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

if ! command -v php >/dev/null 2>&1; then
    echo "== installing php-cli (Debian's php8.2-cli has FFI)"
    sudo=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq php8.2-cli || \
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq php-cli
fi
php=(php -d ffi.enable=1 -d zend.assertions=1 -d error_reporting=-1 -d display_errors=stderr)
"${php[@]}" -r 'exit(extension_loaded("ffi") ? 0 : 1);' || { echo "php has no FFI extension" >&2; exit 1; }
php -v | head -1

target="${CARGO_TARGET_DIR:-target/php}"
case "$target" in /*) ;; *) target="$repo/$target" ;; esac
echo "== building costguard-ffi (release) into $target"
CARGO_TARGET_DIR="$target" cargo build -p costguard-ffi --release
export COSTGUARD_LIB="$target/release/libcostguard_ffi.so"
test -f "$COSTGUARD_LIB"

if [ -f "$repo/include/costguard.h" ]; then
    echo "== FFI declarations vs include/costguard.h"
    "${php[@]}" "$here/tools/gen-cdef.php" --check
else
    echo "== include/costguard.h not present: skipping the drift check" >&2
fi

echo "== syntax"
for f in "$here"/src/*.php "$here"/tests/*.php "$here"/examples/*.php "$here"/tools/*.php; do
    php -l "$f" >/dev/null
done

echo "== tests"
"${php[@]}" "$here/tests/run.php"

echo "== example: gallery"
out="$("${php[@]}" "$here/examples/gallery.php")"
echo "$out"
expect() {
    if ! grep -qF -- "$1" <<<"$out"; then
        echo "the example's output lacks: $1" >&2
        exit 1
    fi
}
expect 'gallery "all of April" (10000 images): refused before any lookup'
expect 'parse/file_lookups: 10000 can never fit in a limit of 500; retrying cannot help'
expect 'file_lookups           500 of 500  (limit reached)'
expect 'limit report for request edit-20150423-0340'
expect 'header for a sub-request: cg1;id=edit-20150423-0340;pri=normal;t=0;retries=0;'
echo "== all PHP checks passed"
