<?php

declare(strict_types=1);

namespace Costguard;

/** A counter dimension (only grows during a request): file_lookups, db_queries, output_bytes, ... */
final class Counter extends Name
{
}
