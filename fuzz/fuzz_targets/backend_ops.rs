#![no_main]

// The checks live in the shared harness so that `cargo test --test fuzz_corpus` replays the corpus on
// stable without libFuzzer.
#[path = "../harness/backend_ops.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
