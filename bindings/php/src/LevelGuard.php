<?php

declare(strict_types=1);

namespace Costguard;

use FFI\CData;

/**
 * Being inside a level ({@see Budget::enter()}): leave() or destruction goes back down. Keep it in a
 * variable for as long as the nested work runs; `$budget->enter('nesting_depth');` on its own is left
 * at once (PHP destroys the unused return value).
 */
final class LevelGuard extends Handle
{
    /** @internal made by {@see Budget::enter()} */
    public function __construct(Library $lib, CData $handle, public readonly Budget $budget, public readonly Level $level)
    {
        parent::__construct($lib, $handle);
    }

    protected function release(CData $handle): int
    {
        return $this->ffi->costguard_level_guard_free($handle);
    }

    /** Leaves the level now (idempotent). */
    public function leave(): void
    {
        $this->close();
    }
}
