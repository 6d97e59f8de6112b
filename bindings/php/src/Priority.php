<?php

declare(strict_types=1);

namespace Costguard;

/** Admission priority (COSTGUARD_PRIORITY_*); lower priorities see less of a class's limit. */
enum Priority: int
{
    /** The class's own default priority. */
    case Default = 0;
    case Critical = 1;
    case Normal = 2;
    case Sheddable = 3;
    case Background = 4;
}
