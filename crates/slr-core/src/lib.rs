//! The slr routing core (being written).
pub mod hash;
pub mod maglev;
pub mod select;
pub mod time;
pub mod flow_table;
pub mod router;
pub mod terminate;
pub mod tunnel;
