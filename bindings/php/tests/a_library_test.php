<?php

declare(strict_types=1);

use Costguard\{AttemptOutcome, Library, Outcome, Priority, Reason, Retry, Status, Unit, Verdict};

function test_library_loads_and_reports_versions(): void
{
    $lib = Library::load();
    assert_true(is_file($lib->path) || $lib->path === 'libcostguard_ffi.so', "library path {$lib->path}");
    assert_same(2, $lib->ffi->costguard_abi_version(), 'abi version');
    assert_true((bool) preg_match('/^\d+\.\d+\.\d+/', Library::version()), 'version ' . Library::version());
    assert_same($lib, Library::load('/nonexistent.so'), 'later loads return the same instance');
}

function test_status_descriptions_are_static_and_never_null(): void
{
    foreach (Status::cases() as $s) {
        assert_true(Library::describe($s->value) !== '', "describe {$s->name}");
    }
    assert_same('unknown status', Library::describe(9999), 'unknown status');
}

function test_reason_labels_match_the_library(): void
{
    $ffi = Library::ffi();
    foreach (Reason::cases() as $r) {
        assert_same($r->label(), $ffi->costguard_reason_name($r->value), "reason {$r->value}");
    }
    assert_same('unknown', $ffi->costguard_reason_name(999), 'unknown reason');
}

function test_enum_values_match_the_header_defines(): void
{
    $header = dirname(__DIR__, 3) . '/include/costguard.h';
    if (!is_file($header)) {
        echo "      (skipped: no include/costguard.h)\n";
        return;
    }
    $defines = Library::definesFromHeader(file_get_contents($header));
    $expect = ['COSTGUARD_ENGINE_MANUAL_CLOCK' => 1, 'COSTGUARD_ADMIT_WAIT' => 1];
    foreach (Status::cases() as $c) {
        $expect[$c->cName()] = $c->value;
    }
    foreach (Reason::cases() as $c) {
        $expect['COSTGUARD_REASON_' . strtoupper($c->label())] = $c->value;
    }
    foreach (Retry::cases() as $c) {
        $expect['COSTGUARD_RETRY_' . strtoupper($c->name)] = $c->value;
    }
    foreach (Unit::cases() as $c) {
        $expect['COSTGUARD_UNIT_' . strtoupper($c->name)] = $c->value;
    }
    foreach (Priority::cases() as $c) {
        $expect['COSTGUARD_PRIORITY_' . strtoupper($c->name)] = $c->value;
    }
    $snake = fn (UnitEnum $c) => strtoupper(preg_replace('/(?<!^)[A-Z]/', '_$0', $c->name));
    foreach (Outcome::cases() as $c) {
        $expect['COSTGUARD_OUTCOME_' . $snake($c)] = $c->value;
    }
    foreach (AttemptOutcome::cases() as $c) {
        $expect['COSTGUARD_ATTEMPT_' . $snake($c)] = $c->value;
    }
    $missing = [];
    foreach ($expect as $name => $value) {
        if (!array_key_exists($name, $defines)) {
            $missing[] = $name;
            continue;
        }
        assert_same($value, $defines[$name], $name);
    }
    assert_same([], $missing, 'constants of API.md missing from the header as #define');
}

function test_generated_cdef_matches_the_header(): void
{
    $header = dirname(__DIR__, 3) . '/include/costguard.h';
    if (!is_file($header)) {
        echo "      (skipped: no include/costguard.h)\n";
        return;
    }
    $cmd = escapeshellarg(PHP_BINARY) . ' ' . escapeshellarg(dirname(__DIR__) . '/tools/gen-cdef.php') . ' --check 2>&1';
    exec($cmd, $out, $rc);
    assert_same(0, $rc, 'gen-cdef --check: ' . implode("\n", $out));
    // The stripped header itself is accepted by FFI::cdef (loading it at run time works too).
    FFI::cdef(Library::cdefFromHeader(file_get_contents($header)), Library::load()->path);
}

function test_cdef_stripping_drops_preprocessor_lines_and_guards(): void
{
    $h = "#ifndef X\n#define X\n#include <stdint.h>\n#define LONG 1 \\\n  + 2\n#ifdef __cplusplus\nextern \"C\" {\n#endif\ntypedef uint32_t s;\n#ifdef __cplusplus\n}  // extern \"C\"\n#endif\n#endif\n";
    assert_same("typedef uint32_t s;\n", Library::cdefFromHeader($h));
    // cbindgen's fixed-type enum: C23/C++ get `: uint32_t`, C11 gets a typedef to uint32_t.
    $h = "enum e\n#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L\n  : uint32_t\n#endif // x\n {\n  A = 0,\n};\n#ifndef __cplusplus\n#if __STDC_VERSION__ >= 202311L\ntypedef enum e e;\n#else\ntypedef uint32_t e;\n#endif\n#endif // __cplusplus\n";
    assert_same("enum e\n {\n  A = 0,\n};\ntypedef uint32_t e;\n", Library::cdefFromHeader($h));
    assert_same(['COSTGUARD_OK' => 0, 'COSTGUARD_X' => 16], Library::definesFromHeader("#define COSTGUARD_OK 0\n#define COSTGUARD_X 0x10u\n"));
}

function test_library_candidates_prefer_the_environment(): void
{
    putenv('COSTGUARD_LIB=/somewhere/libcostguard_ffi.so');
    try {
        assert_same('/somewhere/libcostguard_ffi.so', Library::candidates()[0]);
        assert_same('/somewhere/libcostguard_ffi.so', Library::findLibrary(), 'an explicit path is not second-guessed');
    } finally {
        putenv('COSTGUARD_LIB');
    }
    assert_true(str_ends_with(Library::candidates()[array_key_last(Library::candidates())], 'libcostguard_ffi.so'), 'system paths last');
}

function test_http_status_maps_to_attempt_outcomes(): void
{
    assert_same(AttemptOutcome::Success, AttemptOutcome::fromHttp(200));
    assert_same(AttemptOutcome::ClientError, AttemptOutcome::fromHttp(404));
    assert_same(AttemptOutcome::ServerError, AttemptOutcome::fromHttp(500));
    assert_same(AttemptOutcome::Refused, AttemptOutcome::fromHttp(503));
    assert_same(AttemptOutcome::Refused, AttemptOutcome::fromHttp(429));
}
