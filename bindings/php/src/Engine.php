<?php

declare(strict_types=1);

namespace Costguard;

use FFI;
use FFI\CData;

/**
 * One compiled policy and everything that runs under it: budgets, admission, backends.
 *
 * An engine is per process (admission limits, pools, breakers and per-key state live in this
 * process's memory). Create it once per process and keep it; names (counters, classes, ...) are
 * resolved once and cached here, so passing a string such as 'file_lookups' to a budget costs one
 * array lookup.
 *
 * ```php
 * $engine = Engine::fromFile('/etc/costguard/policy.toml');
 * $budget = $engine->begin('parse', 'edit-42');
 * $budget->charge('file_lookups');          // throws RefusedException past the limit
 * ```
 */
final class Engine extends Handle
{
    /** COSTGUARD_ENGINE_MANUAL_CLOCK: a manual clock starting at 0, moved by {@see advanceClock()}. */
    public const MANUAL_CLOCK = 1;
    /** COSTGUARD_ADMIT_WAIT: wait in the class's queue instead of refusing at once. */
    public const ADMIT_WAIT = 1;

    /** @var array<string, Counter> */
    private array $counters = [];
    /** @var array<string, Level> */
    private array $levels = [];
    /** @var array<string, RequestClass> */
    private array $classes = [];
    /** @var array<string, Backend> */
    private array $backends = [];
    /** @var array<string, Host> */
    private array $hosts = [];

    /** Builds an engine from TOML text. A manual clock (tests, simulations) only moves when told. */
    public static function fromString(string $toml, bool $manualClock = false, ?Library $lib = null): self
    {
        $lib ??= Library::load();
        $out = $lib->ffi->new('costguard_engine');
        $status = $lib->ffi->costguard_engine_new_from_str($toml, strlen($toml), $manualClock ? self::MANUAL_CLOCK : 0, FFI::addr($out));
        if ($status !== 0) {
            $lib->fail($status, 'cannot build an engine from the policy text');
        }
        return new self($lib, $out);
    }

    /** Builds an engine from a TOML policy file; problems are reported with file:line. */
    public static function fromFile(string $path, bool $manualClock = false, ?Library $lib = null): self
    {
        $lib ??= Library::load();
        $out = $lib->ffi->new('costguard_engine');
        $status = $lib->ffi->costguard_engine_new_from_file($path, strlen($path), $manualClock ? self::MANUAL_CLOCK : 0, FFI::addr($out));
        if ($status !== 0) {
            $lib->fail($status, "cannot build an engine from {$path}");
        }
        return new self($lib, $out);
    }

    protected function release(CData $handle): int
    {
        return $this->ffi->costguard_engine_free($handle);
    }

    /**
     * Applies a new policy to requests started from now on; running requests keep theirs, for their
     * budgets and their backend attempts. A policy that fails validation changes nothing
     * ({@see PolicyException}). Returns the new generation.
     */
    public function reload(string $toml): int
    {
        $gen = $this->lib->ffi->new('uint64_t');
        $this->ok($this->ffi->costguard_engine_reload_from_str($this->handle(), $toml, strlen($toml), FFI::addr($gen)), 'reload');
        return $gen->cdata;
    }

    /** As {@see reload()}, from a file. */
    public function reloadFile(string $path): int
    {
        $gen = $this->lib->ffi->new('uint64_t');
        $this->ok($this->ffi->costguard_engine_reload_from_file($this->handle(), $path, strlen($path), FFI::addr($gen)), "reload from {$path}");
        return $gen->cdata;
    }

    /** The policy generation: 1 at creation, +1 per successful reload. */
    public function generation(): int
    {
        $gen = $this->lib->ffi->new('uint64_t');
        $this->ok($this->ffi->costguard_engine_generation($this->handle(), FFI::addr($gen)), 'generation');
        return $gen->cdata;
    }

    /** Moves a manual clock forward (engines made with manualClock: true only). */
    public function advanceClock(float $seconds): void
    {
        if ($seconds < 0) {
            throw new InvalidArgumentException('the clock only moves forward', Status::InvalidArgument->value);
        }
        $this->advanceClockNs(Library::nanos($seconds, 'advanceClock'));
    }

    public function advanceClockNs(int $nanos): void
    {
        if ($nanos < 0) {
            throw new InvalidArgumentException('the clock only moves forward', Status::InvalidArgument->value);
        }
        $this->ok($this->ffi->costguard_engine_advance_clock($this->handle(), $nanos), 'advanceClock');
    }

    /** Every admission and backend counter, in-flight count, limit, queue and pool level. */
    public function stats(): array
    {
        return json_decode($this->statsJson(), true, 512, JSON_THROW_ON_ERROR);
    }

    public function statsJson(): string
    {
        $h = $this->handle();
        return $this->lib->text(fn (CData $b, int $c, CData $l): int => $this->ffi->costguard_engine_stats_json($h, $b, $c, $l), 'stats');
    }

    /** The same statistics in Prometheus' text format. */
    public function statsPrometheus(): string
    {
        $h = $this->handle();
        return $this->lib->text(fn (CData $b, int $c, CData $l): int => $this->ffi->costguard_engine_stats_prometheus($h, $b, $c, $l), 'statsPrometheus');
    }

    /** A counter dimension by name (cached). */
    public function counter(string $name): Counter
    {
        return $this->counters[$name] ??= new Counter($name, $this->lookup('costguard_counter', 'costguard_engine_counter', $name));
    }

    /** A level dimension by name (cached). */
    public function level(string $name): Level
    {
        return $this->levels[$name] ??= new Level($name, $this->lookup('costguard_level', 'costguard_engine_level', $name));
    }

    /** A request class by name (cached); "class" is a reserved word, hence cls. */
    public function cls(string $name): RequestClass
    {
        return $this->classes[$name] ??= new RequestClass($name, $this->lookup('costguard_class', 'costguard_engine_class', $name));
    }

    /** A backend by name (cached). */
    public function backend(string $name): Backend
    {
        return $this->backends[$name] ??= new Backend($name, $this->lookup('costguard_backend', 'costguard_engine_backend', $name));
    }

    /** One host of a backend's pool, e.g. host('kafka', 'kafka1012:9092') (cached). */
    public function host(Backend|string $backend, string $name): Host
    {
        $b = $backend instanceof Backend ? $backend : $this->backend($backend);
        // Keyed by the backend's handle, not its name: another engine's Backend of the same name
        // must reach the library (and its InvalidHandleException), not this engine's cached host.
        $key = $b->bits() . "\0" . $name;
        if (!isset($this->hosts[$key])) {
            $out = $this->ffi->new('costguard_host');
            $this->ok($this->ffi->costguard_engine_host($this->handle(), $b->handle, $name, strlen($name), FFI::addr($out)), "host {$b->name}/{$name}");
            $this->hosts[$key] = new Host($name, $out);
        }
        return $this->hosts[$key];
    }

    private function lookup(string $type, string $fn, string $name): CData
    {
        $out = $this->ffi->new($type);
        $status = $this->ffi->$fn($this->handle(), $name, strlen($name), FFI::addr($out));
        if ($status !== 0) {
            $this->lib->fail($status, substr($type, strlen('costguard_')) . " \"{$name}\"");
        }
        return $out;
    }

    /**
     * Starts a budget without admission (admission is {@see admit()}). With an incoming propagation
     * header, every limit is the smaller of the policy's and the header's.
     *
     * @throws RefusedException when the header leaves nothing (e.g. its time is up)
     * @throws HeaderException on a malformed header
     */
    public function begin(RequestClass|string $class, string $requestId, ?string $header = null): Budget
    {
        $c = $class instanceof RequestClass ? $class : $this->cls($class);
        $out = $this->ffi->new('costguard_budget');
        $status = $this->ffi->costguard_budget_begin(
            $this->handle(), $c->handle, $requestId, strlen($requestId),
            $header, $header === null ? 0 : strlen($header), FFI::addr($out), $this->lib->verdict,
        );
        if ($status === Status::Refused->value) {
            throw new RefusedException($this->lib->verdict());
        }
        $this->ok($status, "begin {$c->name} budget for request \"{$requestId}\"");
        return new Budget($this->lib, $out, $this);
    }

    /**
     * Admission control: the class's concurrency limit (with priority headroom), shared pools,
     * per-key limits; then the request's budget. The grant gives it all back when finished or
     * destroyed.
     *
     * @param array<string,int>|list<array{0:Counter|string,1:int}> $estimates declared costs, e.g. ['db_queries' => 50]
     * @param bool $wait wait in the class's queue (blocks this process) instead of refusing at once
     * @throws RefusedException with the verdict (ConcurrencyLimit, Shed, RateLimited, CannotFit, ...)
     */
    public function admit(
        RequestClass|string $class,
        string $requestId,
        ?string $key = null,
        Priority $priority = Priority::Default,
        array $estimates = [],
        ?string $header = null,
        bool $wait = false,
        int $rateCost = 0,
    ): Grant {
        $r = $this->tryAdmit($class, $requestId, $key, $priority, $estimates, $header, $wait, $rateCost);
        if ($r instanceof Verdict) {
            throw new RefusedException($r);
        }
        return $r;
    }

    /** As {@see admit()}, returning the verdict instead of throwing on a refusal. */
    public function tryAdmit(
        RequestClass|string $class,
        string $requestId,
        ?string $key = null,
        Priority $priority = Priority::Default,
        array $estimates = [],
        ?string $header = null,
        bool $wait = false,
        int $rateCost = 0,
    ): Grant|Verdict {
        $c = $class instanceof RequestClass ? $class : $this->cls($class);
        if ($rateCost < 0) {
            throw new InvalidArgumentException('rateCost must not be negative', Status::InvalidArgument->value);
        }
        $ffi = $this->ffi;
        $req = $ffi->new('costguard_admit_request');
        $req->class_ = $c->handle;
        // The strings are copied into C buffers that live until the call returns.
        $id = self::cString($ffi, $requestId);
        $req->request_id = $id === null ? null : $ffi->cast('const char *', $id);
        $req->request_id_len = strlen($requestId);
        $k = self::cString($ffi, $key);
        $req->key = $k === null ? null : $ffi->cast('const char *', $k);
        $req->key_len = $key === null ? 0 : strlen($key);
        $req->priority = $priority->value;
        $req->flags = $wait ? self::ADMIT_WAIT : 0;
        $charges = $this->charges($estimates);
        $req->estimates = $charges === null ? null : $ffi->cast('const costguard_charge *', $charges);
        $req->estimates_len = count($estimates);
        $req->rate_cost = $rateCost;
        $hd = self::cString($ffi, $header);
        $req->header = $hd === null ? null : $ffi->cast('const char *', $hd);
        $req->header_len = $header === null ? 0 : strlen($header);

        $out = $ffi->new('costguard_grant');
        $status = $ffi->costguard_admit($this->handle(), FFI::addr($req), FFI::addr($out), $this->lib->verdict);
        if ($status === Status::Refused->value) {
            return $this->lib->verdict();
        }
        $this->ok($status, "admit {$c->name} request \"{$requestId}\"");
        return new Grant($this->lib, $out, $this, $requestId);
    }

    /**
     * Begins one call to a backend (retry 0 for the first attempt, else the retry number). Chooses a
     * healthy host when the backend has a pool.
     *
     * @throws RefusedException breaker open, bulkhead or connect caps reached, no healthy host, too little time
     */
    public function beginAttempt(Backend|string $backend, Budget $budget, int $retry = 0): Attempt
    {
        $b = $backend instanceof Backend ? $backend : $this->backend($backend);
        return $this->attempt('costguard_attempt_begin', $b->handle, $budget, $retry, $b->name);
    }

    /** As {@see beginAttempt()}, on one chosen host of the backend's pool. */
    public function beginAttemptOn(Host $host, Budget $budget, int $retry = 0): Attempt
    {
        return $this->attempt('costguard_attempt_begin_on', $host->handle, $budget, $retry, $host->name);
    }

    private function attempt(string $fn, CData $target, Budget $budget, int $retry, string $name): Attempt
    {
        if ($retry < 0 || $retry > 0xffffffff) {
            throw new InvalidArgumentException("retry {$retry} out of range", Status::InvalidArgument->value);
        }
        $out = $this->ffi->new('costguard_attempt');
        $status = $this->ffi->$fn($this->handle(), $target, $budget->handle(), $retry, FFI::addr($out), $this->lib->verdict);
        if ($status === Status::Refused->value) {
            throw new RefusedException($this->lib->verdict());
        }
        $this->ok($status, "begin attempt on {$name}");
        return new Attempt($this->lib, $out, $budget);
    }

    /**
     * Should a failed call be retried? Returns the seconds to wait before retrying, or the verdict
     * that says why not (not retryable, no time left, the tree's retry allowance spent, the
     * backend's breaker still open when the wait is over, or the backend's retry budget spent).
     *
     * @param int $attempts attempts made so far (1 after the first failure)
     * @param float|null $retryAfter the backend's Retry-After in seconds, if it sent one
     */
    public function retry(Backend|string $backend, Budget $budget, AttemptOutcome $outcome, int $attempts, ?float $retryAfter = null): float|Verdict
    {
        $b = $backend instanceof Backend ? $backend : $this->backend($backend);
        if ($attempts < 0 || $attempts > 0xffffffff) {
            throw new InvalidArgumentException("attempts {$attempts} out of range", Status::InvalidArgument->value);
        }
        $wait = $this->ffi->new('uint64_t');
        $after = $retryAfter === null ? Library::NONE : Library::nanos($retryAfter, 'Retry-After');
        $status = $this->ffi->costguard_retry($this->handle(), $b->handle, $budget->handle(), $outcome->value, $after, $attempts, FFI::addr($wait), $this->lib->verdict);
        if ($status === Status::Refused->value) {
            return $this->lib->verdict();
        }
        $this->ok($status, "retry on {$b->name}");
        return $wait->cdata / 1e9;
    }

    /**
     * Builds a costguard_charge array from ['name' => amount, ...] or [[Counter|name, amount], ...].
     * Returns null for no charges (a NULL pointer with length 0).
     */
    public function charges(array $charges): ?CData
    {
        $n = count($charges);
        if ($n === 0) {
            return null;
        }
        $out = $this->ffi->new("costguard_charge[{$n}]");
        $i = 0;
        foreach ($charges as $k => $v) {
            if (is_array($v)) {
                if (count($v) !== 2 || !array_is_list($v)) {
                    throw new InvalidArgumentException('a charge is [Counter|name, amount]', Status::InvalidArgument->value);
                }
                [$counter, $amount] = $v;
            } else {
                [$counter, $amount] = [$k, $v];
            }
            if (!is_int($amount) || $amount < 0) {
                throw new InvalidArgumentException('charge amounts must be non-negative integers', Status::InvalidArgument->value);
            }
            $c = $counter instanceof Counter ? $counter : $this->counter((string) $counter);
            $out[$i]->counter = $c->handle;
            $out[$i]->amount = $amount;
            $i++;
        }
        return $out;
    }

    /** A C copy of a string (NULL for null or ""), for struct fields that point at text. */
    private static function cString(FFI $ffi, ?string $s): ?CData
    {
        if ($s === null || $s === '') {
            return null;
        }
        $n = strlen($s);
        $buf = $ffi->new("char[{$n}]");
        FFI::memcpy($buf, $s, $n);
        return $buf;
    }
}
