<?php

declare(strict_types=1);

namespace Costguard;

/** One host of a backend's pool. */
final class Host extends Name
{
}
