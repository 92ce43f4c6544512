//! The slr binary (being written).
fn main() {}
