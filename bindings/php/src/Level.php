<?php

declare(strict_types=1);

namespace Costguard;

/** A level dimension (goes up and down): nesting_depth, subcalls, ... */
final class Level extends Name
{
}
