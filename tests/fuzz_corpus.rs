//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) and every saved crash
//! (`fuzz/regressions/<target>/`) through the same harness code the fuzz targets run, so that
//! `cargo test` on stable catches regressions without libFuzzer.

// Each harness is standalone (a fuzz target includes just one), so each brings its own copy of
// `fuzz/harness/reader.rs`; here all of them are loaded together.
#![allow(clippy::duplicate_mod)]

#[path = "../fuzz/harness/admission_ops.rs"]
mod admission_ops;
#[path = "../fuzz/harness/backend_ops.rs"]
mod backend_ops;
#[path = "../fuzz/harness/budget_ops.rs"]
mod budget_ops;
#[path = "../fuzz/harness/header_decode.rs"]
mod header_decode;
#[path = "../fuzz/harness/policy_toml.rs"]
mod policy_toml;

#[path = "../fuzz/harness/replay.rs"]
mod corpus;

use std::path::{Path, PathBuf};

fn replay(target: &str, run: fn(&[u8])) {
    let fuzz: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    corpus::replay(&fuzz, target, run);
}

#[test]
fn policy_toml_corpus() {
    replay("policy_toml", policy_toml::run);
}

#[test]
fn header_decode_corpus() {
    replay("header_decode", header_decode::run);
}

#[test]
fn budget_ops_corpus() {
    replay("budget_ops", budget_ops::run);
}

#[test]
fn admission_ops_corpus() {
    replay("admission_ops", admission_ops::run);
}

#[test]
fn backend_ops_corpus() {
    replay("backend_ops", backend_ops::run);
}
