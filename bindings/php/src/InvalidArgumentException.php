<?php

declare(strict_types=1);

namespace Costguard;

/**
 * A value out of range (COSTGUARD_INVALID_ARGUMENT, COSTGUARD_INVALID_UTF8): a bad request id, a
 * negative amount, an unknown enum value, advancing the clock of a real-clock engine, ...
 */
final class InvalidArgumentException extends CostguardException
{
}
