//! One line per event in the spirit of pwru, readable in 80 columns for IPv4:
//!
//! ```text
//! 12:01:02.123456 recv       192.0.2.1:40000 > 192.0.2.2:4000
//!                            #e3900  (followed)  ns server  veth-s
//! 12:01:02.123470 `- drop    192.0.2.1:40000 > 192.0.2.2:4000 NO_SOCKET
//!                            at __udp4_lib_rcv+0x2cd  #e3900  (followed)  ns server  veth-s
//! ```
//!
//! The first line says what happened to which datagram; the indented second line where
//! (kernel location, packet id, namespace, device, process; the attach mechanism is in the
//! JSON output). Colour only on a terminal and never with
//! NO_COLOR (<https://no-color.org>).

use std::io::{self, Write};

use udptrace_common::event::SAMPLE_EVENTS_PER_SECOND;

use super::{
    Output, Stats, Status,
    event::{context_parts, summary},
    note,
    verdict::verdict_text,
    wire::{flow_key_text, processes_text},
};
use crate::{
    flows::{
        ledger::MAX_VERDICTS_PER_RULE,
        table::{Counts, FlowTable},
        verdict::Verdict,
    },
    model::{Skb, TraceEvent, What},
    probes::attach::HookOutcome,
};

pub struct TextOutput<W: Write> {
    out: W,
    colour: bool,
    /// The datagram of the previous event: its next hops are drawn as a branch under it.
    last_skb: Option<Skb>,
}

const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const MAGENTA: &str = "\x1b[35m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";
const BOLD_RED: &str = "\x1b[1;31m";

impl<W: Write> TextOutput<W> {
    pub fn new(out: W, colour: bool) -> Self {
        Self {
            out,
            colour,
            last_skb: None,
        }
    }

    fn paint(&self, colour: &str, text: &str) -> String {
        if self.colour {
            format!("{colour}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }
}

impl<W: Write> Output for TextOutput<W> {
    fn ready(&mut self, filter: &str, probes: &[HookOutcome]) -> io::Result<()> {
        let attached: Vec<String> = probes
            .iter()
            .filter_map(|o| o.attached.map(|m| format!("{}:{}", o.hook.name, m.name())))
            .collect();
        let filter = if filter.is_empty() { "all UDP" } else { filter };
        // On stderr, like tcpdump's "listening on ...": stdout carries only what was traced,
        // so `udptrace ... > file` or `| grep` gets no banner. Not an output error when it
        // fails: a broken stderr is where errors would have been reported.
        let _ = writeln!(
            io::stderr(),
            "tracing {filter} ({}); Ctrl-C to stop",
            attached.join(" ")
        );
        Ok(())
    }

    fn event(&mut self, event: &TraceEvent) -> io::Result<()> {
        let colour = match event.what {
            What::Drop { .. } => RED,
            What::Icmp { .. } => YELLOW,
            What::SockError { .. } | What::SendError { .. } | What::RecvError { .. } => MAGENTA,
            _ => DIM,
        };
        let time = event.time.time_of_day();
        // Hops of the datagram of the previous line hang under it: one packet reads as a tree.
        let continues = event.skb.is_some() && event.skb == self.last_skb;
        self.last_skb = event.skb;
        let branch = if continues { "`- " } else { "" };
        let kind = self.paint(
            colour,
            &format!("{:<10}", format!("{branch}{}", event.kind_name())),
        );
        writeln!(self.out, "{time} {kind} {}", summary(event))?;
        let context = self.paint(DIM, &context_parts(event).join("  "));
        writeln!(self.out, "{:27}{context}", "")?;
        // `--stack`: innermost frame first, as a kernel oops lists them.
        for (index, frame) in event
            .stack
            .iter()
            .flat_map(|stack| stack.iter())
            .enumerate()
        {
            let label = if index == 0 { "stack" } else { "" };
            writeln!(self.out, "{:27}{label:<6}{}", "", self.paint(DIM, frame))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    // Losses, sampling and the run's status go to stderr, like the banner: stdout stays one
    // event per line. Not output errors when they fail (see `ready`).
    fn lost(&mut self, lost: u64, total: u64) -> io::Result<()> {
        note(format_args!(
            "udptrace: {lost} events lost in the last second (ring buffer full; {total} in total)"
        ));
        Ok(())
    }

    fn sampled(&mut self, sampled: u64, _total: u64) -> io::Result<()> {
        note(format_args!(
            "udptrace: {sampled} events sampled out in the last second (about {SAMPLE_EVENTS_PER_SECOND} a second per flow and kind are shown; the flows count them all)"
        ));
        Ok(())
    }

    fn status(&mut self, status: &Status) -> io::Result<()> {
        match status {
            Status::FlowMapFull { events } => note(format_args!(
                "udptrace: {events} events counted without their flow (the kernel's flow map was full: too many new flows a second); added up under other flows"
            )),
            Status::Undecodable(error) => note(format_args!(
                "udptrace: undecodable record ({error}); counting the rest"
            )),
            Status::Escalated { ports, seconds } => note(format_args!(
                "udptrace: escalating ports {ports:?} for {seconds} s: path hooks attached, narrowed to them"
            )),
            Status::EscalationEnded => note(format_args!(
                "udptrace: escalation over: path hooks detached"
            )),
            Status::EscalationFailed(error) => note(format_args!(
                "udptrace: cannot attach the path hooks for escalation: {error}"
            )),
            Status::HopsParked { hooks, quiet } => note(format_args!(
                "udptrace: nothing matched for {} s: hop hooks parked ({}); the next matching event attaches them again",
                quiet.as_secs(),
                hooks.join(", ")
            )),
            Status::HopsAttached {
                untraced_before,
                failed,
                ..
            } => {
                note(format_args!(
                    "udptrace: hop hooks attached again; events before {} show no device hops, route lookups or deliveries (marked \"hops not traced\"), and no verdict is drawn from them",
                    untraced_before.time_of_day()
                ));
                for failure in failed {
                    note(format_args!(
                        "udptrace: cannot attach a hop hook again: {failure}"
                    ));
                }
            }
        }
        Ok(())
    }

    fn verdict(&mut self, verdict: &Verdict) -> io::Result<()> {
        let text = verdict_text(verdict);
        writeln!(self.out, "{}", self.paint(BOLD_RED, &text))?;
        self.out.flush()
    }

    fn summary(
        &mut self,
        table: &FlowTable,
        verdicts: &[Verdict],
        stats: &Stats,
    ) -> io::Result<()> {
        let flows = table.sorted();
        let other = table.other();
        if !flows.is_empty() || !other.is_empty() {
            writeln!(self.out, "\nflows")?;
        }
        for (key, flow) in flows {
            let mut line = format!(
                "  {}  {} > / {} <",
                flow_key_text(key),
                flow.datagrams_a_to_b,
                flow.datagrams_b_to_a
            );
            line.push_str(&problems(
                &flow.drops,
                flow.icmp_errors,
                &flow.socket_errors,
            ));
            if !flow.processes.is_empty() {
                line.push_str(&format!("  {}", processes_text(&flow.processes).join(",")));
            }
            if !flow.verdicts.is_empty() {
                let codes: Vec<&str> = flow.verdicts.iter().map(|code| code.name()).collect();
                line.push_str(&format!("  => {}", codes.join(", ")));
            }
            writeln!(self.out, "{line}")?;
        }
        if !other.is_empty() {
            writeln!(
                self.out,
                "  other flows ({} evicted past --max-flows, {} events counted by the kernel without their flow)  {} datagrams{}",
                other.flows_evicted,
                other.kernel_overflow_events,
                other.datagrams,
                problems(&other.drops, other.icmp_errors, &other.socket_errors)
            )?;
        }
        if !verdicts.is_empty() {
            writeln!(self.out, "\nverdicts")?;
            for verdict in verdicts {
                writeln!(self.out, "{}", verdict_text(verdict))?;
            }
        }
        writeln!(
            self.out,
            "\n{} events shown; kernel: {} UDP occurrences seen, {} filtered out in the kernel, \
             {} submitted, {} lost (ring buffer full; {} of them drops), {} sampled out \
             ({} of them drops; counted in the flows), {} uncounted, {} read errors; {} undecodable \
             records; {} flows evicted, {} events counted without their flow, {} verdicts not opened \
             (limit {MAX_VERDICTS_PER_RULE} per rule)",
            stats.events,
            stats.seen,
            stats.filtered_in_kernel,
            stats.submitted,
            stats.lost,
            stats.drops_lost,
            stats.sampled,
            stats.drops_sampled,
            stats.uncounted,
            stats.kernel_read_errors,
            stats.decode_errors,
            stats.flows_evicted,
            stats.kernel_overflow_events,
            stats.verdicts_not_opened,
        )?;
        self.out.flush()
    }
}

/// `  drop REASON xN  icmp xN  ERRNO xN` of a flow (or of the other flows).
fn problems(drops: &Counts, icmp_errors: u64, socket_errors: &Counts) -> String {
    let mut text = String::new();
    for (reason, count) in drops.iter() {
        text.push_str(&format!("  drop {reason} x{count}"));
    }
    if icmp_errors > 0 {
        text.push_str(&format!("  icmp x{icmp_errors}"));
    }
    for (errno, count) in socket_errors.iter() {
        text.push_str(&format!("  {errno} x{count}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::{
        clock::WallTime,
        model::{DropReason, Family, Location, Probe},
    };

    fn event(what: What) -> TraceEvent {
        TraceEvent {
            time: WallTime::parse_rfc3339("2026-11-22T12:01:02.123456Z").unwrap(),
            ts_ns: 1,
            what,
            probe: Probe(Some(udptrace_common::event::Mechanism::TpBtf)),
            netns: 4_026_532_481,
            netns_name: None,
            container: None,
            ifindex: Some(3),
            ifname: Some("veth-s".into()),
            process: None,
            skb: None,
            tracked: false,
            escalated: false,
            hops_untraced: false,
            conntrack: None,
            fragment: None,
            family: Family::Ipv4,
            saddr: "192.0.2.1".parse::<IpAddr>().unwrap(),
            sport: 40_000,
            daddr: "192.0.2.2".parse::<IpAddr>().unwrap(),
            dport: 4_000,
            packet: None,
            stack: None,
        }
    }

    #[test]
    fn drop_line_fits_80_columns() {
        let mut out = Vec::new();
        for reason_inferred in [false, true] {
            TextOutput::new(&mut out, false)
                .event(&event(What::Drop {
                    reason: DropReason::named("NO_SOCKET"),
                    reason_inferred,
                    location: Location::Symbol("__udp4_lib_rcv+0x2cd".into()),
                    txq: None,
                }))
                .unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "12:01:02.123456 drop       192.0.2.1:40000 > 192.0.2.2:4000 NO_SOCKET"
        );
        // Before Linux 5.17 the kernel gives no reason: udptrace's guess says so.
        assert_eq!(
            lines[2],
            "12:01:02.123456 drop       192.0.2.1:40000 > 192.0.2.2:4000 NO_SOCKET (inferred)"
        );
        assert_eq!(
            lines[1],
            "                           at __udp4_lib_rcv+0x2cd  ns 4026532481  veth-s"
        );
        assert!(lines.iter().all(|line| line.len() <= 80));
    }

    /// `--stack`: the frames under the event's context line, innermost first, the first
    /// labelled.
    #[test]
    fn a_stack_is_listed_under_its_event_innermost_first() {
        let mut out = Vec::new();
        let mut drop = event(What::Drop {
            reason: DropReason::named("NO_SOCKET"),
            reason_inferred: false,
            location: Location::Symbol("__udp4_lib_rcv+0x4bc".into()),
            txq: None,
        });
        drop.stack = Some(Box::new(vec![
            "__udp4_lib_rcv+0x4bc".into(),
            "ip_protocol_deliver_rcu+0xd8".into(),
            "ip_local_deliver_finish+0x81".into(),
        ]));
        TextOutput::new(&mut out, false).event(&drop).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[2..],
            [
                "                           stack __udp4_lib_rcv+0x4bc",
                "                                 ip_protocol_deliver_rcu+0xd8",
                "                                 ip_local_deliver_finish+0x81",
            ]
        );
    }

    #[test]
    fn later_hops_of_a_datagram_hang_under_it() {
        let mut out = Vec::new();
        let mut text = TextOutput::new(&mut out, false);
        let mut hop = event(What::Xmit);
        hop.skb = Some(Skb(0xffff_8880_0000_1000));
        text.event(&hop).unwrap();
        hop.what = What::Recv;
        text.event(&hop).unwrap();
        hop.skb = Some(Skb(0xffff_8880_0000_2000));
        text.event(&hop).unwrap();
        let text = String::from_utf8(out).unwrap();
        let kinds: Vec<&str> = text.lines().step_by(2).map(|l| &l[16..26]).collect();
        assert_eq!(kinds, ["xmit      ", "`- recv   ", "recv      "]);
    }

    #[test]
    fn evicted_flows_are_summed_up_in_one_line() {
        use crate::flows::table::{FlowKey, Tally};
        let mut table = FlowTable::new(1);
        let server: std::net::SocketAddr = "192.0.2.2:4000".parse().unwrap();
        for port in [1000, 1001] {
            let key = FlowKey::new(([192, 0, 2, 1], port).into(), server);
            table.add_tally(key, &Tally::Drops(DropReason::named("NO_SOCKET")), 3);
        }
        table.add_other(&Tally::Drops(DropReason::named("NO_SOCKET")), 2);
        let stats = Stats {
            flows_evicted: 1,
            kernel_overflow_events: 2,
            ..Stats::default()
        };
        let mut out = Vec::new();
        TextOutput::new(&mut out, false)
            .summary(&table, &[], &stats)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("  192.0.2.1:1001 <> 192.0.2.2:4000  0 > / 0 <  drop NO_SOCKET x3\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "  other flows (1 evicted past --max-flows, 2 events counted by the kernel without \
                 their flow)  0 datagrams  drop NO_SOCKET x5\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("1 flows evicted, 2 events counted without their flow"),
            "{text}"
        );
    }

    #[test]
    fn no_colour_means_no_escapes() {
        let mut out = Vec::new();
        TextOutput::new(&mut out, false)
            .event(&event(What::Icmp {
                icmp_type: 3,
                icmp_code: 3,
                meaning: "port-unreachable".into(),
                mtu: None,
            }))
            .unwrap();
        assert!(!out.contains(&0x1b));
        let mut out = Vec::new();
        TextOutput::new(&mut out, true)
            .event(&event(What::Icmp {
                icmp_type: 3,
                icmp_code: 3,
                meaning: "port-unreachable".into(),
                mtu: None,
            }))
            .unwrap();
        assert!(out.contains(&0x1b));
    }
}
