//! Placeholder until the backend benches land.
fn main() {}
