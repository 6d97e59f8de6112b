<?php

declare(strict_types=1);

namespace Costguard;

use FFI;
use FFI\CData;

/**
 * Finds and loads libcostguard_ffi.so once per process, and holds the few buffers every call shares.
 *
 * Where the library comes from, first match wins:
 *  1. the path given to {@see Library::load()}, or the environment variable COSTGUARD_LIB;
 *  2. the repository's build directories: $CARGO_TARGET_DIR/release, target/php/release,
 *     target/release, target/debug (relative to this checkout);
 *  3. the system: /usr/local/lib, /usr/lib, then the bare name for the dynamic loader's own search.
 *
 * The C declarations come from src/costguard.ffi.h, generated from include/costguard.h by
 * tools/gen-cdef.php (FFI::cdef cannot read preprocessor lines). COSTGUARD_HEADER may point at a
 * costguard.h to parse instead; it is stripped the same way at load time.
 *
 * PHP runs one thread per process (NTS), so one verdict buffer and one text buffer serve every call.
 */
final class Library
{
    /** The ABI version this binding is written against (costguard_abi_version()). */
    public const ABI_VERSION = 2;
    /** UINT64_MAX as PHP sees it: FFI turns a uint64_t into a signed PHP int. */
    public const NONE = -1;

    private static ?Library $instance = null;

    /** The loaded library; every wrapper object keeps a reference so it outlives them at shutdown. */
    public readonly FFI $ffi;
    /** Where the library was loaded from. */
    public readonly string $path;
    /** costguard_verdict[1]: written only on COSTGUARD_REFUSED, read straight into a {@see Verdict}. */
    public readonly CData $verdict;
    /** uint64_t[1] and bool[1] for scalar out-parameters on hot paths. */
    public readonly CData $u64;
    public readonly CData $bool;
    /** size_t[1] for text lengths. */
    private CData $len;
    /** The shared text buffer; grows when the library asks for more. */
    private CData $buf;
    private int $cap;

    private function __construct(string $path, string $cdef)
    {
        if (!extension_loaded('ffi')) {
            throw new CostguardException('the PHP FFI extension is not loaded (install php-ffi or php8.2-cli)');
        }
        try {
            $this->ffi = FFI::cdef($cdef, $path);
        } catch (\FFI\Exception $e) {
            throw new CostguardException("cannot load {$path}: {$e->getMessage()} (is ffi.enable=1 set?)", 0, $e);
        }
        $this->path = $path;
        $this->verdict = $this->ffi->new('costguard_verdict[1]');
        $this->len = $this->ffi->new('size_t[1]');
        $this->u64 = $this->ffi->new('uint64_t[1]');
        $this->bool = $this->ffi->new('bool[1]');
        $this->cap = 4096;
        $this->buf = $this->ffi->new("char[{$this->cap}]");
        $abi = $this->ffi->costguard_abi_version();
        if ($abi !== self::ABI_VERSION) {
            throw new CostguardException("{$path} has ABI version {$abi}; this binding needs " . self::ABI_VERSION);
        }
    }

    /**
     * The process-wide library, loaded on first use. Pass a path (or set COSTGUARD_LIB) to choose the
     * .so; once loaded, later calls return the same instance and ignore the arguments.
     */
    public static function load(?string $libraryPath = null, ?string $headerPath = null): self
    {
        if (self::$instance === null) {
            $lib = $libraryPath ?? self::findLibrary();
            $header = $headerPath ?? (getenv('COSTGUARD_HEADER') ?: null);
            $cdef = $header !== null
                ? self::cdefFromHeader(self::readFile($header))
                : self::readFile(__DIR__ . '/costguard.ffi.h');
            self::$instance = new self($lib, $cdef);
        }
        return self::$instance;
    }

    /** The raw FFI object, for calls the classes do not wrap (and for tests of the C ABI itself). */
    public static function ffi(): FFI
    {
        return self::load()->ffi;
    }

    /** The library's version string, e.g. "0.1.0". */
    public static function version(): string
    {
        return self::ffi()->costguard_version();
    }

    /** Candidate paths, in search order (see the class comment). */
    public static function candidates(): array
    {
        $name = 'libcostguard_ffi.so';
        $repo = dirname(__DIR__, 3);
        $out = [];
        $env = getenv('COSTGUARD_LIB');
        if ($env !== false && $env !== '') {
            $out[] = $env;
        }
        $target = getenv('CARGO_TARGET_DIR');
        if ($target !== false && $target !== '') {
            $base = str_starts_with($target, '/') ? $target : "{$repo}/{$target}";
            $out[] = "{$base}/release/{$name}";
        }
        foreach (['target/php/release', 'target/release', 'target/debug'] as $dir) {
            $out[] = "{$repo}/{$dir}/{$name}";
        }
        foreach (['/usr/local/lib', '/usr/lib', '/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu'] as $dir) {
            $out[] = "{$dir}/{$name}";
        }
        return $out;
    }

    /** The first candidate that exists; else the bare name, left to the dynamic loader. */
    public static function findLibrary(): string
    {
        $env = getenv('COSTGUARD_LIB');
        if ($env !== false && $env !== '') {
            return $env; // explicit: do not fall back to another build silently
        }
        foreach (self::candidates() as $path) {
            if (is_file($path)) {
                return $path;
            }
        }
        return 'libcostguard_ffi.so';
    }

    /**
     * Turns cbindgen's costguard.h into what FFI::cdef accepts: keeps what a C11 compiler would see
     * of the conditionals (__cplusplus undefined, __STDC_VERSION__ 201112L, so no C++ extern "C"
     * guards and no C23 `enum : uint32_t`), and drops every preprocessor line (with continuations).
     */
    public static function cdefFromHeader(string $header): string
    {
        $out = [];
        $stack = []; // per open conditional: [active now, some branch taken]
        $active = true;
        $lines = preg_split('/\R/', $header);
        for ($i = 0, $n = count($lines); $i < $n; $i++) {
            $line = $lines[$i];
            $trim = trim($line);
            if (!str_starts_with($trim, '#')) {
                if ($active) {
                    $out[] = rtrim($line);
                }
                continue;
            }
            while (str_ends_with($trim, '\\') && $i + 1 < $n) {
                $trim = substr($trim, 0, -1) . ' ' . trim($lines[++$i]);
            }
            $directive = preg_replace('#\s*(//.*|/\*.*?\*/)\s*$#', '', $trim);
            if (preg_match('/^#\s*(if|ifdef|ifndef|elif|else|endif)\b\s*(.*)$/', $directive, $m)) {
                [, $kw, $cond] = $m;
                if ($kw === 'if' || $kw === 'ifdef' || $kw === 'ifndef') {
                    $value = match ($kw) {
                        'ifdef' => self::definedForC(trim($cond)),
                        'ifndef' => !self::definedForC(trim($cond)),
                        default => self::evalForC($cond),
                    };
                    $stack[] = [$active, $value];
                    $active = $active && $value;
                } elseif ($kw === 'elif' || $kw === 'else') {
                    [$outer, $taken] = end($stack);
                    $value = !$taken && ($kw === 'else' || self::evalForC($cond));
                    $stack[count($stack) - 1] = [$outer, $taken || $value];
                    $active = $outer && $value;
                } else {
                    [$active] = array_pop($stack) ?? [true];
                }
            }
            // #define, #include, #pragma: dropped (the constants are the PHP enums).
        }
        // Collapse the blank runs the dropped lines leave behind.
        return trim(preg_replace("/\n{3,}/", "\n\n", implode("\n", $out))) . "\n";
    }

    /** Whether a macro is defined for a C11 compiler reading the header (the include guard is not). */
    private static function definedForC(string $name): bool
    {
        return $name === '__STDC_VERSION__' || $name === '__STDC__';
    }

    /** Evaluates an #if condition for C11: only defined(), __cplusplus, __STDC_VERSION__ and integers. */
    private static function evalForC(string $cond): bool
    {
        $expr = preg_replace_callback('/defined\s*\(?\s*(\w+)\s*\)?/', fn ($m) => self::definedForC($m[1]) ? '1' : '0', $cond);
        $expr = str_replace('__STDC_VERSION__', '201112', $expr);
        $expr = preg_replace('/\b(\d+)[uUlL]+\b/', '$1', $expr);
        $expr = preg_replace('/\b[A-Za-z_]\w*\b/', '0', $expr); // undefined macros are 0
        if (!preg_match('/^[\d\s()|&!<>=+\-*]*$/', $expr)) {
            throw new CostguardException("cannot evaluate #if {$cond}");
        }
        return (bool) eval('return (' . ($expr === '' ? '0' : $expr) . ');');
    }

    /** Every integer `#define COSTGUARD_* value` and enumerator in a header, for the constant drift check. */
    public static function definesFromHeader(string $header): array
    {
        preg_match_all('/^\s*#define\s+(COSTGUARD_\w+)\s+\(?\s*((?:0x[0-9a-fA-F]+|\d+))[uUlL]*\s*\)?\s*(?:\/\*.*|\/\/.*)?$/m', $header, $m, PREG_SET_ORDER);
        $out = [];
        foreach ($m as [, $name, $value]) {
            $out[$name] = intval($value, 0);
        }
        // Enumerators too (cbindgen may emit a C enum): `  COSTGUARD_OK = 0,`.
        preg_match_all('/^\s*(COSTGUARD_\w+)\s*=\s*(0x[0-9a-fA-F]+|\d+)[uU]?\s*,?\s*$/m', $header, $m, PREG_SET_ORDER);
        foreach ($m as [, $name, $value]) {
            $out[$name] = intval($value, 0);
        }
        return $out;
    }

    private static function readFile(string $path): string
    {
        $text = @file_get_contents($path);
        if ($text === false) {
            throw new CostguardException("cannot read {$path}");
        }
        return $text;
    }

    /** Throws the exception that fits a status other than OK and REFUSED. */
    public function fail(int $status, string $what): never
    {
        $name = Status::tryFrom($status)?->name ?? "status {$status}";
        $describe = $this->ffi->costguard_status_describe($status);
        $message = "{$what}: {$describe} ({$name})";
        // The statuses whose explanation the library sets (API.md); for the others (a NULL
        // argument, an invalid handle) an older message may still be there, and would mislead.
        $explained = [
            Status::PolicyError, Status::HeaderError, Status::Panic, Status::IoError,
            Status::UnknownName, Status::InvalidArgument, Status::InvalidUtf8,
        ];
        $detail = in_array(Status::tryFrom($status), $explained, true) ? $this->lastError() : '';
        if ($detail !== '') {
            $message .= ":\n" . $detail;
        }
        throw match (Status::tryFrom($status)) {
            Status::InvalidHandle, Status::NullArgument => new InvalidHandleException($message, $status),
            Status::PolicyError => new PolicyException($message, $status, $detail),
            Status::HeaderError => new HeaderException($message, $status, $detail),
            Status::UnknownName => new UnknownNameException($message, $status),
            Status::InvalidArgument, Status::InvalidUtf8 => new InvalidArgumentException($message, $status),
            Status::IoError => new IoException($message, $status),
            default => new CostguardException($message, $status),
        };
    }

    /**
     * Seconds as whole nanoseconds for the library: negative is 0, and anything past what an int
     * holds (about 292 years, infinity included) saturates there. NaN is an error: it is no time.
     */
    public static function nanos(float $seconds, string $what): int
    {
        if (is_nan($seconds)) {
            throw new InvalidArgumentException("{$what}: NaN is not a duration", Status::InvalidArgument->value);
        }
        $ns = max(0.0, $seconds) * 1e9;
        return $ns >= (float) PHP_INT_MAX ? PHP_INT_MAX : (int) round($ns);
    }

    /** This thread's last error message from the library ("" if none). */
    public function lastError(): string
    {
        return $this->text(fn (CData $buf, int $cap, CData $len): int => $this->ffi->costguard_last_error($buf, $cap, $len), 'costguard_last_error');
    }

    /**
     * Runs a text-returning call with the shared buffer, growing it when the library says
     * COSTGUARD_BUFFER_TOO_SMALL (the text may grow between tries, e.g. stats, hence the loop).
     *
     * @param callable(CData, int, CData): int $call receives (buf, cap, len pointer)
     */
    public function text(callable $call, string $what): string
    {
        for ($tries = 0; $tries < 8; $tries++) {
            $status = $call($this->buf, $this->cap, $this->len);
            if ($status === Status::Ok->value) {
                return FFI::string($this->buf, $this->len[0]);
            }
            if ($status !== Status::BufferTooSmall->value) {
                $this->fail($status, $what);
            }
            $need = $this->len[0];
            if ($need <= $this->cap) {
                throw new CostguardException("{$what}: BUFFER_TOO_SMALL but needs {$need} <= cap {$this->cap}");
            }
            $this->cap = max($need, 2 * $this->cap);
            $this->buf = $this->ffi->new("char[{$this->cap}]");
        }
        throw new CostguardException("{$what}: the text kept growing");
    }

    /** Reads the shared verdict buffer after a COSTGUARD_REFUSED. */
    public function verdict(): Verdict
    {
        return Verdict::fromCData($this, $this->verdict[0]);
    }

    /** Describes a status code, e.g. "the engine said no". */
    public static function describe(int $status): string
    {
        return self::ffi()->costguard_status_describe($status);
    }
}
