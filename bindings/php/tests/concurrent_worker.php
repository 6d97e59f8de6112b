<?php

declare(strict_types=1);

/*
 * One of the processes of test_concurrent_processes_against_one_policy (g_concurrent_test.php).
 *
 *   php -d ffi.enable=1 concurrent_worker.php POLICY_FILE WORKER_ID ITERATIONS BARRIER_FILE
 *
 * Waits for BARRIER_FILE (so that all workers start together), then, ITERATIONS times: fills the
 * class's concurrency limit and checks that the next admission is refused exactly there; charges a
 * budget one lookup at a time and checks that the refusal comes exactly at the limit, with the right
 * verdict; reserves, settles, enters levels, makes a child. Prints one JSON line with its counts;
 * exits 1 with a message on stderr at the first broken invariant.
 *
 * Engines are per process: every number checked here is this process's own (shared-memory limits
 * across processes are a later step), so the invariants hold exactly whatever the others do.
 */

require __DIR__ . '/../src/autoload.php';

use Costguard\{Engine, Outcome, Reason, RefusedException};

[, $policy, $id, $iterations, $barrier] = $argv + [null, null, null, null, null];
$iterations = (int) $iterations;

function broken(string $what): never
{
    global $id;
    fwrite(STDERR, "worker {$id}: {$what}\n");
    exit(1);
}

$engine = Engine::fromFile($policy);
$lookups = $engine->counter('file_lookups');
$limit = $engine->begin('w', "probe-{$id}")->remaining($lookups);
$deadline = microtime(true) + 30;
while (!file_exists($barrier)) {
    if (microtime(true) > $deadline) {
        broken('the barrier never opened');
    }
    usleep(1000);
}
$started = microtime(true);

$counts = ['admitted' => 0, 'admission_refusals' => 0, 'charges' => 0, 'charge_refusals' => 0];
for ($i = 0; $i < $iterations; $i++) {
    // Admission: exactly `concurrency` (4) grants, the fifth refused.
    $grants = [];
    for ($k = 0; $k < 4; $k++) {
        $grants[] = $engine->admit('w', "w{$id}-{$i}-{$k}", key: "client-{$k}");
        $counts['admitted']++;
    }
    try {
        $engine->admit('w', "w{$id}-{$i}-over");
        broken("iteration {$i}: a fifth request was admitted over a concurrency of 4");
    } catch (RefusedException $e) {
        if ($e->verdict->reason !== Reason::ConcurrencyLimit) {
            broken("iteration {$i}: refused with {$e->verdict->reason->name}, not ConcurrencyLimit");
        }
        $counts['admission_refusals']++;
    }

    // Budget: one lookup at a time, refused exactly at the limit.
    $budget = $grants[0]->budget();
    $n = 0;
    while (($v = $budget->tryCharge($lookups)) === null) {
        $n++;
        if ($n > $limit) {
            broken("iteration {$i}: charged {$n} lookups over a limit of {$limit}");
        }
    }
    $counts['charges'] += $n;
    $counts['charge_refusals']++;
    if ($n !== $limit || $v->reason !== Reason::LimitExceeded || $v->used !== $limit || $v->limit !== $limit
        || $v->requestId !== "w{$id}-{$i}-0" || $v->dimension !== 'file_lookups') {
        broken("iteration {$i}: refused after {$n} lookups with {$v}");
    }

    // Reserve, settle, levels and a child, on the second grant's budget.
    $b = $grants[1]->budget();
    $r = $b->reserve('db_queries', 10);
    $r->settle(4);
    $g = $b->enter('depth', 2);
    $child = $b->child();
    $child->charge('db_queries', 6);
    if ($b->used('db_queries') !== 10 || $b->level('depth') !== 2) {
        broken("iteration {$i}: reserve/settle/child/level accounting is off");
    }
    unset($g, $child, $r);
    if ($b->level('depth') !== 0) {
        broken("iteration {$i}: the level was not left");
    }

    foreach ($grants as $k => $grant) {
        $grant->finish($k === 3 ? Outcome::ClientError : Outcome::Success);
    }
    unset($grants, $budget, $b);
    if ($i === intdiv($iterations, 2)) {
        $engine->reloadFile($policy); // every process reads the same file at about the same time
    }
}

foreach ($engine->stats()['classes'] as $c) {
    if ($c['class'] === 'w' && $c['in_flight'] !== 0) {
        broken("{$c['in_flight']} requests still in flight at the end");
    }
}
echo json_encode(['worker' => (int) $id, 'pid' => getmypid(), 'started' => $started, 'finished' => microtime(true), 'limit' => $limit, 'generation' => $engine->generation()] + $counts), "\n";
