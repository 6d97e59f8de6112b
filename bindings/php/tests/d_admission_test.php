<?php

declare(strict_types=1);

use Costguard\{Budget, Grant, HeaderException, InvalidArgumentException, InvalidHandleException, Outcome, Priority, Reason, RefusedException, Verdict};

/** The stats entry of one class. */
function class_stats(Costguard\Engine $e, string $class): array
{
    foreach ($e->stats()['classes'] as $c) {
        if ($c['class'] === $class) {
            return $c;
        }
    }
    fail("no stats for class {$class}");
}

function test_admit_gives_a_grant_with_a_budget(): void
{
    $e = test_engine();
    $g = $e->admit('t', 'a-1');
    assert_true($g instanceof Grant, 'grant');
    assert_same('a-1', $g->requestId);
    $b = $g->budget();
    assert_true($b instanceof Budget, 'budget');
    assert_same($b, $g->budget(), 'one budget per grant');
    $b->charge('file_lookups', 2);
    assert_same(1, class_stats($e, 't')['in_flight']);
    $g->finish(Outcome::Success);
    assert_true($g->isFinished(), 'finished');
    assert_same(0, class_stats($e, 't')['in_flight'], 'finish releases');
    assert_same(2, $b->used('file_lookups'), 'the budget outlives the grant');
    assert_throws(InvalidHandleException::class, fn () => $g->finish());
}

function test_concurrency_limit_refuses_and_destructors_release(): void
{
    $e = test_engine();
    $g1 = $e->admit('t', 'c-1');
    $g2 = $e->admit('t', 'c-2');
    $ex = assert_throws(RefusedException::class, fn () => $e->admit('t', 'c-3'));
    assert_same(Reason::ConcurrencyLimit, $ex->verdict->reason);
    assert_same('c-3', $ex->verdict->requestId);
    assert_true($ex->verdict->isRetryable(), 'a concurrency refusal may be retried later');
    $v = $e->tryAdmit('t', 'c-4');
    assert_true($v instanceof Verdict, 'tryAdmit returns the verdict');
    unset($g1); // destroyed: released as Rust's drop
    $g3 = $e->admit('t', 'c-5');
    $g2->finish(Outcome::Overload);
    $g3->finish(Outcome::ClientError);
    $stats = class_stats($e, 't');
    assert_same(0, $stats['in_flight']);
}

function test_lower_priorities_are_shed_first(): void
{
    $e = Costguard\Engine::fromString(str_replace('concurrency = 2', "concurrency = 10\nheadroom = { background = 0.2 }", TEST_POLICY), true);
    $grants = [];
    $grants[] = $e->admit('t', 'bg-1', priority: Priority::Background);
    $grants[] = $e->admit('t', 'bg-2', priority: Priority::Background);
    $ex = assert_throws(RefusedException::class, fn () => $e->admit('t', 'bg-3', priority: Priority::Background));
    assert_same(Reason::Shed, $ex->verdict->reason);
    $grants[] = $e->admit('t', 'n-1', priority: Priority::Normal);
    $grants[] = $e->admit('t', 'c-1', priority: Priority::Critical);
}

function test_per_key_concurrency(): void
{
    $e = test_engine();
    $g = $e->admit('t', 'k-1', key: 'user:alice');
    $ex = assert_throws(RefusedException::class, fn () => $e->admit('t', 'k-2', key: 'user:alice'));
    assert_same(Reason::KeyConcurrency, $ex->verdict->reason);
    $g2 = $e->admit('t', 'k-3', key: 'user:bob');
    $g->finish();
    $g3 = $e->admit('t', 'k-4', key: 'user:alice');
}

function test_estimates_that_can_never_fit_are_refused_at_the_door(): void
{
    $e = test_engine();
    $ex = assert_throws(RefusedException::class, fn () => $e->admit('t', 'est-1', estimates: ['db_queries' => 6]));
    assert_same(Reason::CannotFit, $ex->verdict->reason);
    assert_same('db_queries', $ex->verdict->dimension);
    $g = $e->admit('t', 'est-2', estimates: [[$e->counter('db_queries'), 5]]);
    $g->finish();
    assert_same(0, class_stats($e, 't')['in_flight']);
    // A pair missing its amount, or with keys instead of positions: refused, with no PHP warning.
    foreach ([[['db_queries']], [['db_queries', 1, 2]], [['counter' => 'db_queries', 'amount' => 1]]] as $bad) {
        $warned = null;
        set_error_handler(function (int $no, string $msg) use (&$warned): bool {
            $warned = $msg;
            return true;
        });
        try {
            assert_throws(InvalidArgumentException::class, fn () => $e->admit('t', 'est-3', estimates: $bad));
        } finally {
            restore_error_handler();
        }
        assert_same(null, $warned);
    }
    assert_same(0, class_stats($e, 't')['in_flight']);
}

function test_admit_with_a_propagated_header(): void
{
    $e = test_engine();
    $caller = $e->begin('t', 'hop-1');
    $caller->charge('file_lookups', 8);
    $g = $e->admit('t', 'hop-1', header: $caller->toHeader());
    assert_same(2, $g->budget()->remaining('file_lookups'), 'the header tightens the callee');
    $g->finish();
    assert_throws(HeaderException::class, fn () => $e->admit('t', 'hop-2', header: 'garbage'));
    assert_throws(HeaderException::class, fn () => $e->admit('t', 'hop-2', header: "cg1;\xff"));
    assert_same(0, class_stats($e, 't')['in_flight'], 'a refused header holds nothing');
}

function test_admit_wait_without_a_queue_refuses_at_once(): void
{
    $e = test_engine();
    $g1 = $e->admit('t', 'w-1');
    $g2 = $e->admit('t', 'w-2');
    $start = hrtime(true);
    $v = $e->tryAdmit('t', 'w-3', wait: true);
    assert_true($v instanceof Verdict, 'refused: the class has no queue');
    assert_true(hrtime(true) - $start < 1e9, 'did not block');
}

function test_admit_wait_queues_then_times_out_with_a_verdict(): void
{
    $policy = str_replace("concurrency = 2\n", "concurrency = 1\nqueue = { capacity = 4, max_wait = \"50ms\" }\n", TEST_POLICY);
    $e = Costguard\Engine::fromString($policy); // a real clock: the wait is real
    $g = $e->admit('t', 'q-1');
    $start = hrtime(true);
    $v = $e->tryAdmit('t', 'q-2', wait: true);
    $waited = (hrtime(true) - $start) / 1e9;
    assert_true($v instanceof Verdict, 'refused after waiting');
    assert_same(Reason::QueueTimeout, $v->reason);
    assert_true($waited >= 0.04 && $waited < 2.0, "waited about max_wait: {$waited} s");
    $v = $e->tryAdmit('t', 'q-3'); // without wait: refused at once
    assert_same(Reason::ConcurrencyLimit, $v->reason);
    $g->finish();
    $e->admit('t', 'q-4', wait: true)->finish();
}
