//! rcvbuf_overflow: the receiving socket's buffer is full. Keyed by the socket, not the flow:
//! every sender's drops count together.

use crate::{
    flows::{
        rule::{Context, KnownReason, Rule},
        table::FlowKey,
        verdict::{Facts, Namespace, VerdictCode},
    },
    model::TraceEvent,
    sockets::ListedSocket,
};

pub struct RcvbufOverflow;

impl Rule for RcvbufOverflow {
    fn drops(&self) -> &'static [KnownReason] {
        &[KnownReason::SocketRcvbuff]
    }

    fn on_drop(&mut self, event: &TraceEvent, _reason: KnownReason, cx: &mut Context<'_>) {
        let key = FlowKey::new(event.destination(), event.destination());
        // Listing sockets costs a sock_diag dump: not for verdicts past the allowance.
        if cx.ledger.bump(key, VerdictCode::RcvbufOverflow, event) || !cx.room() {
            return;
        }
        let sockets = (cx.env.sockets)(event).unwrap_or_default();
        let socket = sockets
            .iter()
            .find(|(entry, _)| entry.accepts(event.source(), event.destination()))
            .map(|(entry, owner)| ListedSocket {
                entry: entry.clone(),
                owner: owner.clone(),
            });
        cx.verdict(key, VerdictCode::RcvbufOverflow, event, || {
            (
                Facts::Rcvbuf {
                    destination: event.destination(),
                    namespace: Namespace::of(event),
                    socket,
                },
                vec![event.clone()],
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        flows::{
            diagnosis::Diagnosis,
            rule::SocketLister,
            testing::{drop, event},
            verdict::{Facts, VerdictCode},
        },
        sockets::{ListedSocket, SocketList, UdpSocketEntry},
    };

    #[test]
    fn the_receiving_socket_is_a_fact_and_every_sender_counts() {
        let entry = UdpSocketEntry {
            local: "0.0.0.0:6000".parse().unwrap(),
            peer: None,
            rx_queue: 8192,
            inode: 9,
            uid: 1000,
            drops: 40,
            rcvbuf: Some(8192),
        };
        let listed = entry.clone();
        let sockets: SocketLister =
            Box::new(move |_| Some(SocketList::from([(listed.clone(), None)])));
        let mut diagnosis = Diagnosis::new(sockets);
        for port in 1..=3_u16 {
            diagnosis.observe(&event(
                drop("SOCKET_RCVBUFF"),
                &format!("192.0.2.1:{port}"),
                "192.0.2.2:6000",
                u64::from(port),
            ));
        }
        let verdicts = diagnosis.verdicts();
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts[0].code, VerdictCode::RcvbufOverflow);
        assert!(verdicts[0].socket_wide());
        assert_eq!(verdicts[0].count, 3);
        let Facts::Rcvbuf { socket, .. } = &verdicts[0].facts else {
            panic!("{:?}", verdicts[0].facts);
        };
        assert_eq!(*socket, Some(ListedSocket { entry, owner: None }));
    }
}
