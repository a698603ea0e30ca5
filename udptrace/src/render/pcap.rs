//! `-w FILE`: the packets of the hop events as pcapng for Wireshark and tshark, beside the
//! normal output. One interface per (network namespace, device) seen, named `ns/dev`; one
//! Enhanced Packet Block per event whose packet the kernel copied, at the event's wall-clock
//! time, with a comment saying what udptrace knows (the event's line, where it happened) and,
//! for a verdict's evidence, the verdict. The bytes start at the IP header at every hook (the
//! kernel copies from `skb->network_header`), so every interface is `LINKTYPE_RAW`.
//!
//! Verdicts come a settle delay after their evidence (`flows::ledger::SETTLE`): packets are
//! held `HOLD` before they are written, so that a verdict can still be added to the comments
//! of its evidence packets.

use std::{
    collections::{HashMap, VecDeque},
    fmt::Write as _,
    io::{self, Write},
    sync::Arc,
    time::Duration,
};

use super::{
    Output, Stats, Status,
    event::{context_parts, summary},
    file_cut_short, verdict,
};
use crate::{
    flows::{table::FlowTable, verdict::Verdict},
    model::{PacketBytes, Skb, TraceEvent},
    pcapng::{self, LINKTYPE_RAW},
    probes::attach::HookOutcome,
};

/// How long a packet waits for the verdict it may be evidence of: the settle delay, the
/// reorder window before events reach the output and the verdict tick, with room to spare.
pub const HOLD: Duration = Duration::from_secs(2);

/// Packets held at most (a storm writes the oldest early rather than grow without bound).
const MAX_HELD: usize = 65_536;

/// A packet waiting for its turn to be written.
struct Held {
    ts_ns: u64,
    skb: Option<Skb>,
    interface: u32,
    timestamp_us: u64,
    packet: Arc<PacketBytes>,
    comment: String,
}

/// The pcapng output; `now` gives the kernel clock (CLOCK_MONOTONIC), against which held
/// packets age.
pub struct PcapOutput<W: Write> {
    out: W,
    /// Where `out` goes, for error messages (`-w FILE`, `-w -`).
    name: String,
    snaplen: u32,
    now: fn() -> u64,
    /// Interface ids by (namespace inode, device index; 0 for none).
    interfaces: HashMap<(u32, u32), u32>,
    held: VecDeque<Held>,
}

impl<W: Write> PcapOutput<W> {
    /// Starts the file (its Section Header Block) on `out`.
    pub fn new(mut out: W, name: String, snaplen: u32, now: fn() -> u64) -> io::Result<Self> {
        pcapng::section_header(&mut out, concat!("udptrace ", env!("CARGO_PKG_VERSION")))?;
        Ok(Self {
            out,
            name,
            snaplen,
            now,
            interfaces: HashMap::new(),
            held: VecDeque::new(),
        })
    }

    /// A write error, saying which file it concerns and that what it holds is cut short.
    fn failed(&self, error: &io::Error) -> io::Error {
        file_cut_short(
            error,
            &format!("-w {}", self.name),
            "the file is cut short (its packets end before the cut)",
        )
    }

    /// The id of the event's interface, describing it first when new.
    fn interface(&mut self, event: &TraceEvent) -> io::Result<u32> {
        let key = (event.netns, event.ifindex.unwrap_or(0));
        if let Some(&id) = self.interfaces.get(&key) {
            return Ok(id);
        }
        let namespace = event
            .netns_name
            .clone()
            .unwrap_or_else(|| event.netns.to_string());
        let device = event.ifname.as_deref().unwrap_or("-");
        pcapng::interface(
            &mut self.out,
            LINKTYPE_RAW,
            self.snaplen,
            &format!("{namespace}/{device}"),
        )?;
        let id = u32::try_from(self.interfaces.len()).unwrap_or(u32::MAX);
        self.interfaces.insert(key, id);
        Ok(id)
    }

    /// Writes the held packets older than `HOLD` (all of them with `all`).
    fn release(&mut self, all: bool) -> io::Result<()> {
        let horizon = (self.now)().saturating_sub(HOLD.as_nanos() as u64);
        while let Some(held) = self.held.front() {
            if !all && held.ts_ns >= horizon && self.held.len() <= MAX_HELD {
                break;
            }
            let held = self.held.pop_front().expect("front exists");
            pcapng::packet(
                &mut self.out,
                &pcapng::Packet {
                    interface: held.interface,
                    timestamp_us: held.timestamp_us,
                    original_len: held.packet.len,
                    data: &held.packet.data,
                    comment: &held.comment,
                },
            )?;
        }
        Ok(())
    }

    fn hold(&mut self, event: &TraceEvent, packet: &Arc<PacketBytes>) -> io::Result<()> {
        let interface = self.interface(event)?;
        let mut comment = format!("{} {}", event.kind_name(), summary(event));
        for part in context_parts(event) {
            let _ = write!(comment, "; {part}");
        }
        if let Some(stack) = &event.stack {
            let _ = write!(comment, "; stack {}", stack.join(" < "));
        }
        self.held.push_back(Held {
            ts_ns: event.ts_ns,
            skb: event.skb,
            interface,
            timestamp_us: event.time.0 / 1_000,
            packet: Arc::clone(packet),
            comment,
        });
        self.release(false)
    }

    /// Adds the verdict to the comments of its evidence packets still held.
    fn annotate(&mut self, verdict: &Verdict) {
        let words = format!(
            "; verdict {} ({}): {}",
            verdict.code.name(),
            verdict::flow_text(verdict),
            verdict::summary(verdict)
        );
        for evidence in &verdict.evidence {
            for held in &mut self.held {
                if held.ts_ns == evidence.ts_ns && held.skb == evidence.skb {
                    held.comment.push_str(&words);
                }
            }
        }
    }
}

impl<W: Write> Output for PcapOutput<W> {
    fn ready(&mut self, _filter: &str, _probes: &[HookOutcome]) -> io::Result<()> {
        Ok(())
    }

    fn event(&mut self, event: &TraceEvent) -> io::Result<()> {
        match &event.packet {
            Some(packet) => self.hold(event, packet).map_err(|e| self.failed(&e)),
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.release(false)
            .and_then(|()| self.out.flush())
            .map_err(|e| self.failed(&e))
    }

    // Losses, sampling and the run's status are the main output's to tell.
    fn lost(&mut self, _lost: u64, _total: u64) -> io::Result<()> {
        Ok(())
    }

    fn sampled(&mut self, _sampled: u64, _total: u64) -> io::Result<()> {
        Ok(())
    }

    fn status(&mut self, _status: &Status) -> io::Result<()> {
        Ok(())
    }

    fn verdict(&mut self, verdict: &Verdict) -> io::Result<()> {
        self.annotate(verdict);
        Ok(())
    }

    fn summary(
        &mut self,
        _flows: &FlowTable,
        _verdicts: &[Verdict],
        _stats: &Stats,
    ) -> io::Result<()> {
        self.release(true)
            .and_then(|()| self.out.flush())
            .map_err(|e| self.failed(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        flows::{
            diagnosis::Diagnosis,
            testing::{drop, event, no_sockets, wildcard_socket},
            verdict::VerdictCode,
        },
        model::What,
    };

    /// Kernel time the tests' clock reads: `NOW_NS`.
    const NOW_NS: u64 = 10_000_000_000;

    fn now() -> u64 {
        NOW_NS
    }

    /// An event with a 4-byte packet on `ifname` of namespace 7 (`host`).
    fn with_packet(mut event: TraceEvent, ifname: &str) -> TraceEvent {
        event.ifindex = Some(ifname.len() as u32);
        event.ifname = Some(ifname.into());
        event.packet = Some(Arc::new(PacketBytes {
            len: 28,
            data: vec![0x45, 0, 0, 28],
        }));
        event
    }

    /// The comments and interface names a pcapng stream holds, in order.
    fn read_back(bytes: &[u8]) -> (Vec<String>, Vec<String>) {
        let word = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
        let text_option = |body_at: usize, end: usize, code: u16| -> Option<String> {
            let mut at = body_at;
            while at + 4 <= end {
                let c = u16::from_ne_bytes(bytes[at..at + 2].try_into().unwrap());
                let len = u16::from_ne_bytes(bytes[at + 2..at + 4].try_into().unwrap()) as usize;
                if c == code {
                    return Some(String::from_utf8(bytes[at + 4..at + 4 + len].to_vec()).unwrap());
                }
                at += 4 + len.div_ceil(4) * 4;
            }
            None
        };
        let (mut comments, mut interfaces) = (Vec::new(), Vec::new());
        let mut at = 0;
        while at < bytes.len() {
            let (kind, total) = (word(at), word(at + 4) as usize);
            let end = at + total - 4;
            match kind {
                1 => interfaces.push(text_option(at + 16, end, 2).unwrap()),
                6 => {
                    let captured = word(at + 20) as usize;
                    let options = at + 28 + captured.div_ceil(4) * 4;
                    comments.push(text_option(options, end, 1).unwrap_or_default());
                }
                _ => {}
            }
            at += total;
        }
        (comments, interfaces)
    }

    #[test]
    fn packets_wait_for_their_verdict_and_carry_it_in_their_comment() {
        let mut out = PcapOutput::new(Vec::new(), "test".into(), 256, now).unwrap();
        let (src, dst) = ("192.0.2.1:40000", "192.0.2.2:4000");
        let recv = with_packet(event(What::Recv, src, dst, NOW_NS - 2), "eth0");
        let dropped = with_packet(event(drop("NO_SOCKET"), src, dst, NOW_NS - 1), "eth0");
        // Without a packet (a socket event): nothing to write.
        let send = event(
            What::Send {
                bytes: 4,
                socket: wildcard_socket(),
                call: None,
            },
            src,
            dst,
            NOW_NS - 3,
        );
        let mut diagnosis = Diagnosis::new(no_sockets());
        for e in [&send, &recv, &dropped] {
            out.event(e).unwrap();
            diagnosis.observe(e);
        }
        out.flush().unwrap();
        assert_eq!(read_back(&out.out).0.len(), 0, "held for the verdict");
        let verdicts = diagnosis.ready(u64::MAX, true);
        assert_eq!(verdicts[0].code, VerdictCode::PortUnreachable);
        out.verdict(&verdicts[0]).unwrap();
        out.summary(&diagnosis.flows, &verdicts, &Stats::default())
            .unwrap();
        let (comments, interfaces) = read_back(&out.out);
        assert_eq!(comments.len(), 2);
        assert_eq!(interfaces, ["host/eth0"]);
        // The skb of `testing::event` is its time: 0x2540be3fe.
        assert_eq!(
            comments[0],
            "recv 192.0.2.1:40000 > 192.0.2.2:4000; #be3fe; ns host; eth0"
        );
        assert!(
            comments[1].starts_with(
                "drop 192.0.2.1:40000 > 192.0.2.2:4000 NO_SOCKET; at __udp4_lib_rcv+0x2cd;"
            ) && comments[1]
                .contains("; verdict port_unreachable (192.0.2.1:40000 <> 192.0.2.2:4000): "),
            "{comments:?}"
        );
    }

    #[test]
    fn held_packets_are_written_once_older_than_hold_and_devices_get_one_interface_each() {
        let mut out = PcapOutput::new(Vec::new(), "test".into(), 256, now).unwrap();
        let old = NOW_NS - HOLD.as_nanos() as u64 - 1;
        let (src, dst) = ("192.0.2.1:40000", "192.0.2.2:4000");
        out.event(&with_packet(event(What::Xmit, src, dst, old), "veth0"))
            .unwrap();
        out.event(&with_packet(event(What::Recv, src, dst, old), "eth0"))
            .unwrap();
        out.event(&with_packet(event(What::Recv, src, dst, NOW_NS), "eth0"))
            .unwrap();
        assert_eq!(
            read_back(&out.out).0.len(),
            2,
            "the old ones went out, the recent one waits"
        );
        let mut gone = with_packet(event(What::Xmit, src, dst, NOW_NS), "eth0");
        gone.ifindex = None;
        gone.ifname = None;
        out.event(&gone).unwrap();
        out.summary(&FlowTable::new(1), &[], &Stats::default())
            .unwrap();
        let (packets, interfaces) = read_back(&out.out);
        assert_eq!(packets.len(), 4);
        assert_eq!(interfaces, ["host/veth0", "host/eth0", "host/-"]);
    }
}
