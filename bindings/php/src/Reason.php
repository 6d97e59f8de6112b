<?php

declare(strict_types=1);

namespace Costguard;

/** Why a verdict refused, in the order of Rust's `costguard::Reason` (COSTGUARD_REASON_*). */
enum Reason: int
{
    case LimitExceeded = 0;
    case CannotFit = 1;
    case DeadlineExceeded = 2;
    case InsufficientTime = 3;
    case Cancelled = 4;
    case TooDeep = 5;
    case UnknownClass = 6;
    case ConcurrencyLimit = 7;
    case Shed = 8;
    case KeyConcurrency = 9;
    case RateLimited = 10;
    case PoolExhausted = 11;
    case QueueFull = 12;
    case QueueTimeout = 13;
    case KeyTooLong = 14;
    case CircuitOpen = 15;
    case BulkheadFull = 16;
    case ConnectLimit = 17;
    case NoHealthyHost = 18;
    case RetryBudgetExhausted = 19;
    case NotRetryable = 20;

    /** The library's snake_case name, e.g. "limit_exceeded" (costguard_reason_name). */
    public function label(): string
    {
        return strtolower(preg_replace('/(?<!^)[A-Z]/', '_$0', $this->name));
    }
}
