<?php

declare(strict_types=1);

use Costguard\Library;

const WORKER_POLICY = <<<'TOML'
[dimensions]
file_lookups = "counter"
db_queries   = "counter"
depth        = "level"

[classes.w]
wall_time = "60s"
limits = { file_lookups = 250, db_queries = 10, depth = 4 }

[classes.w.admission]
concurrency = 4
per_key     = { concurrency = 1, max_keys = 16 }
TOML;

/**
 * Several php processes at once against one policy file, each admitting and charging in a loop and
 * checking its own invariants (tests/concurrent_worker.php). Engines are per process: admission
 * limits and budgets are each process's own, so each worker asserts exact per-process numbers
 * (refusal exactly at the concurrency limit and exactly at the lookup limit), and the parent asserts
 * that every worker exited 0 with the expected totals, that they really overlapped in time, and that
 * nothing crashed. Limits shared across processes (shared memory) are a later step.
 */
function test_concurrent_processes_against_one_policy(): void
{
    $workers = 4;
    $iterations = 200;
    $policy = temp_file(WORKER_POLICY);
    $barrier = temp_file('', '.barrier');
    unlink($barrier);
    $env = getenv();
    $env['COSTGUARD_LIB'] = Library::load()->path;
    $procs = [];
    for ($w = 0; $w < $workers; $w++) {
        $cmd = [PHP_BINARY, '-d', 'ffi.enable=1', __DIR__ . '/concurrent_worker.php', $policy, (string) $w, (string) $iterations, $barrier];
        $p = proc_open($cmd, [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, null, $env);
        assert_true(is_resource($p), "worker {$w} started");
        stream_set_blocking($pipes[1], false);
        stream_set_blocking($pipes[2], false);
        $procs[$w] = ['proc' => $p, 'pipes' => $pipes, 'out' => '', 'err' => ''];
    }
    usleep(200_000); // let every worker load the library and the policy, then open the barrier
    touch($barrier);

    $deadline = microtime(true) + 120;
    $running = $workers;
    $codes = [];
    while ($running > 0) {
        if (microtime(true) > $deadline) {
            foreach ($procs as $p) {
                proc_terminate($p['proc']);
            }
            fail('workers did not finish within 120 s');
        }
        $read = [];
        foreach ($procs as $w => $p) {
            if (!isset($codes[$w])) {
                $read[] = $p['pipes'][1];
                $read[] = $p['pipes'][2];
            }
        }
        $write = $except = null;
        @stream_select($read, $write, $except, 0, 50_000);
        foreach ($procs as $w => &$p) {
            if (isset($codes[$w])) {
                continue;
            }
            $p['out'] .= stream_get_contents($p['pipes'][1]);
            $p['err'] .= stream_get_contents($p['pipes'][2]);
            $status = proc_get_status($p['proc']);
            if (!$status['running']) {
                $p['out'] .= stream_get_contents($p['pipes'][1]);
                $p['err'] .= stream_get_contents($p['pipes'][2]);
                $codes[$w] = $status['exitcode'];
                fclose($p['pipes'][1]);
                fclose($p['pipes'][2]);
                proc_close($p['proc']);
                $running--;
            }
        }
        unset($p);
    }

    $summaries = [];
    foreach ($procs as $w => $p) {
        assert_same(0, $codes[$w], "worker {$w} exit code (stderr: " . trim($p['err']) . ')');
        assert_same('', trim($p['err']), "worker {$w} stderr");
        $s = json_decode(trim($p['out']), true);
        assert_true(is_array($s), "worker {$w} printed its summary: " . var_export($p['out'], true));
        assert_same($w, $s['worker']);
        assert_same(250, $s['limit']);
        assert_same(4 * $iterations, $s['admitted'], "worker {$w} admitted");
        assert_same($iterations, $s['admission_refusals'], "worker {$w}: one refusal per iteration, at the limit");
        assert_same(250 * $iterations, $s['charges'], "worker {$w} charges");
        assert_same($iterations, $s['charge_refusals'], "worker {$w} charge refusals");
        assert_same(2, $s['generation'], "worker {$w} reloaded once");
        $summaries[] = $s;
    }
    assert_same($workers, count(array_unique(array_column($summaries, 'pid'))), 'separate processes');
    // They overlapped: the last to start started before the first to finish.
    $lastStart = max(array_column($summaries, 'started'));
    $firstEnd = min(array_column($summaries, 'finished'));
    assert_true($lastStart < $firstEnd, sprintf('workers overlapped in time (last start %.3f, first end %.3f)', $lastStart, $firstEnd));
}
