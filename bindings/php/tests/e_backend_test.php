<?php

declare(strict_types=1);

use Costguard\{Attempt, AttemptOutcome, InvalidArgumentException, InvalidHandleException, Reason, RefusedException, Verdict};

function backend_stats(Costguard\Engine $e, string $name): array
{
    foreach ($e->stats()['backends'] ?? [] as $b) {
        if (($b['backend'] ?? $b['name'] ?? null) === $name) {
            return $b;
        }
    }
    fail("no stats for backend {$name}: " . $e->statsJson());
}

function test_attempts_choose_a_host_and_take_the_smaller_timeout(): void
{
    $e = test_engine();
    $b = $e->begin('t', 'r');
    $a = $e->beginAttempt('svc', $b);
    assert_true($a instanceof Attempt, 'attempt');
    assert_true(in_array($a->host(), ['a:1', 'b:1'], true), 'a host of the pool: ' . var_export($a->host(), true));
    assert_same(0.5, $a->timeoutSeconds(), "the backend's timeout");
    $a->connected();
    $a->finish(AttemptOutcome::Success);
    assert_true($a->isFinished(), 'finished');
    assert_throws(InvalidHandleException::class, fn () => $a->connected());

    $p = $e->beginAttempt($e->backend('plain'), $b);
    assert_same(null, $p->host(), 'no pool, no host');
    assert_same(2_000_000_000, $p->timeoutNs());
    $e->advanceClock(9.0);
    $p2 = $e->beginAttempt('plain', $b, 1);
    assert_true($p2->timeoutSeconds() <= 1.0, 'capped by the time the request has left: ' . $p2->timeoutSeconds());
}

function test_attempt_on_a_chosen_host(): void
{
    $e = test_engine();
    $b = $e->begin('t', 'r');
    $a = $e->beginAttemptOn($e->host('svc', 'b:1'), $b);
    assert_same('b:1', $a->host());
    $a->finish(AttemptOutcome::ServerError);
}

function test_a_host_of_another_engines_backend_is_refused_even_when_cached(): void
{
    $e1 = test_engine();
    $e2 = test_engine();
    $e1->host('svc', 'b:1'); // cached under e1's own backend
    assert_throws(InvalidHandleException::class, fn () => $e1->host($e2->backend('svc'), 'b:1'));
}

function test_bulkhead_refuses_and_destroyed_attempts_finish_as_cancelled(): void
{
    $e = test_engine();
    $b = $e->begin('t', 'r');
    $a1 = $e->beginAttempt('svc', $b);
    $a2 = $e->beginAttempt('svc', $b);
    $ex = assert_throws(RefusedException::class, fn () => $e->beginAttempt('svc', $b));
    assert_true(in_array($ex->verdict->reason, [Reason::BulkheadFull, Reason::ConnectLimit, Reason::NoHealthyHost], true), 'capped: ' . $ex->verdict->reason->name);
    unset($a1); // finished as cancelled: frees its slot
    $a3 = $e->beginAttempt('svc', $b);
    $a2->finish(AttemptOutcome::Success);
    $a3->finish(AttemptOutcome::Success);
}

function test_retry_says_wait_or_why_not(): void
{
    $e = test_engine();
    $b = $e->begin('t', 'r');
    $a = $e->beginAttempt('plain', $b);
    $a->finish(AttemptOutcome::ServerError);
    $wait = $e->retry('plain', $b, AttemptOutcome::ServerError, 1);
    assert_true(is_float($wait) && $wait >= 0.0, 'retry after a wait: ' . var_export($wait, true));
    $v = $e->retry('plain', $b, AttemptOutcome::ClientError, 1);
    assert_true($v instanceof Verdict, 'a client error is not retried');
    assert_same(Reason::NotRetryable, $v->reason);
    $v = $e->retry('plain', $b, AttemptOutcome::UpstreamTimeout, 1);
    assert_true($v instanceof Verdict, 'an upstream timeout is not retried');
    $wait = $e->retry('plain', $b, AttemptOutcome::Refused, 1, retryAfter: 0.25);
    if (is_float($wait)) {
        assert_true($wait >= 0.25, "never sooner than Retry-After: {$wait}");
    }
    // An endless Retry-After is as long as a duration goes, never "now"; NaN is no duration.
    $v = $e->retry('plain', $b, AttemptOutcome::Refused, 1, retryAfter: INF);
    assert_true($v instanceof Verdict, 'no retry can wait that long: ' . var_export($v, true));
    assert_throws(InvalidArgumentException::class, fn () => $e->retry('plain', $b, AttemptOutcome::Refused, 1, retryAfter: NAN), 'NaN');
}

function test_retry_allowance_of_the_tree_stops_retries(): void
{
    $e = test_engine();
    $b = $e->begin('t', 'r');
    $b->tryRetry(); // the class allows 1 retry for the whole tree
    $v = $e->retry('plain', $b, AttemptOutcome::ServerError, 2);
    assert_true($v instanceof Verdict, 'spent allowance stops the retry');
}
