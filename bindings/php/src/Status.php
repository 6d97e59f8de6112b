<?php

declare(strict_types=1);

namespace Costguard;

/** The C ABI's status codes (`costguard_status`), stable numbers. */
enum Status: int
{
    case Ok = 0;
    case Refused = 1;
    case NullArgument = 2;
    case InvalidHandle = 3;
    case InvalidUtf8 = 4;
    case InvalidArgument = 5;
    case UnknownName = 6;
    case PolicyError = 7;
    case HeaderError = 8;
    case IoError = 9;
    case BufferTooSmall = 10;
    case Panic = 11;

    /** The C constant's name, e.g. COSTGUARD_INVALID_HANDLE. */
    public function cName(): string
    {
        return 'COSTGUARD_' . strtoupper(preg_replace('/(?<!^)[A-Z]/', '_$0', $this->name));
    }
}
