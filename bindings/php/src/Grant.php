<?php

declare(strict_types=1);

namespace Costguard;

use FFI;
use FFI\CData;

/**
 * An admitted request ({@see Engine::admit()}): holds its concurrency permit, pool estimates and
 * per-key slot, and gives them back exactly once: finish($outcome), or the destructor (as Rust's
 * drop). Finish with the outcome so adaptive limits learn from it.
 */
final class Grant extends Handle
{
    private ?Budget $budget = null;

    /** @internal made by {@see Engine::admit()} */
    public function __construct(Library $lib, CData $handle, public readonly Engine $engine, public readonly string $requestId)
    {
        parent::__construct($lib, $handle);
    }

    protected function release(CData $handle): int
    {
        return $this->ffi->costguard_grant_free($handle);
    }

    /** The admitted request's budget (one handle, made on first use; it outlives finish()). */
    public function budget(): Budget
    {
        if ($this->budget === null) {
            $out = $this->ffi->new('costguard_budget');
            $this->ok($this->ffi->costguard_grant_budget($this->handle(), FFI::addr($out)), 'grant budget');
            $this->budget = new Budget($this->lib, $out, $this->engine);
        }
        return $this->budget;
    }

    /** Releases everything the grant holds, reporting how the request ended. */
    public function finish(Outcome $outcome = Outcome::Success): void
    {
        $this->ok($this->ffi->costguard_grant_finish($this->take(), $outcome->value), 'finish');
    }

    public function isFinished(): bool
    {
        return $this->isClosed();
    }
}
