<?php

declare(strict_types=1);

namespace Costguard;

/** Whether retrying a refused request can help (COSTGUARD_RETRY_*). */
enum Retry: int
{
    /** This can never fit: do not retry. */
    case Never = 0;
    /** Not now; no particular time. */
    case Later = 1;
    /** Not before {@see Verdict::$retryAfter}. */
    case After = 2;
}
