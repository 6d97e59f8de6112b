<?php

declare(strict_types=1);

namespace Costguard;

use FFI\CData;

/** The propagation header: what a budget has left, for the next process hop. */
final class Header
{
    /** The HTTP header's name. */
    public const NAME = 'costguard-budget';

    /**
     * Validates a cg1 header and gives its fields:
     * ['request_id' => .., 'priority' => .., 'remaining_ns' => .., 'allowances' => [name => n]].
     *
     * @throws HeaderException when malformed, saying where
     */
    public static function decode(string $value): array
    {
        $lib = Library::load();
        $json = $lib->text(fn (CData $b, int $c, CData $l): int => $lib->ffi->costguard_header_decode_json($value, strlen($value), $b, $c, $l), 'decode header');
        return json_decode($json, true, 512, JSON_THROW_ON_ERROR);
    }
}
