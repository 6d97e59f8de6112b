<?php

declare(strict_types=1);

namespace Costguard;

use FFI\CData;

/**
 * A name of one engine's policy resolved once to a typed handle (a plain value: nothing to free).
 * It stays valid across reloads; used with another engine it gives {@see InvalidHandleException}.
 * Get them from {@see Engine::counter()}, level(), cls(), backend(), host(); the engine caches them.
 */
abstract class Name
{
    final public function __construct(
        /** The name as written in the policy. */
        public readonly string $name,
        /** The C value (costguard_counter etc.), passed by value to the library. */
        public readonly CData $handle,
    ) {
    }

    /** The handle's 64 bits, as a (possibly negative) PHP int. */
    public function bits(): int
    {
        return $this->handle->bits;
    }
}
