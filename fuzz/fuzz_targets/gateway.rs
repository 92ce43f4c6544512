//! Gateway tables as a router fetches them from a network configuration site over HTTPS
//! (`GatewayTable::from_json`, slr-control's `gateway` module): untrusted input that decides
//! where the router may tunnel to.
//!
//! Input: the whole input is the response body, as bytes (not necessarily UTF-8).
//!
//! Checked: `Ok` or `Err`, never a panic; an error has a message. An accepted table keeps every
//! promise of the module's schema, checked here by hand rather than with the crate's own
//! `validate` (names lowercase DNS labels of `[a-z0-9-]` and unique, addresses unicast, at least
//! one subnet per child and none with host bits set, costs finite and >= 0, no empty label key);
//! `to_json` writes it in a form `from_json` reads back equal, and writing that again gives the
//! same text; its children written as TOML (`[[children]]`, the daemon's static list) read back
//! equal through `GatewayTable::from_entries`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slr_control::{GatewayEntry, GatewayTable};
use std::collections::{BTreeMap, HashSet};

/// A node name as the schema documents it: lowercase DNS labels (RFC 1123), at most 253
/// characters in all.
fn is_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        })
}

fn check_accepted(table: &GatewayTable) {
    let mut names = HashSet::new();
    for c in &table.children {
        assert!(is_node_name(&c.name), "invalid name {:?} accepted", c.name);
        assert!(
            names.insert(&c.name),
            "duplicate name {:?} accepted",
            c.name
        );
        let a = c.address;
        assert!(
            !a.is_unspecified() && !a.is_broadcast() && !a.is_multicast(),
            "{}: address {a} accepted",
            c.name
        );
        assert!(!c.subnets.is_empty(), "{}: no subnets accepted", c.name);
        for s in &c.subnets {
            assert!(s.prefix_len() <= 32);
            assert_eq!(
                u32::from(s.network()) & !s.netmask(),
                0,
                "{}: subnet {s} with host bits accepted",
                c.name
            );
            let again: slr_control::Subnet = s.to_string().parse().expect("subnet text parses");
            assert_eq!(&again, s);
        }
        assert!(
            c.cost.is_finite() && c.cost >= 0.0,
            "{}: cost {} accepted",
            c.name,
            c.cost
        );
        assert!(
            !c.labels.keys().any(String::is_empty),
            "{}: empty label key",
            c.name
        );
        assert_eq!(table.get(&c.name), Some(c));
    }

    let json = table.to_json();
    let again = GatewayTable::from_json(json.as_bytes())
        .unwrap_or_else(|e| panic!("to_json output refused: {e}\n{json}"));
    assert_eq!(
        &again, table,
        "to_json -> from_json changed the table (left: read back)\n{json}"
    );
    assert_eq!(again.to_json(), json, "to_json is not stable");

    // The daemon's static list: `[[children]]` tables in TOML, the same keys.
    let mut doc = BTreeMap::new();
    doc.insert("children", &table.children);
    // Whatever a site may serve, an operator can also write in the daemon's file.
    let text = toml::to_string(&doc).expect("an accepted table can be written as TOML");
    let read: BTreeMap<String, Vec<GatewayEntry>> = toml::from_str(&text)
        .unwrap_or_else(|e| panic!("TOML written from a table does not read: {e}\n{text}"));
    let children = read.get("children").cloned().unwrap_or_default();
    let from_toml = GatewayTable::from_entries(table.version, children)
        .unwrap_or_else(|e| panic!("TOML children refused: {e}\n{text}"));
    assert_eq!(
        &from_toml, table,
        "TOML round trip changed the table\n{text}"
    );
}

fuzz_target!(|data: &[u8]| {
    match GatewayTable::from_json(data) {
        Ok(table) => {
            if trace() {
                eprintln!(
                    "accepted: version {}, {} children",
                    table.version,
                    table.children.len()
                );
            }
            table.validate().expect("an accepted table validates");
            check_accepted(&table);
        }
        Err(e) => {
            let message = e.to_string();
            if trace() {
                eprintln!("refused: {message}");
            }
            assert!(message.starts_with("gateway table: "), "{message}");
        }
    }
});

/// `SLR_FUZZ_TRACE=1 fuzz/target/.../gateway <file>` prints what `from_json` said.
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("SLR_FUZZ_TRACE").is_some())
}
