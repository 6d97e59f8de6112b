<?php

declare(strict_types=1);

// Assertions and fixtures shared by the tests. Failing assertions throw AssertionFailed.

require_once __DIR__ . '/../src/autoload.php';

final class AssertionFailed extends Exception
{
}

function fail(string $message): never
{
    throw new AssertionFailed($message);
}

function show(mixed $v): string
{
    return match (true) {
        $v instanceof UnitEnum => get_class($v) . '::' . $v->name,
        is_object($v) => get_class($v) . ($v instanceof Stringable ? '(' . $v . ')' : ''),
        default => var_export($v, true),
    };
}

function assert_same(mixed $expected, mixed $actual, string $what = ''): void
{
    if ($expected !== $actual) {
        fail(($what !== '' ? "{$what}: " : '') . 'expected ' . show($expected) . ', got ' . show($actual));
    }
}

function assert_true(bool $cond, string $what): void
{
    if (!$cond) {
        fail($what);
    }
}

function assert_contains(string $needle, string $haystack, string $what = ''): void
{
    if (!str_contains($haystack, $needle)) {
        fail(($what !== '' ? "{$what}: " : '') . 'expected ' . var_export($needle, true) . ' in ' . var_export($haystack, true));
    }
}

/**
 * Runs $fn and returns the exception it must throw, of class $class (or a subclass).
 *
 * @template T of Throwable
 * @param class-string<T> $class
 * @return T
 */
function assert_throws(string $class, callable $fn, string $messageContains = ''): Throwable
{
    try {
        $fn();
    } catch (Throwable $e) {
        if (!$e instanceof $class) {
            fail("expected {$class}, got " . get_class($e) . ': ' . $e->getMessage());
        }
        if ($messageContains !== '' && !str_contains($e->getMessage(), $messageContains)) {
            fail("expected the message of {$class} to contain " . var_export($messageContains, true) . ', got ' . var_export($e->getMessage(), true));
        }
        return $e;
    }
    fail("expected {$class}, nothing was thrown");
}

/** The repository's example policy. */
function repo_policy_path(): string
{
    return dirname(__DIR__, 3) . '/examples/policy.toml';
}

/**
 * A small policy for the tests: class "t" with tight limits, an admission limit of 2, a per-key limit
 * of 1, a pooled backend and a plain one.
 */
const TEST_POLICY = <<<'TOML'
[dimensions]
file_lookups = "counter"
db_queries   = "counter"
output_bytes = { kind = "counter", unit = "bytes" }
depth        = "level"

[classes.t]
wall_time    = "10s"
retries      = 1
child_margin = "1s"
priority     = "normal"
limits = { file_lookups = 10, db_queries = 5, output_bytes = "1KiB", depth = 3 }

[classes.t.admission]
concurrency = 2
per_key     = { concurrency = 1, max_keys = 64 }

[classes.other]
wall_time = "1s"
limits = { file_lookups = 3 }

[classes.other.admission]
concurrency = 100

[backends.svc]
hosts = ["a:1", "b:1"]
timeout = "500ms"
max_in_flight = 2
max_connecting_per_host = 1

[backends.plain]
timeout = "2s"
max_in_flight = 10
max_connecting = 10
TOML;

function test_engine(bool $manualClock = true): Costguard\Engine
{
    return Costguard\Engine::fromString(TEST_POLICY, $manualClock);
}

/** A temporary file holding $text, removed at exit. */
function temp_file(string $text, string $suffix = '.toml'): string
{
    $base = tempnam(sys_get_temp_dir(), 'costguard-php-');
    $path = $base . $suffix;
    file_put_contents($path, $text);
    register_shutdown_function(static function () use ($base, $path): void {
        @unlink($base);
        @unlink($path);
    });
    return $path;
}
