//! no_route: the route lookup found no way to the destination. Two cases:
//! - a local send (or `connect()`) fails with the errno of the failed output lookup:
//!   ENETUNREACH (no route), EHOSTUNREACH, EINVAL or EACCES (an unreachable, blackhole or
//!   prohibit route: `fib_props[]`, net/ipv4/fib_semantics.c). Those errnos have other causes
//!   too (a pending ICMP error is returned by the next send: `sock_alloc_send_pskb` reports
//!   `sk_err`), so the failed lookup (`fib:fib_table_lookup`, `fib6:fib6_table_lookup`) made
//!   by the same process in the same namespace for the same source port must precede it;
//! - a forwarded datagram is dropped by `ip_error`/`ip6_pkt_drop` (`KnownReason::NoRoute`):
//!   what the lookup found comes from the drop reason, the failed input lookup before it, or
//!   the ICMP error the router sent back.

use crate::{
    flows::{
        rule::{Context, KnownReason, Rule},
        table::FlowKey,
        verdict::{Facts, Namespace, RouteFound, VerdictCode},
    },
    model::{RouteDirection, TraceEvent, What},
};

pub struct NoRoute;

impl Rule for NoRoute {
    fn drops(&self) -> &'static [KnownReason] {
        &[KnownReason::NoRoute]
    }

    fn on_drop(&mut self, event: &TraceEvent, _reason: KnownReason, cx: &mut Context<'_>) {
        let (source, destination) = (event.source(), event.destination());
        let same_datagram = |e: &TraceEvent| e.source() == source && e.destination() == destination;
        let lookup = cx
            .recent(|e| {
                same_datagram(e)
                    && matches!(
                        e.what,
                        What::Route {
                            direction: RouteDirection::Input,
                            error: Some(_),
                            ..
                        }
                    )
            })
            .cloned();
        // `ip_error` sends its ICMP error before it frees the datagram.
        let icmp = cx
            .recent(|e| same_datagram(e) && matches!(e.what, What::Icmp { .. }))
            .cloned();
        let found = found_by_drop(event, lookup.as_ref(), icmp.as_ref());
        cx.verdict(FlowKey::of(event), VerdictCode::NoRoute, event, || {
            let table = lookup.as_ref().and_then(route_table);
            let mut evidence: Vec<TraceEvent> = lookup.into_iter().collect();
            evidence.push(event.clone());
            evidence.extend(icmp);
            (
                Facts::NoRoute {
                    source,
                    destination,
                    namespace: Namespace::of(event),
                    forwarded: true,
                    found,
                    device: event.ifname.clone(),
                    process: None,
                    error: None,
                    table,
                },
                evidence,
            )
        });
    }

    fn on_event(&mut self, event: &TraceEvent, cx: &mut Context<'_>) {
        let errno = match &event.what {
            What::SendError { error, .. } => error.0,
            What::Connect {
                error: Some(errno), ..
            } => *errno,
            _ => return,
        };
        let Some(found) = RouteFound::of_errno(errno).filter(|_| errno.0 != EAGAIN) else {
            return;
        };
        // The output lookup of this call: the last event of the same process and source port
        // before the failure, in the same namespace. Not merely a recent one: a lookup that
        // softirq work made on the process's CPU (a router namespace forwarding its datagram
        // on veth) is attributed to it, and the send that returned after it shows up in
        // between; the next send may then fail with the ICMP error's errno (`sk_err`).
        let pid = event.process.as_ref().map(|p| p.pid);
        let Some(lookup) = cx
            .recent(|e| e.sport == event.sport && e.process.as_ref().map(|p| p.pid) == pid)
            .filter(|e| {
                matches!(
                    e.what,
                    What::Route {
                        direction: RouteDirection::Output,
                        error: Some(_),
                        ..
                    }
                ) && e.netns == event.netns
                    && (event.dport == 0 || e.destination() == event.destination())
            })
            .cloned()
        else {
            return;
        };
        let (source, destination) = (event.source(), lookup.destination());
        cx.verdict(
            FlowKey::new(source, destination),
            VerdictCode::NoRoute,
            event,
            || {
                (
                    Facts::NoRoute {
                        source,
                        destination,
                        namespace: Namespace::of(event),
                        forwarded: false,
                        found,
                        device: None,
                        process: event.process.clone(),
                        error: Some(errno),
                        table: route_table(&lookup),
                    },
                    vec![lookup, event.clone()],
                )
            },
        );
    }
}

/// What the sender's errno would be from EAGAIN: a send that would block, not a route.
const EAGAIN: u32 = libc::EAGAIN as u32;

fn route_table(lookup: &TraceEvent) -> Option<u32> {
    match lookup.what {
        What::Route { table, .. } => Some(table),
        _ => None,
    }
}

/// What the input lookup of a forwarded datagram found: the drop reason says it for no route
/// and for a host that does not forward; else the failed lookup's errno; else the ICMP error
/// `ip_error` sent (net unreachable, host unreachable, packet filtered: none for a blackhole,
/// whose silence alone does not tell it from a rate-limited error).
fn found_by_drop(
    drop: &TraceEvent,
    lookup: Option<&TraceEvent>,
    icmp: Option<&TraceEvent>,
) -> RouteFound {
    match drop.drop_reason() {
        Some(reason) if reason.is("IP_INADDRERRORS") => return RouteFound::NotForwarding,
        Some(reason) if reason.is("IP_INNOROUTES") || reason.is("IP_OUTNOROUTES") => {
            return RouteFound::NoRoute;
        }
        _ => {}
    }
    if let Some(What::Route {
        error: Some(errno), ..
    }) = lookup.map(|e| &e.what)
        && let Some(found) = RouteFound::of_errno(*errno)
    {
        return found;
    }
    let codes = icmp.and_then(|e| match e.what {
        What::Icmp {
            icmp_type,
            icmp_code,
            ..
        } => Some((icmp_type, icmp_code)),
        _ => None,
    });
    // ICMP destination unreachable (type 3, RFC 792): net 0, host 1, communication
    // administratively prohibited 13; ICMPv6 (type 1, RFC 4443): no route 0, prohibited 1.
    match codes {
        Some((3 | 1, 0)) => RouteFound::NoRoute,
        Some((3, 1)) => RouteFound::Unreachable,
        Some((3, 13) | (1, 1)) => RouteFound::Prohibit,
        _ => RouteFound::Reject,
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        flows::{
            diagnosis::Diagnosis,
            testing::{event, no_sockets, process},
            verdict::{Facts, Namespace, RouteFound, VerdictCode},
        },
        model::{
            DropReason, Errno, Location, RouteDevice, RouteDirection, SocketErrno, TraceEvent, What,
        },
    };

    fn errno(value: i32) -> Errno {
        Errno(value.unsigned_abs())
    }

    fn lookup(
        direction: RouteDirection,
        error: i32,
        src: &str,
        dst: &str,
        ts_ns: u64,
    ) -> TraceEvent {
        event(
            What::Route {
                direction,
                device: RouteDevice(None),
                table: 254,
                error: Some(errno(error)),
            },
            src,
            dst,
            ts_ns,
        )
    }

    fn send_error(error: i32, src: &str, dst: &str, ts_ns: u64) -> TraceEvent {
        event(
            What::SendError {
                error: SocketErrno(errno(error)),
                call: None,
            },
            src,
            dst,
            ts_ns,
        )
    }

    fn by(mut event: TraceEvent, pid: u32) -> TraceEvent {
        event.process = Some(process(pid, "dig"));
        event
    }

    /// A sendto() whose hook saw no destination (the send tracepoint) takes the lookup's; the
    /// table's own miss (EAGAIN) is the ENETUNREACH the send returns.
    #[test]
    fn a_send_without_a_route_names_the_destination_process_and_lookup() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        let route = by(
            lookup(
                RouteDirection::Output,
                libc::EAGAIN,
                "0.0.0.0:40000",
                "203.0.113.41:5041",
                1,
            ),
            9,
        );
        diagnosis.observe(&route);
        let failed = by(
            send_error(libc::ENETUNREACH, "0.0.0.0:40000", "0.0.0.0:0", 2),
            9,
        );
        diagnosis.observe(&failed);
        diagnosis.observe(&by(
            lookup(
                RouteDirection::Output,
                libc::EAGAIN,
                "0.0.0.0:40000",
                "203.0.113.41:5041",
                3,
            ),
            9,
        ));
        diagnosis.observe(&by(
            send_error(libc::ENETUNREACH, "0.0.0.0:40000", "0.0.0.0:0", 4),
            9,
        ));
        let verdicts = diagnosis.verdicts();
        assert_eq!(verdicts.len(), 1, "{verdicts:?}");
        assert_eq!(verdicts[0].code, VerdictCode::NoRoute);
        assert_eq!(verdicts[0].count, 2);
        assert_eq!(verdicts[0].evidence[..2], [route, failed]);
        assert_eq!(
            verdicts[0].facts,
            Facts::NoRoute {
                source: "0.0.0.0:40000".parse().unwrap(),
                destination: "203.0.113.41:5041".parse().unwrap(),
                namespace: Namespace {
                    netns: 7,
                    netns_name: Some("host".into()),
                    container: None,
                },
                forwarded: false,
                found: RouteFound::NoRoute,
                device: None,
                process: Some(process(9, "dig")),
                error: Some(errno(libc::ENETUNREACH)),
                table: Some(254),
            }
        );
    }

    #[test]
    fn the_errno_names_the_reject_route() {
        for (error, found) in [
            (libc::EHOSTUNREACH, RouteFound::Unreachable),
            (libc::EINVAL, RouteFound::Blackhole),
            (libc::EACCES, RouteFound::Prohibit),
        ] {
            let mut diagnosis = Diagnosis::new(no_sockets());
            let (src, dst) = ("192.0.2.1:40000", "203.0.113.41:5041");
            diagnosis.observe(&by(lookup(RouteDirection::Output, error, src, dst, 1), 9));
            diagnosis.observe(&by(send_error(error, src, dst, 2), 9));
            let Facts::NoRoute { found: seen, .. } = &diagnosis.verdicts()[0].facts else {
                panic!("{:?}", diagnosis.verdicts());
            };
            assert_eq!(*seen, found);
        }
    }

    /// A refused connect() (function probes) fails in its lookup as a send does.
    #[test]
    fn a_refused_connect_is_judged_like_a_send() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        let (src, dst) = ("0.0.0.0:40002", "203.0.113.41:5041");
        diagnosis.observe(&by(
            lookup(RouteDirection::Output, libc::EAGAIN, src, dst, 1),
            9,
        ));
        let connect = by(
            event(
                What::Connect {
                    socket: crate::flows::testing::wildcard_socket(),
                    error: Some(errno(libc::ENETUNREACH)),
                },
                src,
                dst,
                2,
            ),
            9,
        );
        diagnosis.observe(&connect);
        assert_eq!(diagnosis.verdicts()[0].code, VerdictCode::NoRoute);
    }

    /// ENETUNREACH or EHOSTUNREACH without a failed lookup of that process and port is an
    /// earlier ICMP error returned by the send (`sk_err`), not a route; EAGAIN is no route error.
    #[test]
    fn a_send_error_without_its_failed_lookup_is_not_a_route() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        let dst = "192.0.2.99:5031";
        diagnosis.observe(&by(
            send_error(libc::EHOSTUNREACH, "192.0.2.1:40000", dst, 1),
            9,
        ));
        // Another process's lookup, another port's, another namespace's.
        diagnosis.observe(&by(
            lookup(
                RouteDirection::Output,
                libc::EHOSTUNREACH,
                "192.0.2.1:40000",
                dst,
                2,
            ),
            8,
        ));
        diagnosis.observe(&by(
            send_error(libc::EHOSTUNREACH, "192.0.2.1:40000", dst, 3),
            9,
        ));
        diagnosis.observe(&by(
            lookup(
                RouteDirection::Output,
                libc::EHOSTUNREACH,
                "192.0.2.1:40001",
                dst,
                4,
            ),
            9,
        ));
        diagnosis.observe(&by(
            send_error(libc::EHOSTUNREACH, "192.0.2.1:40000", dst, 5),
            9,
        ));
        let mut elsewhere = by(
            lookup(
                RouteDirection::Output,
                libc::EHOSTUNREACH,
                "192.0.2.1:40000",
                dst,
                6,
            ),
            9,
        );
        elsewhere.netns = 8;
        diagnosis.observe(&elsewhere);
        diagnosis.observe(&by(
            send_error(libc::EHOSTUNREACH, "192.0.2.1:40000", dst, 7),
            9,
        ));
        diagnosis.observe(&by(
            lookup(
                RouteDirection::Output,
                libc::EAGAIN,
                "192.0.2.1:40000",
                dst,
                8,
            ),
            9,
        ));
        diagnosis.observe(&by(send_error(libc::EAGAIN, "192.0.2.1:40000", dst, 9), 9));
        assert_eq!(diagnosis.verdicts(), &[]);
    }

    /// A router's lookup attributed to the sender (softirq on its CPU), then the send that
    /// returned, then a send failing with the ICMP error's errno: not a route of the sender's.
    #[test]
    fn a_lookup_before_the_senders_last_send_is_not_its_failure() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        let (src, dst) = ("198.51.100.2:40000", "203.0.113.42:5042");
        diagnosis.observe(&by(
            lookup(RouteDirection::Output, libc::EHOSTUNREACH, src, dst, 1),
            9,
        ));
        let sent = What::Send {
            bytes: 9,
            socket: crate::flows::testing::wildcard_socket(),
            call: None,
        };
        diagnosis.observe(&by(event(sent, src, dst, 2), 9));
        diagnosis.observe(&by(send_error(libc::EHOSTUNREACH, src, dst, 3), 9));
        assert_eq!(diagnosis.verdicts(), &[]);
    }

    fn forwarded_drop(reason: &str, symbol: &str, ts_ns: u64) -> TraceEvent {
        let mut drop = event(
            What::Drop {
                reason: DropReason::named(reason),
                reason_inferred: false,
                location: Location::Symbol(symbol.into()),
                txq: None,
            },
            "198.51.100.2:40000",
            "203.0.113.42:5042",
            ts_ns,
        );
        drop.ifname = Some("eth0".into());
        drop
    }

    /// An unreachable route (NOT_SPECIFIED in `ip_error`): the failed input lookup names it,
    /// the ICMP error joins the evidence.
    #[test]
    fn a_forwarded_drop_names_the_input_lookup_and_the_icmp_error() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        let (client, target) = ("198.51.100.2:40000", "203.0.113.42:5042");
        let route = lookup(RouteDirection::Input, libc::EHOSTUNREACH, client, target, 1);
        diagnosis.observe(&route);
        let icmp = event(
            What::Icmp {
                icmp_type: 3,
                icmp_code: 1,
                meaning: "host-unreachable".into(),
                mtu: None,
            },
            client,
            target,
            2,
        );
        diagnosis.observe(&icmp);
        let drop = forwarded_drop("NOT_SPECIFIED", "ip_error+0x5d", 3);
        diagnosis.observe(&drop);
        let verdicts = diagnosis.verdicts();
        assert_eq!(verdicts.len(), 1, "{verdicts:?}");
        assert_eq!(verdicts[0].evidence, vec![route, drop, icmp]);
        let Facts::NoRoute {
            forwarded,
            found,
            device,
            table,
            ..
        } = &verdicts[0].facts
        else {
            panic!("{verdicts:?}");
        };
        assert!(forwarded);
        assert_eq!(*found, RouteFound::Unreachable);
        assert_eq!(device.as_deref(), Some("eth0"));
        assert_eq!(*table, Some(254));
    }

    #[test]
    fn without_the_lookup_the_reason_or_the_icmp_error_tells() {
        let found = |events: &[TraceEvent]| {
            let mut diagnosis = Diagnosis::new(no_sockets());
            for event in events {
                diagnosis.observe(event);
            }
            match diagnosis.verdicts() {
                [verdict] => match &verdict.facts {
                    Facts::NoRoute { found, .. } => Some(*found),
                    _ => None,
                },
                _ => None,
            }
        };
        assert_eq!(
            found(&[forwarded_drop("IP_INNOROUTES", "ip_error+0x5d", 1)]),
            Some(RouteFound::NoRoute)
        );
        assert_eq!(
            found(&[forwarded_drop("IP_INADDRERRORS", "ip_error+0x9a", 1)]),
            Some(RouteFound::NotForwarding)
        );
        let filtered = event(
            What::Icmp {
                icmp_type: 3,
                icmp_code: 13,
                meaning: "packet-filtered".into(),
                mtu: None,
            },
            "198.51.100.2:40000",
            "203.0.113.42:5042",
            1,
        );
        assert_eq!(
            found(&[
                filtered,
                forwarded_drop("NOT_SPECIFIED", "ip_error+0x5d", 2)
            ]),
            Some(RouteFound::Prohibit)
        );
        // A blackhole sends nothing: a reject route of unknown type.
        assert_eq!(
            found(&[forwarded_drop("NOT_SPECIFIED", "ip_error+0x5d", 1)]),
            Some(RouteFound::Reject)
        );
        // Unnamed drops elsewhere are not route failures.
        assert_eq!(
            found(&[forwarded_drop("NOT_SPECIFIED", "ip_forward+0x10", 1)]),
            None
        );
    }
}
