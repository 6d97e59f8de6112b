<?php

declare(strict_types=1);

namespace Costguard;

/** A file could not be read (COSTGUARD_IO_ERROR), e.g. a policy path that does not exist. */
final class IoException extends CostguardException
{
}
