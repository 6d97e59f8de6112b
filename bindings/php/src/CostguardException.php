<?php

declare(strict_types=1);

namespace Costguard;

/**
 * The base of every costguard exception. getCode() is the C ABI's status code ({@see Status}).
 */
class CostguardException extends \RuntimeException
{
    /** The status as an enum, or null for errors raised by the binding itself (code 0). */
    public function status(): ?Status
    {
        return $this->getCode() === 0 ? null : Status::tryFrom($this->getCode());
    }
}
