//! The committed header `include/costguard.h` must be what cbindgen generates from this crate now.
//!
//! Regenerate after changing the C ABI with
//! `COSTGUARD_BLESS=1 cargo test -p costguard-ffi --test header`.

use std::path::PathBuf;

fn generate() -> String {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("UTF-8 header")
}

#[test]
fn committed_header_matches_the_code() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../include/costguard.h");
    let generated = generate();
    if std::env::var_os("COSTGUARD_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/costguard.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "include/costguard.h is out of date with ffi/src (first difference at line {}).\n\
             Regenerate it with:\n    COSTGUARD_BLESS=1 cargo test -p costguard-ffi --test header\n\
             committed: {:?}\ngenerated: {:?}",
            first + 1,
            committed.lines().nth(first).unwrap_or("<end>"),
            generated.lines().nth(first).unwrap_or("<end>"),
        );
    }
}
