<?php

declare(strict_types=1);

// A PSR-4 autoloader for the Costguard namespace, for use without composer:
//     require '/path/to/bindings/php/src/autoload.php';
spl_autoload_register(static function (string $class): void {
    if (str_starts_with($class, 'Costguard\\')) {
        $file = __DIR__ . '/' . str_replace('\\', '/', substr($class, strlen('Costguard\\'))) . '.php';
        if (is_file($file)) {
            require $file;
        }
    }
});
