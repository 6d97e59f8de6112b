<?php

declare(strict_types=1);

use Costguard\{Budget, HeaderException, Header, InvalidArgumentException, InvalidHandleException, LevelGuard, Reason, RefusedException, Reservation, Retry, Unit, Verdict};

function test_charge_is_refused_exactly_at_the_limit(): void
{
    $e = test_engine();
    $b = $e->begin('t', 'req-1');
    for ($i = 0; $i < 10; $i++) {
        $b->charge('file_lookups');
    }
    $ex = assert_throws(RefusedException::class, fn () => $b->charge('file_lookups'));
    $v = $ex->verdict;
    assert_same(Reason::LimitExceeded, $v->reason);
    assert_same('file_lookups', $v->dimension);
    assert_same('t', $v->className);
    assert_same('req-1', $v->requestId);
    assert_same(1, $v->requested);
    assert_same(10, $v->used);
    assert_same(10, $v->limit);
    assert_same(Unit::Count, $v->unit);
    assert_same(1, $ex->getCode(), 'status REFUSED');
    assert_same((string) $v, $ex->getMessage(), 'the message is the verdict sentence');
    assert_contains('req-1', (string) $v);
    assert_contains('file_lookups', $v->describe());
    assert_same(10, $b->used('file_lookups'), 'nothing charged by the refusal');
    assert_same(0, $b->remaining('file_lookups'));
    assert_true($b->isCancelled(), 'a refused charge cancels the budget');
}

function test_try_charge_returns_null_or_the_verdict(): void
{
    $e = test_engine();
    $b = $e->begin('t', 'r');
    $lookups = $e->counter('file_lookups');
    assert_same(null, $b->tryCharge($lookups, 4));
    assert_same(null, $b->tryCharge('file_lookups', 6));
    $v = $b->tryCharge($lookups);
    assert_true($v instanceof Verdict, 'a verdict');
    assert_same(Reason::LimitExceeded, $v->reason);
    $v = $b->tryCharge('db_queries', 6);
    assert_same(Reason::CannotFit, $v->reason, 'more than the limit can never fit');
    assert_same(Retry::Never, $v->retry);
    assert_same(false, $v->isRetryable());
    assert_same(null, $v->retryAfter);
    assert_same(6, $v->requested);
    assert_same(5, $v->limit);
    $json = json_encode($v);
    assert_contains('"reason":"cannot_fit"', $json);
    assert_throws(InvalidArgumentException::class, fn () => $b->tryCharge($lookups, -1));
}

function test_byte_counters_report_bytes(): void
{
    $b = test_engine()->begin('t', 'r');
    $b->charge('output_bytes', 1000);
    $v = $b->tryCharge('output_bytes', 100);
    assert_same(Unit::Bytes, $v->unit);
    assert_same(1024, $v->limit);
}

function test_charge_many_is_all_or_nothing(): void
{
    $e = test_engine();
    $b = $e->begin('t', 'r');
    $b->chargeMany(['file_lookups' => 2, 'db_queries' => 2]);
    $b->chargeMany([[$e->counter('file_lookups'), 1], ['db_queries', 1]]);
    $ex = assert_throws(RefusedException::class, fn () => $b->chargeMany(['file_lookups' => 1, 'db_queries' => 3]));
    assert_same('db_queries', $ex->verdict->dimension);
    assert_same(3, $b->used('file_lookups'), 'the lookup was not charged either');
    assert_same(3, $b->used('db_queries'));
    assert_same(null, $b->tryChargeMany([]), 'nothing to charge');
    assert_true($b->tryChargeMany(['db_queries' => 5]) instanceof Verdict, 'refused');
}

function test_refund_gives_back_at_most_what_was_used(): void
{
    $b = test_engine()->begin('t', 'r');
    $b->charge('file_lookups', 5);
    assert_same(2, $b->refund('file_lookups', 2));
    assert_same(3, $b->used('file_lookups'));
    assert_same(3, $b->refund('file_lookups', 100), 'never below zero');
    assert_same(0, $b->used('file_lookups'));
}

function test_reserve_settle_cancel_and_drop(): void
{
    $e = test_engine();
    $b = $e->begin('t', 'r');
    $r = $b->reserve('file_lookups', 8);
    assert_true($r instanceof Reservation, 'reservation');
    assert_same(8, $b->used('file_lookups'), 'the estimate is charged');
    $r->settle(3);
    assert_same(3, $b->used('file_lookups'), 'settled to the actual');
    assert_true($r->isClosed(), 'settle finishes it');
    assert_throws(InvalidHandleException::class, fn () => $r->settle(1));

    $r = $b->reserve('file_lookups', 4);
    $r->cancel();
    assert_same(3, $b->used('file_lookups'), 'cancel refunds it all');

    $r = $b->reserve('file_lookups', 2);
    unset($r); // destroyed: keeps the estimate charged, as Rust's drop
    assert_same(5, $b->used('file_lookups'));

    $ex = assert_throws(RefusedException::class, fn () => $b->reserve('file_lookups', 11));
    assert_same(Reason::CannotFit, $ex->verdict->reason);
    $ex = assert_throws(RefusedException::class, fn () => $b->reserve('file_lookups', 6));
    assert_same(Reason::LimitExceeded, $ex->verdict->reason);

    // Settling above the estimate charges the extra, which may be refused.
    $r = $b->reserve('file_lookups', 2);
    $v = $r->trySettle(9);
    assert_true($v instanceof Verdict, 'extra beyond the limit refused');
    assert_true($r->isClosed(), 'settle frees the reservation whatever the result');
}

function test_levels_are_entered_and_left_with_guards(): void
{
    $e = test_engine();
    $b = $e->begin('t', 'r');
    $g1 = $b->enter('depth');
    $g2 = $b->enter($e->level('depth'), 2);
    assert_true($g2 instanceof LevelGuard, 'guard');
    assert_same(3, $b->level('depth'));
    $ex = assert_throws(RefusedException::class, fn () => $b->enter('depth'));
    assert_same('depth', $ex->verdict->dimension);
    $g2->leave();
    $g2->leave(); // idempotent
    assert_same(1, $b->level('depth'));
    unset($g1);
    assert_same(0, $b->level('depth'), 'destroyed guard leaves');
    $peak = array_values(array_filter($b->reportArray()['dimensions'], fn ($d) => $d['name'] === 'depth'))[0];
    assert_same(3, $peak['peak'], 'the report keeps the peak');
}

function test_child_budgets_charge_their_parent_and_time_out_first(): void
{
    $e = test_engine();
    $parent = $e->begin('t', 'r');
    $child = $parent->child();
    assert_true($child instanceof Budget, 'child');
    $child->charge('file_lookups', 4);
    assert_same(4, $parent->used('file_lookups'), 'charged to the parent too');
    $parent->charge('file_lookups', 5);
    assert_same(9_000_000_000, $child->remainingNs(), 'deadline = parent deadline - child margin');
    $other = $parent->child('other');
    assert_same(1.0, $other->remainingSeconds(), "the other class's own wall time is earlier");
    assert_same(1, $other->remaining('file_lookups'), 'the smaller of its own limit and what the tree has left');
    $ex = assert_throws(RefusedException::class, fn () => $child->charge('file_lookups', 2));
    assert_same(9, $parent->used('file_lookups'), 'refused in the child: nothing charged to the parent');
    assert_true($parent->isCancelled(), 'the refusal cancels the tree');
    assert_throws(RefusedException::class, fn () => $parent->child(), 'file_lookups'); // a cancelled budget makes no children

    $e->advanceClock(9.5);
    $fresh = $e->begin('t', 'r2');
    $e->advanceClock(9.5);
    $ex = assert_throws(RefusedException::class, fn () => $fresh->child());
    assert_same(Reason::InsufficientTime, $ex->verdict->reason, 'less than the child margin left');
}

function test_deadline_check_and_cancel(): void
{
    $e = test_engine();
    $b = $e->begin('t', 'r');
    $b->check();
    assert_same(null, $b->tryCheck());
    assert_same(false, $b->expired());
    assert_same(false, $b->isCancelled());
    $e->advanceClock(10.0);
    assert_same(true, $b->expired());
    assert_same(0, $b->remainingNs());
    $ex = assert_throws(RefusedException::class, fn () => $b->check());
    assert_same(Reason::DeadlineExceeded, $ex->verdict->reason);
    assert_same(true, $b->isCancelled(), 'a deadline check cancels');

    $b2 = $e->begin('t', 'r2');
    $kid = $b2->child();
    $b2->cancel();
    assert_same(true, $b2->isCancelled());
    assert_same(true, $kid->isCancelled(), 'reaches live descendants');
    assert_same(Reason::Cancelled, $b2->tryCheck()?->reason);
    $b2->charge('file_lookups'); // cancellation is advice: charges that fit still succeed
}

function test_retry_allowance_is_shared_by_the_tree(): void
{
    $b = test_engine()->begin('t', 'r');
    $child = $b->child();
    assert_same(null, $child->tryRetry());
    $v = $b->tryRetry();
    assert_true($v instanceof Verdict, 'the retry allowance of 1 is spent by the child');
    assert_same('retries', $v->dimension);
}

function test_header_propagation_can_only_tighten(): void
{
    $e = test_engine();
    $b = $e->begin('t', 'edit-9');
    $b->charge('file_lookups', 7);
    $header = $b->toHeader();
    assert_true(str_starts_with($header, 'cg1;'), "header {$header}");
    assert_contains('id=edit-9', $header);
    $fields = Header::decode($header);
    assert_same('edit-9', $fields['request_id']);
    assert_same(3, $fields['allowances']['file_lookups']);
    $callee = $e->begin('other', 'edit-9', $header);
    assert_same(3, $callee->remaining('file_lookups'), "min of the callee's 3 and the header's 3");
    $callee2 = $e->begin('t', 'edit-9', $header);
    assert_same(3, $callee2->remaining('file_lookups'), "the header's 3, not the policy's 10");
    $ex = assert_throws(HeaderException::class, fn () => Header::decode('cg9;nonsense'));
    assert_same(8, $ex->getCode());
    assert_throws(HeaderException::class, fn () => $e->begin('t', 'x', 'cg1;id=;;'));
    // A header comes from the network: a stray byte that is not UTF-8 makes it malformed too.
    $ex = assert_throws(HeaderException::class, fn () => Header::decode("cg1;id=\xff"));
    assert_true(str_contains($ex->getMessage(), 'not UTF-8 text (byte 7)'), $ex->getMessage());
    assert_throws(HeaderException::class, fn () => $e->begin('t', 'x', "cg1;id=\xff"));
    assert_same('costguard-budget', Header::NAME);

    // The callee answers with what it used; the caller charges it, and has that much less left.
    $callee->charge('file_lookups', 2);
    $usage = $callee->usage();
    assert_same('cgu1;file_lookups=2', $usage);
    $b->chargeUsage($usage);
    assert_same(1, $b->remaining('file_lookups'));
    $v = $b->tryChargeUsage('cgu1;file_lookups=2');
    assert_same(Reason::LimitExceeded, $v->reason);
    assert_same(0, $b->remaining('file_lookups'), 'the overrun uses up what was left');
    assert_throws(HeaderException::class, fn () => $b->chargeUsage('cg1;file_lookups=1'));
    assert_throws(HeaderException::class, fn () => $b->chargeUsage("cgu1;file_lookups=\xff"));
}

function test_limit_report_as_text_json_and_array(): void
{
    $b = test_engine()->begin('t', 'rep-1');
    $b->charge('file_lookups', 10);
    $b->tryCharge('file_lookups');
    $text = $b->report();
    assert_contains('limit report for request rep-1', $text);
    assert_contains('file_lookups', $text);
    assert_contains('10 of 10', $text);
    $arr = $b->reportArray();
    assert_same('rep-1', $arr['request_id']);
    assert_same('t', $arr['class']);
    assert_same($arr, json_decode($b->reportJson(), true));
}

function test_a_closed_budget_refuses_without_calling_the_library(): void
{
    $e = test_engine();
    $b = $e->begin('t', 'r');
    $b->close();
    foreach ([
        fn () => $b->charge('file_lookups'),
        fn () => $b->tryCharge('file_lookups'),
        fn () => $b->chargeMany(['file_lookups' => 1]),
        fn () => $b->used('file_lookups'),
        fn () => $b->isCancelled(),
        fn () => $b->check(),
        fn () => $b->toHeader(),
        fn () => $b->report(),
        fn () => $b->child(),
        fn () => $b->reserve('file_lookups', 1),
        fn () => $b->enter('depth'),
    ] as $i => $call) {
        $ex = assert_throws(InvalidHandleException::class, $call);
        assert_contains('already closed', $ex->getMessage(), "call {$i}");
    }
}

function test_guards_keep_their_budget_alive(): void
{
    $e = test_engine();
    $b = $e->begin('t', 'r');
    $r = $b->reserve('file_lookups', 5);
    $g = $b->enter('depth');
    unset($b); // the reservation and the guard still reference the budget
    assert_same(1, $g->budget->level('depth'));
    $r->settle(1);
    assert_same(1, $r->budget->used('file_lookups'));
}
