<?php

declare(strict_types=1);

namespace Costguard;

use FFI;
use FFI\CData;

/**
 * One request's budget over the dimensions its class declares. Charge before the work, not after:
 * a charge that would overrun is refused, all or nothing, with a {@see Verdict}.
 *
 * Counters and levels may be given as objects ({@see Engine::counter()}) or by name; names are
 * resolved once per engine and cached.
 */
final class Budget extends Handle
{
    /** The verdict buffer (costguard_verdict[1]), passed as a pointer. */
    private readonly CData $v;

    /** @internal made by {@see Engine::begin()}, {@see Grant::budget()} and {@see Budget::child()} */
    public function __construct(Library $lib, CData $handle, public readonly Engine $engine)
    {
        parent::__construct($lib, $handle);
        $this->v = $lib->verdict;
    }

    protected function release(CData $handle): int
    {
        return $this->ffi->costguard_budget_free($handle);
    }

    /**
     * Charges a counter, or throws when it would overrun.
     *
     * @throws RefusedException LimitExceeded (1 more would exceed), CannotFit (can never fit), ...
     */
    public function charge(Counter|string $counter, int $amount = 1): void
    {
        $v = $this->tryCharge($counter, $amount);
        if ($v !== null) {
            throw new RefusedException($v);
        }
    }

    /** Charges a counter; returns null when charged, or the verdict of the refusal (nothing charged). */
    public function tryCharge(Counter|string $counter, int $amount = 1): ?Verdict
    {
        $c = $counter instanceof Counter ? $counter : $this->engine->counter($counter);
        if ($amount < 0) {
            throw new InvalidArgumentException('amount must not be negative', Status::InvalidArgument->value);
        }
        $status = $this->ffi->costguard_budget_charge($this->h ?? $this->closed(), $c->handle, $amount, $this->v);
        return $status === 0 ? null : $this->verdictOf($status, "charge {$c->name}");
    }

    /**
     * Charges several counters, all or nothing: ['file_lookups' => 1, 'db_queries' => 1] or
     * [[$lookups, 1], [$db, 1]].
     *
     * @throws RefusedException
     */
    public function chargeMany(array $charges): void
    {
        $v = $this->tryChargeMany($charges);
        if ($v !== null) {
            throw new RefusedException($v);
        }
    }

    /** As {@see chargeMany()}, returning the verdict instead of throwing. */
    public function tryChargeMany(array $charges): ?Verdict
    {
        $arr = $this->engine->charges($charges);
        $status = $this->ffi->costguard_budget_charge_many($this->h ?? $this->closed(), $arr, count($charges), $this->v);
        return $this->verdictOf($status, 'chargeMany');
    }

    /** Gives back up to $amount of a counter; returns how much was refunded (never below zero used). */
    public function refund(Counter|string $counter, int $amount): int
    {
        $c = $counter instanceof Counter ? $counter : $this->engine->counter($counter);
        if ($amount < 0) {
            throw new InvalidArgumentException('amount must not be negative', Status::InvalidArgument->value);
        }
        $out = $this->ffi->new('uint64_t');
        $this->ok($this->ffi->costguard_budget_refund($this->handle(), $c->handle, $amount, FFI::addr($out)), "refund {$c->name}");
        return $out->cdata;
    }

    /** Takes one retry from the request tree's retry allowance; the verdict when it is spent. */
    public function tryRetry(): ?Verdict
    {
        return $this->verdictOf($this->ffi->costguard_budget_try_retry($this->handle(), $this->v), 'tryRetry');
    }

    /**
     * Charges an estimate now (refused at once when it can never fit); settle() later to what was
     * really used, refunding the difference.
     *
     * @throws RefusedException
     */
    public function reserve(Counter|string $counter, int $estimate): Reservation
    {
        $c = $counter instanceof Counter ? $counter : $this->engine->counter($counter);
        if ($estimate < 0) {
            throw new InvalidArgumentException('estimate must not be negative', Status::InvalidArgument->value);
        }
        $out = $this->ffi->new('costguard_reservation');
        $status = $this->ffi->costguard_budget_reserve($this->handle(), $c->handle, $estimate, FFI::addr($out), $this->v);
        if ($status === Status::Refused->value) {
            throw new RefusedException($this->lib->verdict());
        }
        $this->ok($status, "reserve {$c->name}");
        return new Reservation($this->lib, $out, $this, $c, $estimate);
    }

    /**
     * Goes $n up a level (nesting depth, sub-requests in flight) for as long as the guard lives.
     *
     * @throws RefusedException TooDeep / LimitExceeded past the level's limit
     */
    public function enter(Level|string $level, int $n = 1): LevelGuard
    {
        $l = $level instanceof Level ? $level : $this->engine->level($level);
        if ($n < 0) {
            throw new InvalidArgumentException('n must not be negative', Status::InvalidArgument->value);
        }
        $out = $this->ffi->new('costguard_level_guard');
        $status = $this->ffi->costguard_budget_enter($this->handle(), $l->handle, $n, FFI::addr($out), $this->v);
        if ($status === Status::Refused->value) {
            throw new RefusedException($this->lib->verdict());
        }
        $this->ok($status, "enter {$l->name}");
        return new LevelGuard($this->lib, $out, $this, $l);
    }

    /**
     * A budget for a sub-request: every charge to it is a charge to this budget too, and its deadline
     * comes before this one's by the class's child margin. Of this budget's class unless given.
     *
     * @throws RefusedException InsufficientTime when less than the margin is left
     */
    public function child(RequestClass|string|null $class = null): Budget
    {
        $ptr = null;
        if ($class !== null) {
            $c = $class instanceof RequestClass ? $class : $this->engine->cls($class);
            $ptr = FFI::addr($c->handle);
        }
        $out = $this->ffi->new('costguard_budget');
        $status = $this->ffi->costguard_budget_child($this->handle(), $ptr, FFI::addr($out), $this->v);
        if ($status === Status::Refused->value) {
            throw new RefusedException($this->lib->verdict());
        }
        $this->ok($status, 'child');
        return new Budget($this->lib, $out, $this->engine);
    }

    /** How much of a counter this budget has used. */
    public function used(Counter|string $counter): int
    {
        return $this->u64('costguard_budget_used', $counter instanceof Counter ? $counter : $this->engine->counter($counter));
    }

    /** How much of a counter is left; null when the class does not limit it. */
    public function remaining(Counter|string $counter): ?int
    {
        $n = $this->u64('costguard_budget_remaining_of', $counter instanceof Counter ? $counter : $this->engine->counter($counter));
        return $n === Library::NONE ? null : $n;
    }

    /** The current value of a level. */
    public function level(Level|string $level): int
    {
        return $this->u64('costguard_budget_level', $level instanceof Level ? $level : $this->engine->level($level));
    }

    /** Nanoseconds until the deadline (0 once passed); null without a deadline. */
    public function remainingNs(): ?int
    {
        $out = $this->ffi->new('uint64_t');
        $this->ok($this->ffi->costguard_budget_remaining_ns($this->handle(), FFI::addr($out)), 'remainingNs');
        $n = $out->cdata;
        return $n === Library::NONE ? null : $n;
    }

    /** Seconds until the deadline (0.0 once passed); null without a deadline. */
    public function remainingSeconds(): ?float
    {
        $n = $this->remainingNs();
        return $n === null ? null : $n / 1e9;
    }

    /** Whether the deadline has passed. */
    public function expired(): bool
    {
        return $this->flag('costguard_budget_expired');
    }

    /** Whether work for this request should stop (a refused charge, a passed deadline, cancel()). */
    public function isCancelled(): bool
    {
        return $this->flag('costguard_budget_is_cancelled');
    }

    /**
     * Compares the clock with the deadline and the cancellation flag.
     *
     * @throws RefusedException with the verdict that explains why work should stop
     */
    public function check(): void
    {
        $v = $this->tryCheck();
        if ($v !== null) {
            throw new RefusedException($v);
        }
    }

    /** As {@see check()}, returning the verdict (null: carry on). */
    public function tryCheck(): ?Verdict
    {
        return $this->verdictOf($this->ffi->costguard_budget_check($this->handle(), $this->v), 'check');
    }

    /** Cancels this budget and every live descendant (advice: charges that fit still succeed). */
    public function cancel(): void
    {
        $this->ok($this->ffi->costguard_budget_cancel($this->handle()), 'cancel');
    }

    /** What this budget has left, for the next hop's costguard-budget header (it can only tighten). */
    public function toHeader(): string
    {
        $h = $this->handle();
        return $this->lib->text(fn (CData $b, int $c, CData $l): int => $this->ffi->costguard_budget_to_header($h, $b, $c, $l), 'toHeader');
    }

    /**
     * What this budget (and its children) used, for the costguard-usage response header its caller
     * charges with {@see chargeUsage()} ('cgu1;retries=2;file_lookups=120').
     */
    public function usage(): string
    {
        $h = $this->handle();
        return $this->lib->text(fn (CData $b, int $c, CData $l): int => $this->ffi->costguard_budget_usage($h, $b, $c, $l), 'usage');
    }

    /**
     * Charges what a callee in another process answered it used (its costguard-usage header), so
     * that the tree's retry allowance holds across the hop. A malformed value throws
     * HeaderException.
     *
     * @throws RefusedException when it does not fit (each counter is charged as far as its limits
     *         allow, and the budget is cancelled)
     */
    public function chargeUsage(string $usage): void
    {
        $v = $this->tryChargeUsage($usage);
        if ($v !== null) {
            throw new RefusedException($v);
        }
    }

    /** As {@see chargeUsage()}, returning the verdict instead of throwing. */
    public function tryChargeUsage(string $usage): ?Verdict
    {
        $status = $this->ffi->costguard_budget_charge_usage($this->handle(), $usage, strlen($usage), $this->v);
        return $this->verdictOf($status, 'chargeUsage');
    }

    /** The limit report as text, as Rust's Display prints it. */
    public function report(): string
    {
        $h = $this->handle();
        return $this->lib->text(fn (CData $b, int $c, CData $l): int => $this->ffi->costguard_budget_report_text($h, $b, $c, $l), 'report');
    }

    /** The limit report as JSON text. */
    public function reportJson(): string
    {
        $h = $this->handle();
        return $this->lib->text(fn (CData $b, int $c, CData $l): int => $this->ffi->costguard_budget_report_json($h, $b, $c, $l), 'reportJson');
    }

    /** The limit report, decoded. */
    public function reportArray(): array
    {
        return json_decode($this->reportJson(), true, 512, JSON_THROW_ON_ERROR);
    }

    private function u64(string $fn, Name $name): int
    {
        $out = $this->lib->u64;
        $this->ok($this->ffi->$fn($this->h ?? $this->closed(), $name->handle, $out), "{$fn}({$name->name})");
        return $out[0];
    }

    private function flag(string $fn): bool
    {
        $out = $this->lib->bool;
        $this->ok($this->ffi->$fn($this->h ?? $this->closed(), $out), $fn);
        return $out[0];
    }
}
