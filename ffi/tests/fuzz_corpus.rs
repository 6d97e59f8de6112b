//! Replays the `ffi_ops` fuzz corpus (`fuzz/corpus/ffi_ops/`) and its saved crashes
//! (`fuzz/regressions/ffi_ops/`) through the harness the fuzz target runs, so that `cargo test` on
//! stable catches regressions of the C ABI's handle checks without libFuzzer. The library's own
//! targets are replayed by the main crate's `tests/fuzz_corpus.rs`.

#[path = "../../fuzz/harness/ffi_ops.rs"]
mod ffi_ops;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn ffi_ops_corpus() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let corpus = files(&fuzz.join("corpus/ffi_ops"));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/ffi_ops/ is empty or missing"
    );
    let regressions = files(&fuzz.join("regressions/ffi_ops"));
    let failed: Vec<String> = corpus
        .iter()
        .chain(&regressions)
        .filter(|path| {
            let data = std::fs::read(path).expect("readable corpus file");
            catch_unwind(AssertUnwindSafe(|| ffi_ops::run(&data))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "ffi_ops: {} of {} inputs failed:\n  {}",
        failed.len(),
        corpus.len() + regressions.len(),
        failed.join("\n  ")
    );
}
