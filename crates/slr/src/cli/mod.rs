//! The commands that are not daemons: `slr check` (a configuration file), `slr ctl` (inspect and steer a running daemon), the
//! operator CA (`slr ca`), a network configuration site (`slr gateway-site`) and one report to a
//! parent (`slr report`).

pub mod check;
pub mod ctl;
pub mod pki;
