<?php

declare(strict_types=1);

namespace Costguard;

/** How one call to a backend ended (COSTGUARD_ATTEMPT_*). */
enum AttemptOutcome: int
{
    case Success = 0;
    case ClientError = 1;
    case ServerError = 2;
    case Timeout = 3;
    /** A timeout reported by the layer below: retrying here cannot help. */
    case UpstreamTimeout = 4;
    case ConnectFailure = 5;
    /** The backend refused (429/503), optionally with a Retry-After. */
    case Refused = 6;
    case Cancelled = 7;

    /** The library's mapping of an HTTP status to an outcome (costguard_attempt_outcome_from_http). */
    public static function fromHttp(int $httpStatus): self
    {
        if ($httpStatus < 0 || $httpStatus > 0xffff) {
            throw new InvalidArgumentException("HTTP status {$httpStatus} out of range", Status::InvalidArgument->value);
        }
        $lib = Library::load();
        $out = $lib->ffi->new('uint32_t[1]');
        $status = $lib->ffi->costguard_attempt_outcome_from_http($httpStatus, $out);
        if ($status !== 0) {
            $lib->fail($status, "costguard_attempt_outcome_from_http({$httpStatus})");
        }
        return self::from($out[0]);
    }
}
