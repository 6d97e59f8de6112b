<?php

declare(strict_types=1);

namespace Costguard;

/**
 * A handle the library does not know (COSTGUARD_INVALID_HANDLE): freed, of another kind or engine, or
 * made up; or the null handle (COSTGUARD_NULL_ARGUMENT). The wrapper objects prevent this for their own
 * handles (a closed object refuses before calling); it reaches PHP code through the raw layer or a
 * name handle from another engine.
 */
final class InvalidHandleException extends CostguardException
{
}
