//! Replays the `ffi_ops` fuzz corpus (`fuzz/corpus/ffi_ops/`) and its saved crashes
//! (`fuzz/regressions/ffi_ops/`) through the harness the fuzz target runs, so that `cargo test` on
//! stable catches regressions of the C ABI's handle checks without libFuzzer. The library's own
//! targets are replayed by the main crate's `tests/fuzz_corpus.rs`.

#[path = "../../fuzz/harness/ffi_ops.rs"]
mod ffi_ops;
#[path = "../../fuzz/harness/replay.rs"]
mod replay;

#[test]
fn ffi_ops_corpus() {
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    replay::replay(&fuzz, "ffi_ops", ffi_ops::run);
}
