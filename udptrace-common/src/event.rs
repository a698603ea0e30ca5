//! The record every kernel hook writes into the ring buffer.
//!
//! One fixed-size layout for all kinds keeps the kernel side simple (one reservation size, no
//! dynamic sizes for the verifier to doubt) and costs ~30 bytes of unused detail per event.
//! `version` lets the decoder refuse records from a mismatched object instead of misreading them.

/// Bumped whenever [`Event`]'s layout changes.
pub const EVENT_VERSION: u8 = 5;

/// [`EventDetail::queue_mapping`] when it was not read (`sk_buff.queue_mapping` is a u16).
pub const QUEUE_UNKNOWN: u32 = u32::MAX;

/// [`EventDetail::flags`]: the event was reported because its skb was already being followed,
/// not because its own tuple matched the filter (e.g. after NAT rewrote it).
pub const FLAG_TRACKED: u8 = 1;
/// [`EventDetail::flags`]: `ct_original`/`ct_reply` hold the skb's conntrack entry.
pub const FLAG_CONNTRACK: u8 = 2;
/// [`EventDetail::flags`]: a route lookup for an incoming packet (`route_iif` set).
pub const FLAG_ROUTE_INPUT: u8 = 4;
/// [`EventDetail::flags`] of `Send`/`SendError`: seen by a function probe on `udp_sendmsg` /
/// `udpv6_sendmsg`, so the destination (`msg_name`), [`FLAG_PKTINFO`] and
/// [`FLAG_CONNECTED`] are known.
pub const FLAG_SEND_CALL: u8 = 8;
/// The sender passed `IP_PKTINFO`/`IPV6_PKTINFO` ancillary data: the tuple's source is the
/// address it asked for (unspecified when it gave only an interface).
pub const FLAG_PKTINFO: u8 = 16;
/// `Send`/`SendError`/`Connect`: the socket is connected (`sk_state == TCP_ESTABLISHED`).
pub const FLAG_CONNECTED: u8 = 32;
/// `Drop`/`IcmpError` with `--stack`: `stack_id` is the kernel stack's id in `STACKS`.
pub const FLAG_STACK: u8 = 64;
/// The datagram is an IP fragment ([`EventDetail::fragment`] describes it). A fragment after
/// the first carries no UDP header: its ports are those the first fragment with the same
/// addresses, protocol and IP identification showed (0 when that one was not seen).
pub const FLAG_FRAGMENT: u8 = 128;

enum_table! {
/// What happened; selects which [`EventDetail`] fields are meaningful.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind: u8, from_u8 {
    /// `kfree_skb` of a UDP datagram: `reason`, `location`.
    Drop = 1,
    /// ICMPv4 or ICMPv6 error sent about a UDP datagram: `icmp_type`, `icmp_code`; the tuple is
    /// the quoted datagram's.
    IcmpError = 2,
    /// Error reported to a socket (`sk->sk_err`): `error` is the positive errno.
    SockError = 3,
    /// A UDP send returned an error: `error` is the positive errno.
    SendError = 4,
    /// A UDP receive returned an error: `error` is the positive errno.
    RecvError = 5,
    /// A UDP send returned (`error` = 0, `bytes` sent): the sending process and its socket.
    Send = 6,
    /// A route lookup for a datagram (`route_*`; the tuple is the lookup's flow: source 0 when
    /// the kernel is to choose it).
    Route = 7,
    /// The datagram was handed to a device for transmission.
    Xmit = 8,
    /// The datagram was received by a device.
    Recv = 9,
    /// The datagram was queued to a socket (`sock`, `sock_ino`).
    Deliver = 10,
    /// `connect()` on a UDP socket returned (`error` when it failed): the tuple is the socket's
    /// afterwards, i.e. the local address the kernel pinned and the peer.
    Connect = 11,
    /// UDP looked up the socket for a received datagram (tuple): `sock`/`sock_ino` is the
    /// socket found, `sock.family` 0 when none was.
    Lookup = 12,
}
}

impl EventKind {
    /// Path events, which hooks report for every datagram that matches the filter: under
    /// `udptrace watch` ([`crate::names::FEATURE_NARROW`]) only those of escalated flows pass.
    /// Failures (drops, ICMP and socket errors) and `connect` always pass.
    pub const fn narrowed(self) -> bool {
        matches!(
            self,
            Self::Send | Self::Route | Self::Xmit | Self::Recv | Self::Deliver | Self::Lookup
        )
    }

    /// Kinds that occur once or more per datagram: written about
    /// [`SAMPLE_EVENTS_PER_SECOND`] a second per flow (and per drop reason), the rest counted. Errors, ICMP and `connect` are rare or rate-limited by the kernel already, and
    /// their every occurrence is shown.
    pub const fn sampled(self) -> bool {
        matches!(
            self,
            Self::Drop
                | Self::Send
                | Self::Route
                | Self::Xmit
                | Self::Recv
                | Self::Deliver
                | Self::Lookup
        )
    }
}

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_UDP: u8 = 17;
/// The IPv6 fragment header (RFC 8200 4.5).
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;

/// A datagram's addresses and ports, as parsed from its headers (or a socket's, for socket
/// events). Ports are in host byte order; an IPv4 address fills the first 4 bytes.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// [`AF_INET`], [`AF_INET6`], or 0 when nothing could be parsed.
    pub family: u8,
    /// Transport protocol of the datagram described ([`IPPROTO_UDP`] for everything traced).
    pub proto: u8,
    /// 0 when the packet has no UDP header to read and its datagram's ports are not known (a
    /// later fragment whose first one was not seen: see `ip_udp` in the eBPF crate) or, for a
    /// socket, no peer port; no filter port test matches 0.
    pub sport: u16,
    pub dport: u16,
    pub padding: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Fields common to every event.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    pub kind: u8,
    pub version: u8,
    /// Which attach mechanism produced the event ([`Mechanism`] as u8).
    pub mechanism: u8,
    pub padding: u8,
    /// CPU the hook ran on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()`: `CLOCK_MONOTONIC`.
    pub ts_ns: u64,
    /// Address of the `struct sk_buff` (0 for socket events): correlates hops of one datagram.
    pub skb: u64,
    /// Inode of the network namespace (`net->ns.inum`), 0 when unknown.
    pub netns: u32,
    /// Device index in that namespace, 0 when unknown.
    pub ifindex: u32,
    /// Thread-group id of the process the hook ran for; 0 when the hook runs in softirq
    /// context, where the on-CPU task is unrelated to the datagram.
    pub pid: u32,
    pub tid: u32,
    /// `comm` of that process (NUL-padded, untrusted).
    pub comm: [u8; 16],
    /// Device name (`net_device.name`, NUL-padded, untrusted).
    pub ifname: [u8; 16],
}

/// Kind-specific fields; see [`EventKind`] for which are set.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventDetail {
    /// Kernel text address: the caller of `kfree_skb` for drops.
    pub location: u64,
    /// Value of `enum skb_drop_reason` (numbering differs between kernels: name it from BTF).
    pub reason: u32,
    /// Positive errno for socket and send/receive errors.
    pub error: u32,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    pub padding: [u8; 1],
    /// Bytes sent ([`EventKind::Send`]); the MTU an [`EventKind::IcmpError`] announces
    /// (fragmentation needed, packet too big; 0 for other errors).
    pub bytes: u32,
    /// Send and Deliver: the socket's own tuple (`saddr:sport` bound, `daddr:dport` connected
    /// peer, zeros when unconnected).
    pub sock: Tuple,
    /// Inode of that socket (what `ss -e` shows as `ino:`), for process attribution.
    pub sock_ino: u64,
    /// Route: output device index chosen by the lookup (0 when it failed).
    pub route_oif: u32,
    /// Route: input device index for input lookups.
    pub route_iif: u32,
    /// Route: table id.
    pub route_table: u32,
    /// Route: lookup result (0 or a negative errno).
    pub route_err: i32,
    /// Route: output device name (untrusted).
    pub route_dev: [u8; 16],
    /// Conntrack entry of the skb: original and reply direction, and `nf_conn.status`.
    pub ct_original: Tuple,
    pub ct_reply: Tuple,
    pub ct_status: u64,
    /// With [`FLAG_STACK`]: the id `bpf_get_stackid` gave the kernel call stack in `STACKS`.
    pub stack_id: u32,
    /// Drop: the skb's `queue_mapping` (for a drop on the way out, the transmit queue whose
    /// qdisc refused it), [`QUEUE_UNKNOWN`] when the kernel's BTF does not locate it.
    pub queue_mapping: u32,
    /// With [`FLAG_FRAGMENT`]: which fragment of which datagram.
    pub fragment: Fragment,
}

/// One IP fragment of a UDP datagram (RFC 791 §3.2; the IPv6 fragment header of RFC 8200
/// §4.5).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fragment {
    /// IP identification (16 bits in IPv4, 32 in IPv6's fragment header).
    pub id: u32,
    /// Where this fragment's data starts in the datagram, in bytes.
    pub offset: u16,
    /// This fragment's IP length (IPv4 total length, IPv6 header plus payload length): the
    /// first fragment's is the MTU the datagram was cut for.
    pub ip_len: u16,
    /// The whole datagram's UDP length (header included), from the first fragment's UDP
    /// header; 0 when it was not seen.
    pub datagram_len: u16,
    /// More fragments follow (the MF flag / M bit).
    pub more: u8,
    pub padding: [u8; 5],
}

impl Fragment {
    /// Whether the datagram is fragmented at all (a whole datagram has neither flag nor
    /// offset).
    #[expect(clippy::inline_always, reason = "eBPF: called on the per-packet path")]
    #[inline(always)]
    pub const fn is_fragment(&self) -> bool {
        self.more != 0 || self.offset != 0
    }
}

/// The IP fragments of one datagram (`FRAGMENTS` key): what the kernel itself keys reassembly
/// by (net/ipv4/ip_fragment.c `struct frag_v4_compare_key`: saddr, daddr, id, protocol).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub id: u32,
    pub family: u8,
    pub proto: u8,
    pub padding: [u8; 2],
}

/// What the first fragment of a datagram showed (`FRAGMENTS` value), for its later fragments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirstFragment {
    pub sport: u16,
    pub dport: u16,
    /// The datagram's UDP length.
    pub datagram_len: u16,
    pub padding: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Event {
    pub header: EventHeader,
    pub tuple: Tuple,
    pub detail: EventDetail,
}

/// Capacity of `STACKS` (`BPF_MAP_TYPE_STACK_TRACE`): distinct kernel stacks of drops and ICMP
/// errors a run can name (identical stacks share an id); past it, or when two stacks' hashes
/// collide, `bpf_get_stackid` fails (-EEXIST, kernel/bpf/stackmap.c) and the event is
/// written without a stack.
pub const STACK_ENTRIES: u32 = 1_024;

/// Longest packet copy `--snaplen` may ask for: a whole datagram at the common 1500-byte MTU.
pub const MAX_SNAPLEN: u32 = 1500;

/// What the programs copy besides the event (the `CAPTURE` global, set before load).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    /// `-w`: bytes of the packet to copy from its IP header for hop events (transmit, receive,
    /// drop, ICMP error, delivery), at most [`MAX_SNAPLEN`]; 0 copies nothing.
    pub snaplen: u32,
    /// `--stack`: 1 to collect the kernel call stack of drops and ICMP errors (see
    /// [`FLAG_STACK`]); 0 costs nothing.
    pub stack: u32,
}

/// Follows an [`Event`] in its ring record when packet bytes were copied: the record is the
/// event, this header and `caplen` bytes of the packet from its IP header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    /// The IP packet's length by its header (IPv4 total length, IPv6 payload length + 40).
    pub len: u32,
    /// Bytes copied: the least of `snaplen`, `len` and the skb's linear data after the IP
    /// header.
    pub caplen: u32,
}

/// A per-CPU scratch slot: an event and room for its packet bytes, written to the ring as
/// one record (only as far as the bytes copied).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Captured {
    pub event: Event,
    pub packet: PacketHeader,
    pub data: [u8; MAX_SNAPLEN as usize],
}

/// Events written per [`FlowCountKey`] per generation (about a second: userspace flips the
/// generation on its one-second tick, so each key starts a fresh allowance then), over all
/// CPUs. Past it, the per-datagram kinds ([`EventKind::sampled`]) are only counted
/// (`FLOW_COUNTS`, `Counter::Sampled`): a storm costs the ring buffer, the terminal and the
/// traced host a hash update per datagram instead of a record, and the per-flow totals (drops,
/// datagrams) stay exact. Approximate by design: CPUs racing on one key may each write one more,
/// and a key active across a flip can show up to twice this within a second.
pub const SAMPLE_EVENTS_PER_SECOND: u64 = 100;

/// Capacity of `FLOW_COUNTS`, a plain (never evicting) hash shared by all CPUs. It holds two
/// generations of keys (the one being counted and the one userspace drains next), each about a
/// second of traffic, at about four keys a flow (drops per reason, datagrams in each direction
/// at their first device, deliveries...): room for a storm of ~16,000 new flows a second.
/// Preallocated, about 130 bytes a key (~17 MB), whatever the number of CPUs. A key that finds
/// it full is counted in `FLOW_OVERFLOW` instead (the "other flows" bucket).
pub const FLOW_COUNTS_ENTRIES: u32 = 131_072;

/// Capacity of `FLOW_OVERFLOW`: its keys have no tuple, so there are at most two generations
/// of (kind, first, drop reason).
pub const FLOW_OVERFLOW_ENTRIES: u32 = 4_096;

/// Key of `FLOW_COUNTS` (and, with a zero tuple, of `FLOW_OVERFLOW`): what a sampled event
/// counts towards.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCountKey {
    pub tuple: Tuple,
    /// [`EventKind`].
    pub kind: u8,
    /// `Xmit`/`Recv`: 1 where the datagram is first seen (not yet followed), so that the
    /// counts of these keys are datagrams, not hops.
    pub first: u8,
    /// The generation (0 or 1, `GENERATION`) the event was counted in: userspace drains and
    /// deletes the keys of the generation it flipped away from a tick earlier.
    pub generation: u8,
    pub padding: u8,
    /// `Drop`: the `enum skb_drop_reason` value; 0 otherwise.
    pub reason: u32,
}

/// Value of `FLOW_COUNTS` and `FLOW_OVERFLOW`, shared by all CPUs (updated with atomic adds).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCount {
    /// Every event of this key that passed the filter, written or not.
    pub count: u64,
    /// Events of this key written to the ring buffer (or attempted: a full ring loses some).
    pub shown: u64,
}

enum_table! {
/// Attach mechanisms, best first for a given hook; named as `--probes` and the output name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism: u8, from_u8 {
    Fentry = 1 => "fentry",
    Kprobe = 2 => "kprobe",
    TpBtf = 3 => "tp_btf",
    RawTracepoint = 4 => "raw_tp",
    Tracepoint = 5 => "tracepoint",
}
}

enum_table! {
/// Index into the per-CPU `COUNTERS` array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter: u32, from_u32 {
    /// UDP-related occurrences a hook examined (after the cheap non-UDP early exits).
    Seen = 0,
    /// Rejected by the filter or a selector in the kernel.
    FilteredOut = 1,
    /// Written to the ring buffer.
    Submitted = 2,
    /// Could not be written: the ring buffer was full.
    Lost = 3,
    /// A kernel memory read failed, the event was abandoned.
    ReadErrors = 4,
    /// Of `Lost`, the drop events: with the drops delivered they give exact drop counts even
    /// when the ring overflows.
    DropsLost = 5,
    /// Events not written because their key had had [`SAMPLE_EVENTS_PER_SECOND`] in the
    /// current generation; counted in `FLOW_COUNTS` (or `FLOW_OVERFLOW`).
    Sampled = 6,
    /// Of `Sampled`, the drop events.
    DropsSampled = 7,
    /// Per-datagram events counted neither per flow nor in the other-flows bucket (both
    /// `FLOW_COUNTS` and `FLOW_OVERFLOW` full; sized so that this stays 0). They are still
    /// written to the ring buffer.
    Uncounted = 8,
}
}

/// Entries of `COUNTERS`.
pub const COUNTER_COUNT: u32 = Counter::COUNT as u32;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data with no padding-dependent invariants; any bit pattern is valid.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowCountKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowCount {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Capture {}
}
