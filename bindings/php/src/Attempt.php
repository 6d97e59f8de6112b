<?php

declare(strict_types=1);

namespace Costguard;

use FFI;
use FFI\CData;

/**
 * One call to a backend ({@see Engine::beginAttempt()}): holds an in-flight slot and, until
 * connected(), a connect permit. finish($outcome) feeds the breaker, outlier ejection and retry
 * budget; destroyed unfinished, it is finished as cancelled.
 */
final class Attempt extends Handle
{
    /** @internal made by {@see Engine::beginAttempt()} */
    public function __construct(Library $lib, CData $handle, public readonly Budget $budget)
    {
        parent::__construct($lib, $handle);
    }

    protected function release(CData $handle): int
    {
        return $this->ffi->costguard_attempt_free($handle);
    }

    /** The timeout for this call in nanoseconds: the backend's, or less if the request has less left. */
    public function timeoutNs(): ?int
    {
        $out = $this->ffi->new('uint64_t');
        $this->ok($this->ffi->costguard_attempt_timeout_ns($this->handle(), FFI::addr($out)), 'timeout');
        return $out->cdata === Library::NONE ? null : $out->cdata;
    }

    /** The timeout in seconds (for stream_set_timeout, curl's CURLOPT_TIMEOUT_MS / 1000, ...). */
    public function timeoutSeconds(): ?float
    {
        $ns = $this->timeoutNs();
        return $ns === null ? null : $ns / 1e9;
    }

    /** The chosen host ("kafka1012:9092"), or null when the backend has no pool. */
    public function host(): ?string
    {
        $h = $this->handle();
        $s = $this->lib->text(fn (CData $b, int $c, CData $l): int => $this->ffi->costguard_attempt_host($h, $b, $c, $l), 'host');
        return $s === '' ? null : $s;
    }

    /** The connection is up: frees the connect permit (the in-flight slot stays until finish). */
    public function connected(): void
    {
        $this->ok($this->ffi->costguard_attempt_connected($this->handle()), 'connected');
    }

    /**
     * Ends the attempt. For {@see AttemptOutcome::Refused}, pass the backend's Retry-After in seconds.
     */
    public function finish(AttemptOutcome $outcome, ?float $retryAfter = null): void
    {
        $after = $retryAfter === null ? Library::NONE : Library::nanos($retryAfter, 'Retry-After');
        $this->ok($this->ffi->costguard_attempt_finish($this->take(), $outcome->value, $after), 'finish attempt');
    }

    public function isFinished(): bool
    {
        return $this->isClosed();
    }
}
