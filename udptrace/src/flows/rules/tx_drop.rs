//! tx_drop: the sender's device refused the datagram on the way out. A qdisc that is full
//! (a shaper's backlog, `pfifo`'s limit) drops in the sender's own `__dev_queue_xmit`: its
//! `enqueue` puts the skb on `to_free` (`qdisc_drop`, include/net/sch_generic.h) and
//! `__dev_xmit_skb` frees the list (net/core/dev.c), with QDISC_DROP from 5.19 on (the fq,
//! cake and other qdiscs name their own reasons later: include/net/dropreason-core.h).
//! `dev_queue_xmit` then returns NET_XMIT_DROP, which `ip_send_skb` (net/ipv4/ip_output.c)
//! turns into ENOBUFS; `udp_send_skb` (net/ipv4/udp.c) hides it from a sender without
//! IP_RECVERR and counts UDP_MIB_SNDBUFERRORS (`Udp SndbufErrors`) either way, so only a
//! socket with IP_RECVERR sees the failure.
//!
//! The drop names the device (the skb's `dev`) and its transmit queue (`skb->queue_mapping`,
//! which `netdev_core_pick_tx` set before the enqueue) but no process: the hop before it, the
//! same skb handed to the device (`net:net_dev_queue`, in the sender's system call), names
//! it. The qdisc of that queue (kind, handle, limit, drop counter) is read from the
//! namespace once, when the verdict opens (`qdiscs`).

use crate::{
    flows::{
        rule::{Context, KnownReason, Rule},
        table::FlowKey,
        verdict::{Facts, Namespace, VerdictCode},
    },
    model::{Errno, TraceEvent, What},
    qdiscs::of_queue,
};

/// `ENOBUFS` (include/uapi/asm-generic/errno.h): `net_xmit_errno(NET_XMIT_DROP)`.
const ENOBUFS: u32 = 105;

/// A later ENOBUFS on a flow with a tx_drop verdict is its sender's errno.
pub struct TxDrop;

impl Rule for TxDrop {
    fn drops(&self) -> &'static [KnownReason] {
        &[KnownReason::TxQueue]
    }

    fn on_drop(&mut self, event: &TraceEvent, _reason: KnownReason, cx: &mut Context<'_>) {
        let What::Drop { reason, txq, .. } = &event.what else {
            return;
        };
        // The last hop of this skb: its hand-over to the device, in the sender's context.
        let handed = event
            .skb
            .and_then(|skb| cx.recent(|e| e.skb == Some(skb)))
            .filter(|e| matches!(e.what, What::Xmit) && e.ifindex == event.ifindex)
            .cloned();
        // Without a reason (before 5.17) the freeing site is shared with fragment lists: only
        // an skb just handed to this device is the qdisc's (`KnownReason::of_drop`).
        if reason.is("NOT_SPECIFIED") && handed.is_none() {
            return;
        }
        let key = FlowKey::of(event);
        // Reading the qdiscs runs `tc` in the namespace: only for a verdict that opens.
        if cx.ledger.bump(key, VerdictCode::TxDrop, event) || !cx.room() {
            return;
        }
        let qdisc = (cx.env.qdiscs)(event).and_then(|qdiscs| of_queue(&qdiscs, *txq).cloned());
        cx.verdict(key, VerdictCode::TxDrop, event, || {
            let process = handed.as_ref().and_then(|hop| hop.process.clone());
            let mut evidence: Vec<TraceEvent> = handed.into_iter().collect();
            evidence.push(event.clone());
            (
                Facts::TxDrop {
                    source: event.source(),
                    destination: event.destination(),
                    namespace: Namespace::of(event),
                    device: event.ifname.clone(),
                    reason: reason.name.clone(),
                    txq: *txq,
                    qdisc,
                    process,
                    error: None,
                },
                evidence,
            )
        });
    }

    fn on_event(&mut self, event: &TraceEvent, cx: &mut Context<'_>) {
        let What::SendError { error, .. } = &event.what else {
            return;
        };
        if error.0 != Errno(ENOBUFS) {
            return;
        }
        let key = FlowKey::of(event);
        let Some(index) = cx.ledger.open_verdict(key, VerdictCode::TxDrop) else {
            return;
        };
        // The send error itself joins the evidence through its flow (`Diagnosis::observe`).
        if let Facts::TxDrop { error: seen, .. } = &mut cx.ledger.verdict_mut(index).facts {
            seen.get_or_insert(error.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, rc::Rc};

    use crate::{
        flows::{
            diagnosis::Diagnosis,
            rule::QdiscLister,
            testing::{drop, event, no_sockets, process},
            verdict::{Facts, Namespace, VerdictCode},
        },
        model::{DropReason, Errno, Location, Skb, SocketErrno, TraceEvent, What},
        qdiscs::Qdisc,
    };

    const CLIENT: &str = "192.0.2.1:40000";
    const SERVER: &str = "192.0.2.2:5061";

    fn on_eth0(mut event: TraceEvent, skb: u64) -> TraceEvent {
        event.ifindex = Some(2);
        event.ifname = Some("eth0".into());
        event.skb = Some(Skb(skb));
        event
    }

    fn handed(skb: u64, ts_ns: u64) -> TraceEvent {
        let mut hop = on_eth0(event(What::Xmit, CLIENT, SERVER, ts_ns), skb);
        hop.process = Some(process(42, "sender"));
        hop
    }

    /// A multiqueue root with a shaper on its first queue's child, as `tc -s -j` lists it.
    fn qdiscs() -> Vec<Qdisc> {
        let qdisc = |kind: &str, handle: &str, parent: Option<&str>, limit| Qdisc {
            kind: kind.into(),
            handle: handle.into(),
            parent: parent.map(Into::into),
            limit,
            drops: 1,
            overlimits: 3,
            backlog: 1584,
            qlen: 24,
        };
        vec![
            qdisc("mq", "1:", None, None),
            qdisc("fq_codel", "0:", Some("1:1"), Some(10_240)),
            qdisc("tbf", "8001:", Some("1:2"), Some(1_600)),
        ]
    }

    /// Lists `qdiscs()` for eth0, counting the lists asked for.
    fn counted_qdiscs(asked: &Rc<Cell<u32>>) -> QdiscLister {
        let asked = Rc::clone(asked);
        Box::new(move |event| {
            asked.set(asked.get() + 1);
            (event.ifname.as_deref() == Some("eth0")).then(qdiscs)
        })
    }

    fn on_queue(mut event: TraceEvent, queue: u16) -> TraceEvent {
        if let What::Drop { txq, .. } = &mut event.what {
            *txq = Some(queue);
        }
        event
    }

    fn unnamed_at(symbol: &str) -> What {
        What::Drop {
            reason: DropReason::named("NOT_SPECIFIED"),
            reason_inferred: false,
            location: Location::Symbol(symbol.into()),
            txq: None,
        }
    }

    #[test]
    fn qdisc_drops_name_device_queue_qdisc_sender_and_the_enobufs_it_saw() {
        let asked = Rc::new(Cell::new(0));
        let mut diagnosis = Diagnosis::new(no_sockets()).with_qdiscs(counted_qdiscs(&asked));
        let hop = handed(0x100, 1);
        diagnosis.observe(&hop);
        let first = on_queue(
            on_eth0(event(drop("QDISC_DROP"), CLIENT, SERVER, 2), 0x100),
            1,
        );
        diagnosis.observe(&first);
        let enobufs = event(
            What::SendError {
                error: SocketErrno(Errno(105)),
                call: None,
            },
            CLIENT,
            SERVER,
            3,
        );
        diagnosis.observe(&enobufs);
        // A later drop without its hop in the history still counts (a named reason: here the
        // qdisc subsystem's own, as 7.x names them).
        diagnosis.observe(&on_eth0(event(drop("QDISC(1)"), CLIENT, SERVER, 4), 0x200));
        // The qdiscs are read once, when the verdict opens, not per drop.
        assert_eq!(asked.get(), 1);
        let verdicts = diagnosis.verdicts();
        assert_eq!(verdicts.len(), 1, "{verdicts:?}");
        assert_eq!(verdicts[0].code, VerdictCode::TxDrop);
        assert_eq!(verdicts[0].count, 2);
        assert_eq!(verdicts[0].evidence[..3], [hop, first, enobufs]);
        assert_eq!(
            verdicts[0].facts,
            Facts::TxDrop {
                source: CLIENT.parse().unwrap(),
                destination: SERVER.parse().unwrap(),
                namespace: Namespace {
                    netns: 7,
                    netns_name: Some("host".into()),
                    container: None,
                },
                device: Some("eth0".into()),
                reason: "QDISC_DROP".into(),
                // The second queue's child of the mq root.
                txq: Some(1),
                qdisc: Some(qdiscs()[2].clone()),
                process: Some(process(42, "sender")),
                error: Some(Errno(105)),
            }
        );
    }

    #[test]
    fn an_unnamed_free_is_the_qdisc_s_only_right_after_the_hand_over() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        // 5.10: a fragment list freed in kfree_skb_list is no transmit drop.
        diagnosis.observe(&on_eth0(
            event(unnamed_at("kfree_skb_list+0x2c"), CLIENT, SERVER, 1),
            0x300,
        ));
        // Another skb's hand-over, then the reuse of its address elsewhere: not it either.
        diagnosis.observe(&handed(0x400, 2));
        let mut delivered = on_eth0(event(What::Recv, CLIENT, SERVER, 3), 0x400);
        delivered.ifname = Some("eth1".into());
        diagnosis.observe(&delivered);
        diagnosis.observe(&on_eth0(
            event(unnamed_at("kfree_skb_list+0x2c"), CLIENT, SERVER, 4),
            0x400,
        ));
        assert!(
            diagnosis.verdicts().is_empty(),
            "{:?}",
            diagnosis.verdicts()
        );
        diagnosis.observe(&handed(0x500, 5));
        diagnosis.observe(&on_eth0(
            event(unnamed_at("kfree_skb_list+0x2c"), CLIENT, SERVER, 6),
            0x500,
        ));
        let verdicts = diagnosis.verdicts();
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts[0].code, VerdictCode::TxDrop);
    }
}
