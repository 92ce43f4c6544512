//! The router's answers on its control socket (`slr ctl R ...`): each command asks the packet
//! thread through the mailbox, or reads the control thread's view.

use super::metrics::add_router_metrics;
use crate::mailbox::Handle;
use crate::metrics::Exposition;
use anyhow::Result;
use serde_json::{json, Value};
use std::sync::Arc;

/// The control thread's view, once it runs (routers without `[control]` have none).
pub(super) type ViewSlot = Arc<std::sync::OnceLock<crate::control_plane::SharedView>>;

fn control_view(slot: &ViewSlot) -> Option<crate::control_plane::ControlView> {
    slot.get().map(|v| {
        v.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    })
}

/// Answers a control-socket request.
pub(super) fn answer(h: &Handle, slot: &ViewSlot, req: &Value) -> Result<Value> {
    let cmd = req["cmd"].as_str().unwrap_or("");
    Ok(match cmd {
        "children" | "table" | "parents" | "control" => match control_view(slot) {
            Some(mut v) => {
                // Each child's health check, as the core holds it.
                let s = h.snapshot()?;
                for c in &mut v.children {
                    c.health = s
                        .next_hops
                        .iter()
                        .find(|n| n.name == c.name && n.configured)
                        .map(|n| if n.available { "up" } else { "down" }.to_owned());
                }
                json!({"ok": true, "kind": "router", "control": v})
            }
            None => {
                json!({"ok": false, "error": "this router has no [control] section (no children report to it)"})
            }
        },
        "status" | "stats" | "hosts" | "next_hops" => {
            let s = h.snapshot()?;
            json!({"ok": true, "kind": "router", "snapshot": s})
        }
        "flows" => {
            let limit = req["limit"].as_u64().unwrap_or(10_000) as usize;
            json!({"ok": true, "flows": h.flows(limit)?})
        }
        "reload" => {
            h.reload()?;
            json!({"ok": true})
        }
        "metrics" => json!({"ok": true, "text": metrics_page(h, slot)?}),
        other => {
            json!({"ok": false, "error": format!("unknown command {other:?} (status, flows, hosts, stats, children, table, reload, metrics)")})
        }
    })
}

pub(super) fn metrics_page(h: &Handle, slot: &ViewSlot) -> Result<String> {
    let mut page = Exposition::new();
    add_router_metrics(&mut page, &h.snapshot()?);
    if let Some(v) = control_view(slot) {
        v.add_metrics(&mut page);
    }
    Ok(page.render())
}
