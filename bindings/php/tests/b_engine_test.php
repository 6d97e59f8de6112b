<?php

declare(strict_types=1);

use Costguard\{Counter, Engine, InvalidArgumentException, InvalidHandleException, IoException, PolicyException, RefusedException, RequestClass, UnknownNameException};

function test_engine_from_string_and_from_file(): void
{
    $e = Engine::fromString(TEST_POLICY);
    assert_same(1, $e->generation(), 'first generation');
    $f = Engine::fromFile(repo_policy_path());
    $b = $f->begin('parse', 'r1');
    assert_same(500, $b->remaining('file_lookups'), 'the example policy limits lookups to 500');
    // `upload` counts file lookups without limiting them: unlimited (null), even after a charge.
    $u = $f->begin('upload', 'u1');
    assert_same(null, $u->remaining('file_lookups'), 'unlimited');
    $u->charge('file_lookups', 5);
    assert_same(null, $u->remaining('file_lookups'), 'still unlimited after a charge');
}

function test_policy_errors_list_every_problem_with_file_and_line(): void
{
    $bad = "[dimensions]\nfile_lookups = \"counter\"\n\n[classes.t]\nwall_time = \"0s\"\nlimits = { nope = 3 }\n";
    $path = temp_file($bad);
    $e = assert_throws(PolicyException::class, fn () => Engine::fromFile($path));
    assert_same(7, $e->getCode(), 'status POLICY_ERROR');
    assert_contains(basename($path), $e->getMessage(), 'the file is named');
    assert_true((bool) preg_match('/:\d+/', $e->detail), "file:line in {$e->detail}");
    assert_true(count($e->problems()) >= 1, 'problems listed');
    // Every problem: both the zero wall time (line 5) and the unknown dimension (line 6).
    assert_contains(':5', $e->detail, 'line of wall_time');
    assert_contains(':6', $e->detail, 'line of the unknown dimension');
    assert_throws(PolicyException::class, fn () => Engine::fromString('this is not toml ['));
}

function test_missing_policy_file_is_an_io_error(): void
{
    $e = assert_throws(IoException::class, fn () => Engine::fromFile('/nonexistent/policy.toml'));
    assert_same(9, $e->getCode());
}

function test_reload_applies_to_new_budgets_only(): void
{
    $e = test_engine();
    $old = $e->begin('t', 'old');
    $gen = $e->reload(str_replace('file_lookups = 10,', 'file_lookups = 20,', TEST_POLICY));
    assert_same(2, $gen, 'generation after reload');
    assert_same(2, $e->generation());
    assert_same(10, $old->remaining('file_lookups'), 'running budget keeps its policy');
    assert_same(20, $e->begin('t', 'new')->remaining('file_lookups'), 'new budget gets the new policy');
    // Names resolved before the reload stay valid.
    $lookups = $e->counter('file_lookups');
    $e->reloadFile(temp_file(TEST_POLICY));
    assert_same(3, $e->generation());
    $b = $e->begin('t', 'after');
    $b->charge($lookups, 10);
    assert_same(10, $b->used($lookups));
}

function test_failed_reload_keeps_the_old_policy(): void
{
    $e = test_engine();
    $broken = str_replace('file_lookups = 10,', 'file_lookups = "ten",', TEST_POLICY);
    $ex = assert_throws(PolicyException::class, fn () => $e->reload($broken));
    assert_true($ex->detail !== '', 'the problem is described');
    assert_same(1, $e->generation(), 'generation unchanged');
    assert_same(10, $e->begin('t', 'r')->remaining('file_lookups'), 'old limits still apply');
    assert_throws(IoException::class, fn () => $e->reloadFile('/nonexistent.toml'));
    $ex = assert_throws(PolicyException::class, fn () => $e->reloadFile(temp_file($broken)));
    assert_contains(':', $ex->detail);
    assert_same(1, $e->generation(), 'generation unchanged after failed file reloads');
    assert_same(10, $e->begin('t', 'r2')->remaining('file_lookups'));
}

function test_names_are_resolved_once_and_cached(): void
{
    $e = test_engine();
    $c = $e->counter('file_lookups');
    assert_true($c instanceof Counter, 'a Counter');
    assert_same($c, $e->counter('file_lookups'), 'the same object');
    assert_same('file_lookups', $c->name);
    assert_true($e->cls('t') instanceof RequestClass, 'a RequestClass');
    assert_same($e->level('depth'), $e->level('depth'));
    assert_same($e->backend('svc'), $e->backend('svc'));
    assert_same($e->host('svc', 'a:1'), $e->host($e->backend('svc'), 'a:1'));
    assert_throws(UnknownNameException::class, fn () => $e->counter('nope'), 'no counter named `nope`');
    assert_throws(UnknownNameException::class, fn () => $e->level('nope'));
    // The library's own explanation is part of the message.
    assert_throws(InvalidArgumentException::class, fn () => $e->begin('t', str_repeat('x', 65)), 'longer than 64 bytes');
    assert_throws(UnknownNameException::class, fn () => $e->cls('nope'));
    assert_throws(UnknownNameException::class, fn () => $e->backend('nope'));
    assert_throws(UnknownNameException::class, fn () => $e->host('svc', 'c:1'));
    // A level is not a counter.
    assert_throws(UnknownNameException::class, fn () => $e->counter('depth'));
}

function test_names_of_another_engine_are_invalid_handles(): void
{
    $a = test_engine();
    $b = test_engine();
    $budget = $b->begin('t', 'r');
    assert_throws(InvalidHandleException::class, fn () => $budget->charge($a->counter('file_lookups')));
    assert_throws(InvalidHandleException::class, fn () => $b->begin($a->cls('t'), 'r'));
}

function test_stats_are_an_array_and_prometheus_text(): void
{
    $e = test_engine();
    $g = $e->admit('t', 'r1');
    $stats = $e->stats();
    assert_true(is_array($stats) && $stats !== [], 'stats decoded');
    assert_contains('"t"', $e->statsJson());
    $prom = $e->statsPrometheus();
    assert_contains('costguard_', $prom);
    $g->finish();
}

function test_manual_clock_moves_only_when_told(): void
{
    $e = test_engine();
    $b = $e->begin('t', 'r');
    assert_same(10.0, $b->remainingSeconds());
    $e->advanceClock(2.5);
    assert_same(7_500_000_000, $b->remainingNs());
    assert_throws(InvalidArgumentException::class, fn () => $e->advanceClockNs(-1));
    assert_throws(InvalidArgumentException::class, fn () => $e->advanceClock(-0.5), 'only moves forward');
    assert_throws(InvalidArgumentException::class, fn () => $e->advanceClock(NAN), 'NaN');
    // Past what an int holds, the clock saturates: every deadline has passed.
    $e->advanceClock(INF);
    assert_same(0, $b->remainingNs());
    $real = test_engine(false);
    assert_throws(InvalidArgumentException::class, fn () => $real->advanceClock(1.0));
}

function test_closed_engine_refuses_before_calling_and_budgets_keep_working(): void
{
    $e = test_engine();
    $b = $e->begin('t', 'r');
    $lookups = $e->counter('file_lookups');
    $e->close();
    $e->close(); // idempotent
    assert_true($e->isClosed(), 'closed');
    assert_throws(InvalidHandleException::class, fn () => $e->generation());
    assert_throws(InvalidHandleException::class, fn () => $e->begin('t', 'r2'), 'closed');
    $b->charge($lookups, 3);
    assert_same(3, $b->used($lookups), 'a budget outlives its engine (API.md: already made keep working)');
}

function test_bad_request_ids_are_invalid_arguments(): void
{
    $e = test_engine();
    assert_throws(InvalidArgumentException::class, fn () => $e->begin('t', ''));
    assert_throws(InvalidArgumentException::class, fn () => $e->begin('t', str_repeat('x', 65)));
    assert_throws(InvalidArgumentException::class, fn () => $e->begin('t', "bad\xff"));
    $e->begin('t', str_repeat('x', 64));
}

function test_handles_cannot_be_cloned_or_serialized(): void
{
    $e = test_engine();
    $b = $e->begin('t', 'r');
    assert_throws(Costguard\CostguardException::class, fn () => clone $b);
    assert_throws(Costguard\CostguardException::class, fn () => serialize($b));
    $b->charge('file_lookups'); // the original is intact
    assert_same(1, $b->used('file_lookups'));
}
