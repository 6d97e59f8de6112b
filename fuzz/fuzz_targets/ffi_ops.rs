#![no_main]

// The checks live in the shared harness so that the C ABI's tests replay the corpus on stable
// without libFuzzer (ffi/tests/fuzz_corpus.rs).
#[path = "../harness/ffi_ops.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
