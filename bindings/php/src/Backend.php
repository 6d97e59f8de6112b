<?php

declare(strict_types=1);

namespace Costguard;

/** A backend of the policy (a dependency: kafka, db, ...). */
final class Backend extends Name
{
}
