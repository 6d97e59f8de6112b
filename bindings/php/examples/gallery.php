<?php

declare(strict_types=1);

/*
 * A gallery render guarded by a budget: the 2015 Commons edit, replayed in miniature from PHP.
 *
 * A page edit is parsed; each <gallery> looks up the file metadata of every image (one file lookup
 * and one DB query per image). Unguarded, a 10,000-image gallery means 10,000 lookups per parse.
 * Guarded, the gallery's size is reserved against the file-lookup limit before the first lookup and
 * refused at once ("can never fit, do not retry"), a gallery that only partly fits stops exactly at
 * the limit, and the limit report says what happened.
 *
 * Time is simulated with the engine's manual clock (2 ms per DB query), so the output is the same on
 * every run.
 *
 *   php -d ffi.enable=1 bindings/php/examples/gallery.php [POLICY.toml]
 *
 * The default policy is the repository's examples/policy.toml (file_lookups = 500 for class parse).
 */

require __DIR__ . '/../src/autoload.php';

use Costguard\{Budget, CostguardException, Engine, Outcome, Reason, RefusedException, Verdict};

const QUERY_SECONDS = 0.002;

/**
 * Renders one gallery of $images images: charges a file lookup and a DB query before each lookup
 * (or only the query, when the lookups were reserved up front). Returns [rendered, ?verdict].
 *
 * @return array{int, ?Verdict}
 */
function render_gallery(Engine $engine, Budget $parse, int $images, bool $lookupsReserved): array
{
    $depth = $parse->enter('nesting_depth'); // the <gallery> tag's expansion, left when $depth goes
    $charge = $lookupsReserved ? ['db_queries' => 1] : ['file_lookups' => 1, 'db_queries' => 1];
    for ($done = 0; $done < $images; $done++) {
        $verdict = $parse->tryChargeMany($charge);   // before the lookup, not after
        if ($verdict !== null) {
            return [$done, $verdict];
        }
        $engine->advanceClock(QUERY_SECONDS);         // LocalFile::load() would run here
    }
    return [$done, null];
}

$policyPath = $argv[1] ?? __DIR__ . '/../../../examples/policy.toml';
try {
    $engine = Engine::fromFile($policyPath, manualClock: true);
    // The edit passes admission first: the parse class's concurrency limit and the editor's share.
    $grant = $engine->admit('parse', 'edit-20150423-0340', key: 'user:Example');
} catch (CostguardException $e) {
    fwrite(STDERR, $e->getMessage() . "\n");
    exit(2);
}
$parse = $grant->budget();

echo "Parsing User:Example/Galleries (three <gallery> tags)\n\n";
$galleries = ['recent uploads' => 40, 'all of April' => 10_000, 'Djvu scans' => 480];
$guarded = 0;
foreach ($galleries as $name => $images) {
    echo "  gallery \"{$name}\" ({$images} images): ";
    // The image count is known before any lookup: reserve that many lookups, or learn at once
    // that they can never fit.
    try {
        $reservation = $parse->reserve('file_lookups', $images);
    } catch (RefusedException $e) {
        if ($e->verdict->reason === Reason::CannotFit) {
            echo "refused before any lookup\n    {$e->verdict}\n";
            continue;
        }
        // They would fit in an empty budget, but not in what is left: render image by image, up to
        // the limit.
        $reservation = null;
    }
    [$done, $stopped] = render_gallery($engine, $parse, $images, $reservation !== null);
    $reservation?->settle($done);                     // refund what the estimate over-counted
    $guarded += $done;
    echo $stopped === null
        ? "rendered all {$done}\n"
        : "rendered {$done}, then stopped\n    {$stopped}\n";
}

echo "\nheader for a sub-request: ", $parse->toHeader(), "\n";
if ($parse->isCancelled()) {
    // Cancellation crosses the hop: a callee begun from this header is refused at once.
    echo "  (the budget is spent: the header passes on no time and no allowance)\n";
}
echo "\n", $parse->report(), "\n";
echo "JSON: ", $parse->reportJson(), "\n\n";
foreach ($engine->stats()['classes'] as $class) {
    printf(
        "admission %-7s admitted %d, refused %d, in flight %d of %d\n",
        $class['class'],
        $class['admitted'],
        array_sum($class['refused']),
        $class['in_flight'],
        $class['limit'],
    );
}
$grant->finish(Outcome::Success);
printf("\nFile lookups for this edit: %d guarded, %d unguarded.\n", $guarded, array_sum($galleries));
