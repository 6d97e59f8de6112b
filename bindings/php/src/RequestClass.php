<?php

declare(strict_types=1);

namespace Costguard;

/** A request class of the policy (parse, api, upload, ...); {@see Engine::cls()}. */
final class RequestClass extends Name
{
}
