<?php

declare(strict_types=1);

namespace Costguard;

/**
 * The policy is invalid (COSTGUARD_POLICY_ERROR). The message lists every problem, each with
 * file:line, as costguard_last_error gave them; {@see PolicyException::problems()} splits them.
 */
final class PolicyException extends CostguardException
{
    public function __construct(string $message, int $code, public readonly string $detail)
    {
        parent::__construct($message, $code);
    }

    /** @return list<string> one entry per non-empty line of the library's message */
    public function problems(): array
    {
        return array_values(array_filter(array_map('trim', explode("\n", $this->detail)), fn ($l) => $l !== ''));
    }
}
