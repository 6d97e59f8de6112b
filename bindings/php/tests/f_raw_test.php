<?php

declare(strict_types=1);

// The C ABI itself, through raw FFI calls: what the classes prevent (a freed handle cannot be reached
// through a closed object) must still be safe when PHP code calls the library directly.

use Costguard\{Engine, InvalidHandleException, Library, Status};

/** A handle value of type $type with the given bits. */
function raw_handle(string $type, int $bits): FFI\CData
{
    $h = Library::ffi()->new($type);
    $h->bits = $bits;
    return $h;
}

/** A copy of a handle's value (the wrapper's own CData is left alone). */
function raw_copy(string $type, FFI\CData $h): FFI\CData
{
    return raw_handle($type, $h->bits);
}

function test_raw_made_up_handles_are_invalid(): void
{
    $ffi = Library::ffi();
    $v = $ffi->new('costguard_verdict');
    $e = test_engine();
    $c = $e->counter('file_lookups')->handle;
    foreach ([1, 2, 0x7fffffff, -1, PHP_INT_MIN, 0x0123456789abcdef] as $bits) {
        $b = raw_handle('costguard_budget', $bits);
        assert_same(Status::InvalidHandle->value, $ffi->costguard_budget_charge($b, $c, 1, FFI::addr($v)), "charge on made-up budget {$bits}");
        assert_same(Status::InvalidHandle->value, $ffi->costguard_budget_free($b), "free of made-up budget {$bits}");
        assert_same(Status::InvalidHandle->value, $ffi->costguard_engine_free(raw_handle('costguard_engine', $bits)), "free of made-up engine {$bits}");
        assert_same(Status::InvalidHandle->value, $ffi->costguard_grant_finish(raw_handle('costguard_grant', $bits), 0), "finish of made-up grant {$bits}");
        assert_same(Status::InvalidHandle->value, $ffi->costguard_attempt_free(raw_handle('costguard_attempt', $bits)), "free of made-up attempt {$bits}");
    }
    // The wrapper turns the status into an exception.
    $ex = assert_throws(InvalidHandleException::class, fn () => Library::load()->fail($ffi->costguard_budget_cancel(raw_handle('costguard_budget', 42)), 'cancel'));
    assert_same(3, $ex->getCode());
}

function test_raw_made_up_names_are_invalid_not_undefined(): void
{
    $ffi = Library::ffi();
    $e = test_engine();
    $b = $e->begin('t', 'r');
    $out = $ffi->new('uint64_t');
    foreach ([1, 12345, -1] as $bits) {
        $st = $ffi->costguard_budget_used($b->handle(), raw_handle('costguard_counter', $bits), FFI::addr($out));
        assert_true(in_array($st, [Status::InvalidHandle->value, Status::UnknownName->value], true), "made-up counter {$bits}: status {$st}");
    }
}

function test_raw_use_after_free_and_double_free(): void
{
    $ffi = Library::ffi();
    $e = test_engine();
    $out = $ffi->new('costguard_budget');
    $v = $ffi->new('costguard_verdict');
    $cls = $e->cls('t')->handle;
    assert_same(0, $ffi->costguard_budget_begin($e->handle(), $cls, 'raw', 3, null, 0, FFI::addr($out), FFI::addr($v)));
    $c = $e->counter('file_lookups')->handle;
    assert_same(0, $ffi->costguard_budget_charge($out, $c, 1, FFI::addr($v)));
    assert_same(0, $ffi->costguard_budget_free($out));
    assert_same(Status::InvalidHandle->value, $ffi->costguard_budget_charge($out, $c, 1, FFI::addr($v)), 'use after free');
    assert_same(Status::InvalidHandle->value, $ffi->costguard_budget_free($out), 'double free');
    // A new budget does not revive the old handle value (generation check).
    $out2 = $ffi->new('costguard_budget');
    assert_same(0, $ffi->costguard_budget_begin($e->handle(), $cls, 'raw2', 4, null, 0, FFI::addr($out2), FFI::addr($v)));
    assert_same(Status::InvalidHandle->value, $ffi->costguard_budget_charge($out, $c, 1, FFI::addr($v)), 'old handle stays dead');
    assert_same(0, $ffi->costguard_budget_free($out2));

    // Freed through the wrapper, then used raw with a copy of the value.
    $b = $e->begin('t', 'wrapped');
    $copy = raw_copy('costguard_budget', $b->handle());
    $b->close();
    assert_same(Status::InvalidHandle->value, $ffi->costguard_budget_cancel($copy));

    // Engines too.
    $e2 = test_engine();
    $ecopy = raw_copy('costguard_engine', $e2->handle());
    $e2->close();
    $gen = $ffi->new('uint64_t');
    assert_same(Status::InvalidHandle->value, $ffi->costguard_engine_generation($ecopy, FFI::addr($gen)));
    assert_same(Status::InvalidHandle->value, $ffi->costguard_engine_free($ecopy));
}

function test_raw_handles_of_the_wrong_kind_are_invalid(): void
{
    $ffi = Library::ffi();
    $e = test_engine();
    $b = $e->begin('t', 'r');
    $g = $e->admit('t', 'g');
    $asEngine = raw_handle('costguard_engine', $b->handle()->bits);
    $gen = $ffi->new('uint64_t');
    assert_same(Status::InvalidHandle->value, $ffi->costguard_engine_generation($asEngine, FFI::addr($gen)), 'a budget used as an engine');
    $asBudget = raw_handle('costguard_budget', $g->handle()->bits);
    assert_same(Status::InvalidHandle->value, $ffi->costguard_budget_cancel($asBudget), 'a grant used as a budget');
    $asGrant = raw_handle('costguard_grant', $b->handle()->bits);
    assert_same(Status::InvalidHandle->value, $ffi->costguard_grant_free($asGrant), 'a budget freed as a grant');
    $b->charge('file_lookups'); // both still fine
    $g->finish();
}

function test_raw_null_handles(): void
{
    $ffi = Library::ffi();
    foreach (['engine', 'budget', 'grant', 'attempt', 'reservation', 'level_guard'] as $kind) {
        $fn = "costguard_{$kind}_free";
        assert_same(0, $ffi->$fn(raw_handle("costguard_{$kind}", 0)), "{$fn}(null) is a no-op");
    }
    assert_same(Status::NullArgument->value, $ffi->costguard_budget_cancel(raw_handle('costguard_budget', 0)), 'use of the null handle');
    assert_same(Status::NullArgument->value, $ffi->costguard_engine_new_from_str('x', 1, 0, null), 'NULL out pointer');
}

function test_raw_text_buffers_report_the_size_needed(): void
{
    $ffi = Library::ffi();
    $e = test_engine();
    $b = $e->begin('t', 'txt');
    $len = $ffi->new('size_t');
    assert_same(Status::BufferTooSmall->value, $ffi->costguard_budget_to_header($b->handle(), null, 0, FFI::addr($len)), 'size query');
    $need = $len->cdata;
    $header = $b->toHeader();
    assert_same(strlen($header) + 1, $need, 'length + 1');
    $small = $ffi->new('char[4]');
    FFI::memcpy($small, 'zzzz', 4);
    assert_same(Status::BufferTooSmall->value, $ffi->costguard_budget_to_header($b->handle(), $small, 4, FFI::addr($len)));
    assert_same('zzzz', FFI::string($small, 4), 'nothing written to a small buffer');
    $buf = $ffi->new("char[{$need}]");
    assert_same(0, $ffi->costguard_budget_to_header($b->handle(), $buf, $need, FFI::addr($len)));
    assert_same(strlen($header), $len->cdata);
    assert_same($header, FFI::string($buf));
}

function test_raw_invalid_utf8_and_outputs_only_on_success(): void
{
    $ffi = Library::ffi();
    $out = raw_handle('costguard_engine', 777);
    $st = $ffi->costguard_engine_new_from_str("\xff\xfe", 2, 0, FFI::addr($out));
    assert_same(Status::InvalidUtf8->value, $st);
    assert_same(777, $out->bits, 'out untouched on failure');
    $e = test_engine();
    $c = raw_handle('costguard_counter', 555);
    assert_same(Status::InvalidUtf8->value, $ffi->costguard_engine_counter($e->handle(), "\xc3", 1, FFI::addr($c)));
    assert_same(555, $c->bits);
    // The verdict is written only on REFUSED.
    $v = $ffi->new('costguard_verdict');
    $v->reason = 99;
    $b = $e->begin('t', 'r');
    assert_same(0, $ffi->costguard_budget_charge($b->handle(), $e->counter('file_lookups')->handle, 1, FFI::addr($v)));
    assert_same(99, $v->reason, 'verdict untouched on OK');
    assert_same(1, $ffi->costguard_budget_charge($b->handle(), $e->counter('file_lookups')->handle, 100, FFI::addr($v)));
    assert_same(1, $v->reason, 'CannotFit written on REFUSED');
    assert_same(0, $ffi->costguard_budget_charge($b->handle(), $e->counter('file_lookups')->handle, 1, null), 'verdict pointer is nullable');
}

function test_raw_last_error_is_per_call(): void
{
    $lib = Library::load();
    try {
        Engine::fromString("[classes.x]\nlimits = { y = 1 }\n");
        fail('should not build');
    } catch (Costguard\PolicyException $e) {
        assert_true($lib->lastError() !== '', 'last error kept after the failing call');
    }
}
