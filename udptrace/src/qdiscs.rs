//! Which queueing discipline refused a datagram on the way out: a `tx_drop` verdict names the
//! qdisc of the device's transmit queue (kind, handle, limit, its counters), read with `tc -s
//! -d -raw -j qdisc show dev DEV` inside the device's namespace.
//!
//! A subprocess, like `firewall`'s `nft`, for the same reason: the kernel hands each qdisc's
//! settings out as kind-specific netlink attributes (RTM_GETQDISC's TCA_OPTIONS: `struct
//! tc_tbf_qopt` inside TCA_TBF_PARMS, `struct tc_fifo_qopt`, TCA_FQ_CODEL_LIMIT, ...; dozens of
//! kinds), and `tc` is what decodes them all; `-raw` makes tbf print its `limit` instead of
//! the latency it works out from it (iproute2 tc/q_tbf.c). It runs only when a `tx_drop`
//! verdict opens, at most once per device and namespace every `QDISCS_REFRESH`
//! (`namespaces`), never per event.

use std::{fs::File, io};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{host::output_in, sanitize::sanitize_kernel_string};

/// `tc -s -d -raw -j qdisc show dev DEVICE` run inside the network namespace `netns` refers to.
pub fn qdiscs_in(netns: &File, device: &str) -> io::Result<String> {
    output_in(
        netns,
        "tc",
        &["-s", "-d", "-raw", "-j", "qdisc", "show", "dev", device],
    )
}

/// One qdisc of a device, as `tc -s -j` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qdisc {
    /// `tbf`, `pfifo_fast`, `fq_codel`, `mq`, ...
    pub kind: String,
    /// `8001:`, as `tc` writes it.
    pub handle: String,
    /// `1:4` for the qdisc of a multiqueue root's fourth transmit queue; `None` at the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Its queue limit (`limit`), in [`Qdisc::limit_unit`]; `None` for kinds without one
    /// (`pfifo_fast` and `mq` queue up to the device's `txqueuelen`, or nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Datagrams it dropped since it was created (when the verdict was built).
    pub drops: u64,
    pub overlimits: u64,
    /// Bytes and packets queued then.
    pub backlog: u64,
    pub qlen: u64,
}

impl Qdisc {
    /// What `limit` counts: bytes for the byte-limited kinds (include/uapi/linux/pkt_sched.h:
    /// `tc_tbf_qopt.limit`, bfifo's `tc_fifo_qopt.limit`), packets for the others that have
    /// one.
    pub fn limit_unit(&self) -> &'static str {
        if ["tbf", "bfifo", "red", "gred"].contains(&self.kind.as_str()) {
            "bytes"
        } else {
            "packets"
        }
    }

    /// Kinds whose queue is the device's `txqueuelen` (`pfifo_fast`: `qdisc_dev(sch)->tx_queue_len`,
    /// net/sched/sch_generic.c) rather than a limit of their own.
    pub fn limited_by_txqueuelen(&self) -> bool {
        self.kind == "pfifo_fast"
    }

    /// `tbf 8001:`, with its parent below a multiqueue root: `fq_codel 0: (parent 1:4)`.
    pub fn name(&self) -> String {
        match &self.parent {
            Some(parent) => format!("{} {} (parent {parent})", self.kind, self.handle),
            None => format!("{} {}", self.kind, self.handle),
        }
    }
}

/// The qdiscs of `tc -j qdisc show` output (`[]` when it is not one: no such device, no `tc`).
/// Names come from the kernel through `tc`: sanitized as kernel strings.
pub fn parse_qdiscs(json: &str) -> Vec<Qdisc> {
    let Ok(Value::Array(entries)) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    let text = |value: &Value| {
        value
            .as_str()
            .map(|text| sanitize_kernel_string(text.as_bytes()))
    };
    let count = |value: &Value| value.as_u64().unwrap_or(0);
    entries
        .iter()
        .filter_map(|entry| {
            Some(Qdisc {
                kind: text(&entry["kind"])?,
                handle: text(&entry["handle"])?,
                parent: text(&entry["parent"]).filter(|_| entry["root"] != true),
                limit: entry["options"]["limit"].as_u64(),
                drops: count(&entry["drops"]),
                overlimits: count(&entry["overlimits"]),
                backlog: count(&entry["backlog"]),
                qlen: count(&entry["qlen"]),
            })
        })
        .collect()
}

/// Multiqueue roots: one child qdisc per transmit queue, the child of queue N at minor N + 1
/// (net/sched/sch_mq.c `mq_init`: `TC_H_MAKE(TC_H_MAJ(sch->handle), TC_H_MIN(ntx + 1))`;
/// mqprio and taprio likewise).
const MULTIQUEUE: [&str; 3] = ["mq", "mqprio", "taprio"];

/// The qdisc that enqueues for transmit queue `txq`: under a multiqueue root, that queue's
/// child; otherwise the root, which every queue shares (`__dev_queue_xmit` takes
/// `txq->qdisc`, net/core/dev.c, and a single root qdisc is every queue's `qdisc`).
pub fn of_queue(qdiscs: &[Qdisc], txq: Option<u16>) -> Option<&Qdisc> {
    let root = qdiscs.iter().find(|qdisc| qdisc.parent.is_none())?;
    if !MULTIQUEUE.contains(&root.kind.as_str()) {
        return Some(root);
    }
    let major = root.handle.trim_end_matches(':');
    let child = format!("{major}:{:x}", u32::from(txq?) + 1);
    qdiscs
        .iter()
        .find(|qdisc| qdisc.parent.as_deref() == Some(child.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tc -s -d -raw -j qdisc show dev eth0` (iproute2 6.1) of the lab's shaped client.
    const TBF: &str = r#"[{"kind":"tbf","handle":"8001:","root":true,"refcnt":3,"options":{"rate":10000,"burst":"1540b/1","mpu":0,"burst_raw":"24b76a","lat":6000,"limit":1600,"linklayer":"ethernet"},"bytes":1386,"packets":21,"drops":77,"overlimits":98,"requeues":0,"backlog":1584,"qlen":24}]"#;

    /// An `mq` root with a qdisc per transmit queue (a two-queue veth).
    const MQ: &str = r#"[{"kind":"mq","handle":"1:","root":true,"options":{},"bytes":0,"packets":0,"drops":5,"overlimits":0,"requeues":0,"backlog":0,"qlen":0},{"kind":"pfifo","handle":"8002:","parent":"1:1","options":{"limit":7},"bytes":0,"packets":0,"drops":0,"overlimits":0,"requeues":0,"backlog":0,"qlen":0},{"kind":"pfifo_fast","handle":"0:","parent":"1:2","options":{"bands":3,"multiqueue":false},"bytes":0,"packets":0,"drops":5,"overlimits":0,"requeues":0,"backlog":0,"qlen":0}]"#;

    #[test]
    fn reads_a_shaper_with_its_limit_and_counters() {
        let qdiscs = parse_qdiscs(TBF);
        assert_eq!(
            qdiscs,
            [Qdisc {
                kind: "tbf".into(),
                handle: "8001:".into(),
                parent: None,
                limit: Some(1600),
                drops: 77,
                overlimits: 98,
                backlog: 1584,
                qlen: 24,
            }]
        );
        assert_eq!(qdiscs[0].limit_unit(), "bytes");
        assert_eq!(qdiscs[0].name(), "tbf 8001:");
        // Every queue shares a single root.
        assert_eq!(of_queue(&qdiscs, Some(3)), Some(&qdiscs[0]));
        assert_eq!(of_queue(&qdiscs, None), Some(&qdiscs[0]));
    }

    #[test]
    fn a_multiqueue_root_gives_each_transmit_queue_its_child() {
        let qdiscs = parse_qdiscs(MQ);
        assert_eq!(qdiscs.len(), 3);
        let first = of_queue(&qdiscs, Some(0)).unwrap();
        assert_eq!(first.name(), "pfifo 8002: (parent 1:1)");
        assert_eq!((first.limit, first.limit_unit()), (Some(7), "packets"));
        let second = of_queue(&qdiscs, Some(1)).unwrap();
        assert_eq!(second.kind, "pfifo_fast");
        assert_eq!(second.limit, None);
        assert!(second.limited_by_txqueuelen());
        // A queue the device does not have, or an unknown queue: no child to name.
        assert_eq!(of_queue(&qdiscs, Some(2)), None);
        assert_eq!(of_queue(&qdiscs, None), None);
    }

    #[test]
    fn anything_but_tc_s_json_gives_nothing() {
        assert!(parse_qdiscs("").is_empty());
        assert!(parse_qdiscs("Cannot find device \"eth9\"").is_empty());
        assert!(parse_qdiscs(r#"[{"handle":"1:"}]"#).is_empty());
        assert_eq!(of_queue(&[], Some(0)), None);
    }

    #[test]
    fn kernel_strings_are_sanitized() {
        let qdiscs = parse_qdiscs(r#"[{"kind":"tbf\u001b[31m","handle":"1:","root":true}]"#);
        assert!(!qdiscs[0].kind.contains('\u{1b}'), "{qdiscs:?}");
    }
}
