//! reply_source_mismatch: a reply to a request that went to A:p leaves from B:p. A server
//! socket bound to the wildcard address that answers with plain `sendto()` lets the kernel pick
//! the reply's source from the route back (the device's address), not the address the client
//! wrote to; the client's connected socket then refuses the reply.

use std::net::SocketAddr;

use crate::{
    containers::Container,
    flows::{
        bounded::Bounded,
        rule::{Context, Rule},
        table::{FlowKey, canonical},
        verdict::{Facts, Sender, VerdictCode},
    },
    model::{RouteDirection, SendCall, SocketInfo, TraceEvent, What},
};

/// A request delivered to a wildcard-bound socket: the address the client asked for.
struct Request {
    server: SocketAddr,
    socket: SocketInfo,
    /// The delivery, the verdict's first evidence.
    deliver: TraceEvent,
    /// The container the request was sent from (its first hop's namespace's), if any.
    client_container: Option<Container>,
}

pub struct ReplySource {
    /// (client endpoint, server port) → request to a wildcard socket; as many as flows.
    requests: Bounded<(SocketAddr, u16), Request>,
}

impl ReplySource {
    pub fn new(max_flows: usize) -> Self {
        Self {
            requests: Bounded::new(max_flows),
        }
    }

    fn on_deliver(&mut self, event: &TraceEvent, socket: &SocketInfo, cx: &Context<'_>) {
        if socket.local.ip().is_unspecified() && socket.peer.is_none() {
            let client = canonical(event.source());
            // The request left the client moments ago: its hop in the client's namespace.
            let client_container = cx
                .recent(|e| {
                    e.container.is_some()
                        && canonical(e.source()) == client
                        && e.dport == event.dport
                        && e.netns != event.netns
                })
                .and_then(|e| e.container.as_deref().cloned());
            self.requests.insert(
                (client, event.dport),
                Request {
                    server: canonical(event.destination()),
                    socket: socket.clone(),
                    deliver: event.clone(),
                    client_container,
                },
            );
        }
    }

    fn on_xmit(&self, event: &TraceEvent, cx: &mut Context<'_>) {
        // Only a datagram's first hop shows the source the sender chose; later hops of the
        // same skb (`tracked`) may carry a tuple NAT rewrote on the way (a DNAT undone is not
        // a wrong source).
        if event.tracked {
            return;
        }
        let client = canonical(event.destination());
        let Some(request) = self.requests.get(&(client, event.sport)) else {
            return;
        };
        let used = canonical(event.source());
        if used.ip() == request.server.ip() {
            return;
        }
        let datagram = (used, client);
        if let Some(index) = cx.ledger.explained(&datagram) {
            cx.ledger.count_occurrence(index, event);
            Self::name_client(index, request, cx);
            return;
        }
        let key = FlowKey::new(client, request.server);
        let route = cx
            .recent(|e| {
                matches!(
                    &e.what,
                    What::Route {
                        direction: RouteDirection::Output,
                        ..
                    }
                ) && canonical(e.destination()) == client
                    && e.sport == event.sport
            })
            .cloned();
        let index = cx.verdict(key, VerdictCode::ReplySourceMismatch, event, || {
            let route_device = route.as_ref().and_then(|route| match &route.what {
                What::Route { device, .. } => Some(device.clone()),
                _ => None,
            });
            let mut evidence = vec![request.deliver.clone(), event.clone()];
            evidence.extend(route);
            (
                Facts::ReplySource {
                    client,
                    asked: request.server,
                    used,
                    socket: request.socket.clone(),
                    route_device,
                    sender: None,
                    client_container: request.client_container.clone(),
                    server_container: request.deliver.container.as_deref().cloned(),
                },
                evidence,
            )
        });
        if let Some(index) = index {
            cx.ledger.explain(datagram, index);
        }
    }

    /// A verdict opened while its client's container was unknown (no hop of the first
    /// request in the client's namespace in the history at its delivery, or a container the
    /// runtime had not named yet) takes it from the request this later reply answers: each
    /// delivery looks up its own request's hop, so one missed or early hop does not leave the
    /// verdict without the client's container for good.
    fn name_client(index: usize, request: &Request, cx: &mut Context<'_>) {
        let Facts::ReplySource {
            client_container, ..
        } = &mut cx.ledger.verdict_mut(index).facts
        else {
            return;
        };
        let named = |container: &Option<Container>| {
            container.as_ref().and_then(Container::described).is_some()
        };
        if !named(client_container) && named(&request.client_container) {
            client_container.clone_from(&request.client_container);
        }
    }

    /// A send seen by a function probe on `udp_sendmsg` is reported when the call returns,
    /// after its datagram's `xmit`: it completes the verdict of that reply with how the
    /// server sent it.
    fn on_send_call(event: &TraceEvent, call: SendCall, cx: &mut Context<'_>) {
        if call.pktinfo {
            return;
        }
        let client = canonical(event.destination());
        let Some(index) = cx
            .ledger
            .explained_datagrams()
            .find(|((from, to), _)| *to == client && from.port() == event.sport)
            .map(|(_, index)| index)
        else {
            return;
        };
        let verdict = cx.ledger.verdict_mut(index);
        let Facts::ReplySource { sender, .. } = &mut verdict.facts else {
            return;
        };
        if sender.is_some() {
            return;
        }
        *sender = Some(Sender {
            process: event.process.clone(),
            call,
        });
        cx.ledger.add_evidence(index, event);
    }
}

impl Rule for ReplySource {
    fn on_event(&mut self, event: &TraceEvent, cx: &mut Context<'_>) {
        match &event.what {
            What::Deliver { socket } => self.on_deliver(event, socket, cx),
            What::Xmit => self.on_xmit(event, cx),
            What::Send {
                call: Some(call), ..
            } => Self::on_send_call(event, *call, cx),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        containers::{Container, Runtime},
        flows::{
            diagnosis::Diagnosis,
            testing::{
                event, no_sockets, process, sendto_without_pktinfo, wildcard_socket,
                wrong_source_reply,
            },
            verdict::{Facts, Sender, VerdictCode},
        },
        model::{RouteDevice, SendCall, Skb, TraceEvent, What},
    };

    #[test]
    fn facts_name_the_address_asked_the_address_used_and_the_sender() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        let client = "198.51.100.2:40000";
        for event in wrong_source_reply(client) {
            diagnosis.observe(&event);
        }
        diagnosis.observe(&sendto_without_pktinfo(client, 4));
        let verdict = &diagnosis.verdicts()[0];
        assert_eq!(verdict.code, VerdictCode::ReplySourceMismatch);
        assert_eq!(
            verdict.facts,
            Facts::ReplySource {
                client: client.parse().unwrap(),
                asked: "192.0.2.1:4000".parse().unwrap(),
                used: "198.51.100.1:4000".parse().unwrap(),
                socket: wildcard_socket(),
                route_device: Some(RouteDevice(Some("br0".into()))),
                sender: Some(Sender {
                    process: Some(process(42, "server")),
                    call: SendCall {
                        pktinfo: false,
                        connected: false
                    },
                }),
                client_container: None,
                server_container: None,
            }
        );
        let kinds: Vec<&str> = verdict.evidence.iter().map(TraceEvent::kind_name).collect();
        assert_eq!(kinds, ["deliver", "xmit", "route", "send"]);
    }

    /// The client's container, as the runtime names it.
    fn web_1() -> Container {
        Container {
            name: Some("web-1".into()),
            ..Container::bare(
                Runtime::Docker,
                "7b0095692950c3c15eb927493b46a55845f0d0cc445aac805d53a6c759eb343f".into(),
            )
        }
    }

    /// The verdict opens on the first reply; when the first request's hop in the client's
    /// namespace was not in the history at its delivery, or carried a container its runtime
    /// had not named yet, the second request's hop names the client's container.
    #[test]
    fn a_later_request_names_the_client_container() {
        let client = "198.51.100.2:40000";
        let hop = |ts_ns, container: Container| TraceEvent {
            netns: 8,
            container: Some(Box::new(container)),
            ..event(What::Xmit, client, "192.0.2.1:4000", ts_ns)
        };
        let later = |event: TraceEvent| TraceEvent {
            ts_ns: event.ts_ns + 10,
            skb: Some(Skb(event.ts_ns + 10)),
            ..event
        };
        let unnamed = Container {
            name: None,
            ..web_1()
        };
        for first_hop in [None, Some(hop(0, unnamed))] {
            let mut diagnosis = Diagnosis::new(no_sockets());
            let events = first_hop
                .into_iter()
                .chain(wrong_source_reply(client))
                .chain(std::iter::once(hop(10, web_1())))
                .chain(wrong_source_reply(client).map(later));
            for event in events {
                diagnosis.observe(&event);
            }
            let verdicts = diagnosis.verdicts();
            assert_eq!(verdicts.len(), 1);
            let Facts::ReplySource {
                client_container, ..
            } = &verdicts[0].facts
            else {
                panic!("{:?}", verdicts[0].facts);
            };
            assert_eq!(client_container.as_ref(), Some(&web_1()));
        }
    }
}
