//! The router's answers on its control socket (`slr ctl R ...`): each command asks the packet
//! thread through the mailbox, or reads the control thread's view.

use super::metrics::add_router_metrics;
use crate::mailbox::{Handle, OverrideChange};
use crate::metrics::Exposition;
use crate::snapshot::MAX_FLOW_PAGE;
use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use slr_ctl::Parts;
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

/// Flows `slr ctl R flows` lists without `--limit` or `--all`.
const DEFAULT_FLOW_ROWS: usize = 1_000;

/// Answers a control-socket request (a streamed answer sends its first parts to `parts`).
pub(super) fn answer(h: &Handle, slot: &ViewSlot, req: &Value, parts: &mut Parts) -> Result<Value> {
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
        "flows" if req["all"] == true => stream_flows(h, parts)?,
        "flows" => {
            let limit = req["limit"]
                .as_u64()
                .map_or(DEFAULT_FLOW_ROWS, |l| l as usize)
                .min(MAX_FLOW_PAGE);
            let page = h.flows(0, limit)?;
            json!({"ok": true, "flows": page.rows(), "total": page.total})
        }
        "weight" => {
            let weight = req["weight"]
                .as_u64()
                .ok_or_else(|| anyhow!("weight: a whole number from 0 to 65535"))?;
            let weight = u32::try_from(weight).unwrap_or(u32::MAX);
            let o = h.set_override(OverrideChange::Weight(next_hop(req)?, weight))?;
            json!({"ok": true, "overrides": o})
        }
        "drain" | "undrain" => {
            let o = h.set_override(OverrideChange::Drain(next_hop(req)?, cmd == "drain"))?;
            json!({"ok": true, "overrides": o})
        }
        "clear" => {
            let n = req["next_hop"].as_str().map(str::to_owned);
            let o = h.set_override(OverrideChange::Clear(n))?;
            json!({"ok": true, "overrides": o})
        }
        "overrides" => json!({"ok": true, "overrides": h.snapshot()?.overrides}),
        "shortcuts" if req["action"] == "flush" => {
            json!({"ok": true, "flushed": h.shortcut_flush()?})
        }
        "fast-path" if req["action"] == "flush" => {
            json!({"ok": true, "flushed": h.fast_path_flush()?})
        }
        "reload" => {
            h.reload()?;
            json!({"ok": true})
        }
        "metrics" => json!({"ok": true, "text": metrics_page(h, slot)?}),
        other => {
            json!({"ok": false, "error": format!("unknown command {other:?} (status, flows, hosts, stats, children, table, parents, reload, metrics, weight, drain, undrain, overrides, clear, fast-path flush, shortcuts flush)")})
        }
    })
}

/// The next hop a request names.
fn next_hop(req: &Value) -> Result<String> {
    req["next_hop"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("name a next hop (slr ctl R drain h2)"))
}

/// The whole flow table, page by page: each page is copied by the packet thread (no
/// formatting there) and formatted here while the packet thread goes on.
fn stream_flows(h: &Handle, parts: &mut Parts) -> Result<Value> {
    let mut offset = 0;
    loop {
        let page = h.flows(offset, MAX_FLOW_PAGE)?;
        offset += page.len();
        let last = page.len() < MAX_FLOW_PAGE || offset >= page.total;
        let answer = json!({"ok": true, "flows": page.rows(), "total": page.total});
        if last {
            return Ok(answer);
        }
        if !parts.send(answer) {
            return Ok(json!({"ok": false, "error": "the client left"}));
        }
    }
}

pub(super) fn metrics_page(h: &Handle, slot: &ViewSlot) -> Result<String> {
    let mut page = Exposition::new();
    add_router_metrics(&mut page, &h.snapshot()?);
    if let Some(v) = control_view(slot) {
        v.add_metrics(&mut page);
    }
    Ok(page.render())
}
