<?php

declare(strict_types=1);

/*
 * A tiny test runner, so the tests need nothing but the php command line:
 *
 *   php -d ffi.enable=1 tests/run.php [FILTER]
 *
 * Loads every tests/*_test.php, runs each function named test_* (only those containing FILTER when
 * given), one after another in this process, and prints one line per test. A test fails by throwing
 * (the helpers in lib.php throw AssertionFailed). Exit status: 0 when all pass, 1 otherwise.
 */

require __DIR__ . '/lib.php';

$filter = $argv[1] ?? '';
$before = get_defined_functions()['user'];
foreach (glob(__DIR__ . '/*_test.php') as $file) {
    require $file;
}
$tests = array_values(array_filter(
    array_diff(get_defined_functions()['user'], $before),
    fn (string $f) => str_starts_with($f, 'test_') && ($filter === '' || str_contains($f, strtolower($filter))),
));
// Declaration order within a file; files in name order (get_defined_functions keeps both).

$failed = [];
$start = hrtime(true);
foreach ($tests as $test) {
    $t = hrtime(true);
    try {
        $test();
        gc_collect_cycles(); // run destructors of anything the test left behind, inside the test
        printf("ok    %-60s %6.1f ms\n", $test, (hrtime(true) - $t) / 1e6);
    } catch (Throwable $e) {
        $failed[] = $test;
        printf("FAIL  %s\n      %s: %s\n      at %s:%d\n", $test, get_class($e), str_replace("\n", "\n      ", $e->getMessage()), $e->getFile(), $e->getLine());
        foreach (array_slice($e->getTrace(), 0, 4) as $frame) {
            if (isset($frame['file'])) {
                printf("         %s:%d\n", $frame['file'], $frame['line']);
            }
        }
    }
}
printf("\n%d tests, %d passed, %d failed (%.2f s)\n", count($tests), count($tests) - count($failed), count($failed), (hrtime(true) - $start) / 1e9);
if ($tests === []) {
    echo "no tests matched\n";
    exit(1);
}
foreach ($failed as $f) {
    echo "failed: {$f}\n";
}
exit($failed === [] ? 0 : 1);
