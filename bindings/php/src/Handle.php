<?php

declare(strict_types=1);

namespace Costguard;

use FFI;
use FFI\CData;

/**
 * An owned handle of the C ABI (engine, budget, grant, attempt, reservation, level guard): freed
 * exactly once, by close() or by the destructor, whichever comes first. After that the object refuses
 * every call with {@see InvalidHandleException} before reaching the library, so a PHP program cannot
 * use a freed handle through the classes. Objects cannot be cloned or serialized (a copy would be a
 * second owner of the same handle).
 */
abstract class Handle
{
    /** The C handle (a struct { uint64_t bits; }), or null once closed. */
    protected ?CData $h;
    protected readonly FFI $ffi;

    protected function __construct(protected readonly Library $lib, CData $handle)
    {
        $this->ffi = $lib->ffi;
        $this->h = $handle;
    }

    /** Frees the handle with the library; returns the status. */
    abstract protected function release(CData $handle): int;

    /** Releases the handle now (idempotent). */
    public function close(): void
    {
        $h = $this->h;
        if ($h !== null) {
            $this->h = null;
            $status = $this->release($h);
            if ($status !== Status::Ok->value) {
                $this->lib->fail($status, static::class . '::close');
            }
        }
    }

    public function isClosed(): bool
    {
        return $this->h === null;
    }

    /** The raw C handle (for the FFI layer); throws once closed. */
    public function handle(): CData
    {
        return $this->h ?? $this->closed();
    }

    /** Throws: the object was closed, finished, settled or freed. */
    protected function closed(): never
    {
        throw new InvalidHandleException(static::class . ' is already closed', Status::InvalidHandle->value);
    }

    /** Marks the handle as consumed by a call that frees it (finish, settle, cancel). */
    protected function take(): CData
    {
        $h = $this->h ?? $this->closed();
        $this->h = null;
        return $h;
    }

    public function __destruct()
    {
        $h = $this->h;
        if ($h !== null) {
            $this->h = null;
            // Never throw from a destructor: a handle made invalid by fork() is simply dropped.
            $this->release($h);
        }
    }

    public function __clone()
    {
        $this->h = null; // the copy must not free the original's handle when it is destroyed
        throw new CostguardException(static::class . ' cannot be cloned: it owns a handle');
    }

    public function __serialize(): array
    {
        throw new CostguardException(static::class . ' cannot be serialized: it owns a handle');
    }

    public function __unserialize(array $data): void
    {
        throw new CostguardException(static::class . ' cannot be unserialized');
    }

    /** Checks a status that must be OK. */
    protected function ok(int $status, string $what): void
    {
        if ($status !== 0) {
            $this->lib->fail($status, $what);
        }
    }

    /** OK → null; REFUSED → the verdict; anything else throws. */
    protected function verdictOf(int $status, string $what): ?Verdict
    {
        if ($status === 0) {
            return null;
        }
        if ($status === 1) {
            return $this->lib->verdict();
        }
        $this->lib->fail($status, $what);
    }
}
