<?php

declare(strict_types=1);

namespace Costguard;

/** A malformed propagation header (COSTGUARD_HEADER_ERROR); the message says where. */
final class HeaderException extends CostguardException
{
    public function __construct(string $message, int $code, public readonly string $detail)
    {
        parent::__construct($message, $code);
    }
}
