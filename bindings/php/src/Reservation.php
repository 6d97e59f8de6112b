<?php

declare(strict_types=1);

namespace Costguard;

use FFI\CData;

/**
 * An estimate charged ahead of the work ({@see Budget::reserve()}). settle() charges what was really
 * used instead (refunding the difference); cancel() refunds it all. Destroyed without either, the
 * estimate stays charged, as Rust's drop does.
 */
final class Reservation extends Handle
{
    /** @internal made by {@see Budget::reserve()} */
    public function __construct(
        Library $lib,
        CData $handle,
        public readonly Budget $budget,
        public readonly Counter $counter,
        public readonly int $estimate,
    ) {
        parent::__construct($lib, $handle);
    }

    protected function release(CData $handle): int
    {
        return $this->ffi->costguard_reservation_free($handle);
    }

    /**
     * Settles to the amount really used: below the estimate refunds the rest, above it charges the
     * extra (which may be refused). The reservation is finished either way.
     *
     * @throws RefusedException when the extra over the estimate does not fit
     */
    public function settle(int $actual): void
    {
        $v = $this->trySettle($actual);
        if ($v !== null) {
            throw new RefusedException($v);
        }
    }

    /** As {@see settle()}, returning the verdict instead of throwing. */
    public function trySettle(int $actual): ?Verdict
    {
        if ($actual < 0) {
            throw new InvalidArgumentException('actual must not be negative', Status::InvalidArgument->value);
        }
        return $this->verdictOf($this->ffi->costguard_reservation_settle($this->take(), $actual, $this->lib->verdict), 'settle');
    }

    /** Refunds the whole estimate and finishes the reservation. */
    public function cancel(): void
    {
        $this->ok($this->ffi->costguard_reservation_cancel($this->take()), 'cancel reservation');
    }
}
