//! The slr routing core (being written).
pub mod time;
