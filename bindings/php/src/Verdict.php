<?php

declare(strict_types=1);

namespace Costguard;

use FFI;
use FFI\CData;

/**
 * The one refusal type: which limit, the amounts, the request, and whether retrying can help.
 * A plain value, copied out of the library when the refusal happens; (string) gives the library's
 * own sentence, the same as Rust's Display.
 */
final class Verdict implements \Stringable, \JsonSerializable
{
    public function __construct(
        public readonly Reason $reason,
        public readonly Retry $retry,
        /** Seconds to wait for {@see Retry::After}; null otherwise. */
        public readonly ?float $retryAfter,
        /** Nanoseconds to wait for {@see Retry::After}; null otherwise. */
        public readonly ?int $retryAfterNs,
        public readonly int $requested,
        public readonly int $used,
        public readonly int $limit,
        public readonly Unit $unit,
        /** The class, or "" when none. */
        public readonly string $className,
        /** The dimension, or "" when none. */
        public readonly string $dimension,
        /** The request id, or "" when none. */
        public readonly string $requestId,
        /** The library's sentence (costguard_verdict_describe). */
        public readonly string $description,
    ) {
    }

    /** Copies a costguard_verdict struct (the library's shared buffer is reused by the next call). */
    public static function fromCData(Library $lib, CData $v): self
    {
        $after = $v->retry_after_ns;
        $retry = Retry::tryFrom($v->retry) ?? Retry::Later;
        $ptr = FFI::addr($v);
        $description = $lib->text(
            fn (CData $buf, int $cap, CData $len): int => $lib->ffi->costguard_verdict_describe($ptr, $buf, $cap, $len),
            'costguard_verdict_describe',
        );
        $hasAfter = $retry === Retry::After && $after !== Library::NONE;
        return new self(
            Reason::tryFrom($v->reason) ?? throw new CostguardException("unknown reason {$v->reason} in a verdict"),
            $retry,
            $hasAfter ? $after / 1e9 : null,
            $hasAfter ? $after : null,
            $v->requested,
            $v->used,
            $v->limit,
            Unit::tryFrom($v->unit) ?? Unit::Count,
            FFI::string($v->class_name),
            FFI::string($v->dimension),
            FFI::string($v->request_id),
            $description,
        );
    }

    /** Whether retrying can ever help (retry is not {@see Retry::Never}). */
    public function isRetryable(): bool
    {
        return $this->retry !== Retry::Never;
    }

    /** The same sentence Rust's Display gives, e.g. "request r1: parse/file_lookups: ...". */
    public function describe(): string
    {
        return $this->description;
    }

    public function __toString(): string
    {
        return $this->description;
    }

    public function jsonSerialize(): array
    {
        return [
            'reason' => $this->reason->label(),
            'retry' => strtolower($this->retry->name),
            'retry_after' => $this->retryAfter,
            'requested' => $this->requested,
            'used' => $this->used,
            'limit' => $this->limit,
            'unit' => strtolower($this->unit->name),
            'class' => $this->className,
            'dimension' => $this->dimension,
            'request_id' => $this->requestId,
            'description' => $this->description,
        ];
    }
}
