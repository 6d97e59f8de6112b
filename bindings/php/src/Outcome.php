<?php

declare(strict_types=1);

namespace Costguard;

/** How an admitted request ended (COSTGUARD_OUTCOME_*); adaptive limits learn from it. */
enum Outcome: int
{
    case Success = 0;
    case ClientError = 1;
    case Overload = 2;
    case Cancelled = 3;
}
