//! The configuration loaders on arbitrary text, as a router file and as a host file: they must
//! return Ok or an error, never panic. A router file that loads must also be accepted or refused
//! (not panic) by the routing core it configures. A router file that loads also serializes
//! back (the lab writes files from the same types) and that text loads to the same
//! configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slr_config as config;
use slr_core::select::Policy;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.toml");
    let router = config::parse_router(text, file);
    let host = config::parse_host(text, file);
    if trace() {
        eprintln!(
            "router file: {:?}",
            router
                .as_ref()
                .map(|c| &c.name)
                .map_err(|e| format!("{e:#}"))
        );
        eprintln!(
            "host file: {:?}",
            host.as_ref().map(|h| &h.name).map_err(|e| format!("{e:#}"))
        );
    }
    if let Ok(file) = toml::from_str::<config::RouterFile>(text) {
        let again = toml::to_string(&file).expect("a router file serializes");
        let back: config::RouterFile = toml::from_str(&again).expect("and reads back");
        // Text, not values: a NaN cost is a valid value and never equal to itself.
        assert_eq!(toml::to_string(&back).unwrap(), again);
    }
    match router {
        Ok(c) => {
            assert!(c.core.tunnel_mtu >= 576);
            assert!(c.core.flow_table.max_flows >= 1);
            assert!(!c.health.timeout.is_zero() && c.health.timeout < c.health.interval);
            // Maglev's table takes ~10 ms to build under instrumentation; the other policies
            // check the same things (names, overlaps, MTU) in microseconds.
            let mut core = c.core;
            for v in &mut core.virtual_hosts {
                if v.policy == Policy::Maglev {
                    v.policy = Policy::Weighted;
                }
            }
            let _ = slr_core::router::Router::new(core);
        }
        // Every error names the file (and the key and value at fault, not checked here).
        Err(e) => assert!(format!("{e:#}").contains("fuzz.toml"), "{e:#}"),
    }
    match host {
        Ok(h) => {
            assert!(!h.virtual_subnets.is_empty() && !h.trusted_tunnel_sources.is_empty());
            assert!(!h.tun.is_empty() && h.tun.len() <= 15);
        }
        Err(e) => assert!(format!("{e:#}").contains("fuzz.toml"), "{e:#}"),
    }
});

/// `SLR_FUZZ_TRACE=1 fuzz/target/.../config <file>` prints what each loader made of the file.
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("SLR_FUZZ_TRACE").is_some())
}
