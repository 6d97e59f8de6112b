<?php

declare(strict_types=1);

namespace Costguard;

/** The unit of a verdict's amounts (COSTGUARD_UNIT_*). */
enum Unit: int
{
    case Count = 0;
    case Bytes = 1;
    case Nanos = 2;
}
