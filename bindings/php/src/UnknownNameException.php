<?php

declare(strict_types=1);

namespace Costguard;

/** No counter, level, class, backend or host of that name in the policy (COSTGUARD_UNKNOWN_NAME). */
final class UnknownNameException extends CostguardException
{
}
