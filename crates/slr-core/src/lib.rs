//! The slr routing core (being written).
pub mod flow_table;
pub mod hash;
pub mod maglev;
pub mod route_table;
pub mod router;
pub mod select;
pub mod shortcut;
pub mod terminate;
#[cfg(test)]
mod testutil;
pub mod time;
pub mod tunnel;
pub mod whohas;
