<?php

declare(strict_types=1);

/*
 * Generates src/costguard.ffi.h, the declarations PHP's FFI::cdef reads, from the C header that
 * cbindgen writes (include/costguard.h). FFI::cdef cannot parse preprocessor lines, so they are
 * dropped, with the extern "C" guards; the integer #defines live in the PHP enums instead, and the
 * tests compare them with the header.
 *
 *   php tools/gen-cdef.php           regenerate
 *   php tools/gen-cdef.php --check   exit 1 if src/costguard.ffi.h differs from what the header gives
 *
 * Why a generated file rather than stripping the header at every load: a deployment needs only
 * bindings/php and the .so (the header is not installed on servers), nothing is parsed with regular
 * expressions on every request, and a header that FFI cannot read fails here, in CI, not in production.
 */

require __DIR__ . '/../src/autoload.php';

$args = array_slice($argv, 1);
$check = in_array('--check', $args, true);
$args = array_values(array_filter($args, fn ($a) => $a !== '--check'));
$header = $args[0] ?? dirname(__DIR__, 3) . '/include/costguard.h';
$target = dirname(__DIR__) . '/src/costguard.ffi.h';

$text = @file_get_contents($header);
if ($text === false) {
    fwrite(STDERR, "gen-cdef: cannot read {$header}\n");
    exit(2);
}
$generated = "/* Generated from include/costguard.h by bindings/php/tools/gen-cdef.php: do not edit. */\n\n"
    . Costguard\Library::cdefFromHeader($text);

if ($check) {
    $current = @file_get_contents($target);
    if ($current !== $generated) {
        fwrite(STDERR, "gen-cdef: {$target} is out of date with {$header}; run php tools/gen-cdef.php\n");
        exit(1);
    }
    echo "gen-cdef: src/costguard.ffi.h matches the header\n";
    exit(0);
}
file_put_contents($target, $generated);
echo "gen-cdef: wrote {$target}\n";
