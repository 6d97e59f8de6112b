<?php

declare(strict_types=1);

/*
 * What one charge costs from PHP: N calls of Budget::tryCharge against N calls of an empty PHP
 * function, an empty method, and the raw FFI call the wrapper makes.
 *
 *   php -d ffi.enable=1 tools/bench.php [N]       (N defaults to 1,000,000)
 */

require __DIR__ . '/../src/autoload.php';

use Costguard\{Engine, Library};

$n = (int) ($argv[1] ?? 1_000_000);
$policy = <<<'TOML'
[dimensions]
file_lookups = "counter"

[classes.bench]
wall_time = "1h"
limits = { file_lookups = 1000000000000 }
TOML;

function nothing(int $a): ?int
{
    return null;
}

final class Nothing
{
    public function tryCharge(string $c, int $a = 1): ?int
    {
        return null;
    }
}

$engine = Engine::fromString($policy);
$budget = $engine->begin('bench', 'bench-1');
$lookups = $engine->counter('file_lookups');
$ffi = Library::ffi();
$v = Library::load()->verdict;
$h = $budget->handle();
$c = $lookups->handle;
$obj = new Nothing();

$runs = [
    'empty PHP function' => function () use ($n) {
        for ($i = 0; $i < $n; $i++) {
            nothing(1);
        }
    },
    'empty PHP method' => function () use ($n, $obj) {
        for ($i = 0; $i < $n; $i++) {
            $obj->tryCharge('file_lookups', 1);
        }
    },
    'raw FFI costguard_budget_charge' => function () use ($n, $ffi, $h, $c, $v) {
        for ($i = 0; $i < $n; $i++) {
            $ffi->costguard_budget_charge($h, $c, 1, $v);
        }
    },
    'Budget::tryCharge(Counter)' => function () use ($n, $budget, $lookups) {
        for ($i = 0; $i < $n; $i++) {
            $budget->tryCharge($lookups);
        }
    },
    "Budget::tryCharge('file_lookups')" => function () use ($n, $budget) {
        for ($i = 0; $i < $n; $i++) {
            $budget->tryCharge('file_lookups');
        }
    },
    'Budget::isCancelled()' => function () use ($n, $budget) {
        for ($i = 0; $i < $n; $i++) {
            $budget->isCancelled();
        }
    },
];
$empty = 'empty PHP function';
$results = [];
foreach ($runs as $name => $run) {
    $best = INF;
    for ($rep = 0; $rep < 3; $rep++) {
        $t = hrtime(true);
        $run();
        $best = min($best, (hrtime(true) - $t) / $n);
    }
    $results[$name] = $best;
}
printf("PHP %s, opcache %s, JIT %s, N = %d, best of 3\n", PHP_VERSION,
    ini_get('opcache.enable_cli') ? 'on' : 'off', ini_get('opcache.jit') ?: 'off', $n);
foreach ($results as $name => $ns) {
    printf("  %-36s %7.1f ns/call  %5.1fx the empty function\n", $name, $ns, $ns / $results[$empty]);
}
printf("used after the runs: %d lookups\n", $budget->used($lookups));
