<?php

declare(strict_types=1);

namespace Costguard;

/**
 * The engine said no (COSTGUARD_REFUSED). The verdict says which limit, by how much, and whether
 * retrying can help; the message is the verdict's sentence.
 */
final class RefusedException extends CostguardException
{
    public function __construct(public readonly Verdict $verdict)
    {
        parent::__construct($verdict->description, Status::Refused->value);
    }
}
