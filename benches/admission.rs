//! Placeholder until the admission benches land.
fn main() {}
