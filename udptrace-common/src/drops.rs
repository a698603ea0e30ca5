//! Drops on kernels whose `kfree_skb` has no reason (before Linux 5.17: `TP_PROTO(struct
//! sk_buff *skb, void *location)`, include/trace/events/skb.h). The two-argument drop programs
//! infer a reason from where the skb was freed and from what the kernel did to it just before,
//! and count and report that instead; userspace names these values through
//! [`InferredReason::name`] and marks them inferred.
//!
//! Where is known by address range: userspace resolves each [`DropSiteKind`] function from
//! /proc/kallsyms at start-up (never a hard-coded offset: they differ per build) and writes
//! the ranges into the [`DropSites`] global before load. On kernels with reasons only
//! [`DropSiteKind::Reader`] and [`DropSiteKind::FragList`] are looked up: every drop program
//! tells the reader's drops apart and skips the fragments freed with their datagram
//! ([`freed_with_datagram`]).

enum_table! {
/// A reason inferred from the drop's location and the hooks before it. The names are those
/// of the later kernels' `enum skb_drop_reason` for the same kfree_skb site, so that the
/// verdict rules read them alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InferredReason: u32, from_u32 {
    /// Freed anywhere else.
    NotSpecified = 0 => "NOT_SPECIFIED",
    /// `__udp4_lib_rcv`/`__udp6_lib_rcv` right after an ICMP port unreachable about the same
    /// skb: no socket matched (net/ipv4/udp.c: `icmp_send(skb, ICMP_DEST_UNREACH,
    /// ICMP_PORT_UNREACH, 0); kfree_skb(skb);`).
    NoSocket = 1 => "NO_SOCKET",
    /// `__udp4_lib_rcv`/`__udp6_lib_rcv` without that ICMP error: their shared `drop:` label,
    /// reached from `short_packet` and `csum_error` (5.17+ tell PKT_TOO_SMALL and UDP_CSUM).
    ShortOrChecksum = 2 => "PKT_TOO_SMALL_OR_UDP_CSUM",
    /// `udp_queue_rcv_one_skb`/`udpv6_queue_rcv_one_skb` after `__udp_enqueue_schedule_skb`
    /// failed with -ENOMEM: the receive buffer was full.
    SocketRcvbuff = 3 => "SOCKET_RCVBUFF",
    /// The same with -ENOBUFS: the protocol's memory limit (`net.ipv4.udp_mem`).
    ProtoMem = 4 => "PROTO_MEM",
    /// `udp_queue_rcv_one_skb`/`udpv6_queue_rcv_one_skb` without a failed enqueue: their
    /// `drop:` label (socket filter, checksum, xfrm policy).
    SocketFilterOrChecksum = 5 => "SOCKET_FILTER_OR_UDP_CSUM",
    /// `nf_hook_slow`: a netfilter verdict of NF_DROP.
    NetfilterDrop = 6 => "NETFILTER_DROP",
    /// `ip_rcv_finish_core` after `ip_route_input_noref` failed with -EXDEV: the reverse path
    /// filter refused the source (net/ipv4/ip_input.c `drop_error:`, which counts
    /// LINUX_MIB_IPRPFILTER for -EXDEV; net/ipv4/fib_frontend.c `__fib_validate_source`).
    IpRpfilter = 7 => "IP_RPFILTER",
    /// `__neigh_event_send`: pushed out of the queue of datagrams waiting for neighbour
    /// resolution (net/core/neighbour.c, past `unres_qlen_bytes`; its rarer `out_dead:` free
    /// is NEIGH_DEAD on 5.17+).
    NeighQueuefull = 8 => "NEIGH_QUEUEFULL",
    /// `neigh_invalidate`: resolution failed, the waiting datagrams are freed
    /// (`arp_error_report`/`ndisc_error_report` tail-call kfree_skb, so the return address
    /// names `neigh_invalidate`).
    NeighFailed = 9 => "NEIGH_FAILED",
    /// [`Self::ShortOrChecksum`] whose UDP length field does not fit the IP payload
    /// (`short_packet:`, net/ipv4/udp.c `__udp4_lib_rcv`).
    PktTooSmall = 10 => "PKT_TOO_SMALL",
    /// [`Self::ShortOrChecksum`] whose length fits: the checksum failed (`csum_error:`).
    UdpCsum = 11 => "UDP_CSUM",
}
}

enum_table! {
/// The kernel functions whose kfree_skb calls the drop programs tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropSiteKind: u32, from_u32 {
    /// UDP receive: no socket, short packet, bad checksum.
    UdpReceive = 1,
    /// Queueing to the socket found.
    UdpQueue = 2,
    /// A netfilter hook's NF_DROP.
    Netfilter = 3,
    /// A socket being destroyed frees what it still held: not a network drop, not reported.
    SocketClose = 4,
    /// IPv4 input routing (rp_filter, martians, no route for a forwarded datagram).
    RouteInput = 5,
    /// Queueing for neighbour resolution.
    NeighQueue = 6,
    /// Neighbour resolution failing.
    NeighInvalidate = 7,
    /// The receiving process's `recvmsg`, in its own system call: the checksum a socket's
    /// reader verifies while copying (net/ipv4/udp.c, net/ipv6/udp.c `udp*_recvmsg`
    /// `csum_copy_err:`). Told apart on every kernel, for the process and namespace.
    Reader = 8,
    /// An skb being freed frees the fragments it holds (`skb_shinfo(skb)->frag_list`: the
    /// fragments a reassembled datagram was made of; net/core/skbuff.c `skb_release_data` →
    /// `skb_drop_fraglist`). Linux 5.10 frees them in `kfree_skb_list`, a function of its own
    /// there that calls `kfree_skb` for each (no reason on that kernel: they would read as
    /// NOT_SPECIFIED drops of a delivered datagram). From "net: kfree_skb_list use
    /// kmem_cache_free_bulk" on, `kfree_skb_list_reason`'s tracepoint call is inlined into its
    /// caller, so the location is `skb_release_data`: Linux 6.1 frees them NOT_SPECIFIED even
    /// when the datagram was delivered (Debian's 6.1.192: the fragments-reassembled lab
    /// scenario); later kernels pass the head's reason down (CONSUMED: no kfree_skb). Either
    /// way the head's own free tells what became of the datagram: the frees here of an IP
    /// fragment are not reported, on any kernel (other lists `kfree_skb_list` frees on 5.10,
    /// a qdisc's `to_free`, GSO segments, are whole datagrams and still are).
    FragList = 9,
}
}

impl DropSiteKind {
    /// The kernel functions of this kind (those the running kernel lacks are left out).
    pub const fn functions(self) -> &'static [&'static str] {
        match self {
            Self::UdpReceive => &["__udp4_lib_rcv", "__udp6_lib_rcv"],
            Self::UdpQueue => &["udp_queue_rcv_one_skb", "udpv6_queue_rcv_one_skb"],
            Self::Netfilter => &["nf_hook_slow"],
            Self::RouteInput => &["ip_rcv_finish_core"],
            Self::NeighQueue => &["__neigh_event_send"],
            Self::NeighInvalidate => &["neigh_invalidate"],
            Self::Reader => &["udp_recvmsg", "udpv6_recvmsg"],
            // net/ipv4/udp.c udp_destruct_sock (udp_destruct_common on later kernels) frees the
            // reader queue; inet_sock_destruct/inet6_sock_destruct purge the rest.
            Self::SocketClose => &[
                "udp_destruct_sock",
                "udp_destruct_common",
                "udpv6_destruct_sock",
                "inet_sock_destruct",
                "inet6_sock_destruct",
            ],
            Self::FragList => &["skb_release_data", "kfree_skb_list"],
        }
    }
}

/// Room for every function of every [`DropSiteKind`], and for the compiler's clones of some
/// of them (`ip_rcv_finish_core.constprop.0`, a `.cold` part: see the kallsyms lookup).
pub const DROP_SITES: usize = 26;

/// One function's code, `[start, end)`; `kind` 0 marks an unused slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropSite {
    pub start: u64,
    pub end: u64,
    pub kind: u32,
    pub padding: u32,
}

/// The `DROP_SITES` global (`names::DROP_SITES_GLOBAL`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropSites {
    pub sites: [DropSite; DROP_SITES],
}

impl DropSites {
    pub const EMPTY: Self = Self {
        sites: [DropSite {
            start: 0,
            end: 0,
            kind: 0,
            padding: 0,
        }; DROP_SITES],
    };

    /// The kind of function the code address `location` lies in.
    #[expect(
        clippy::inline_always,
        reason = "eBPF: inlined into the drop programs, as `Filter::matches`"
    )]
    #[inline(always)]
    pub fn kind_of(&self, location: u64) -> Option<DropSiteKind> {
        let mut index = 0;
        while index < DROP_SITES {
            // SAFETY: a reference into `self`. Volatile: in the eBPF object `self` is the
            // DROP_SITES global, whose all-zero initializer LLVM would otherwise fold into
            // every read (userspace overrides it before load).
            let site = unsafe { core::ptr::read_volatile(&raw const self.sites[index]) };
            if site.kind != 0 && site.start <= location && location < site.end {
                return DropSiteKind::from_u32(site.kind);
            }
            index += 1;
        }
        None
    }
}

/// What the kernel did to an skb just before freeing it, per CPU (the UDP receive path runs in
/// one softirq on one CPU from the ICMP error or the failed enqueue to the kfree_skb).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DropEvidence {
    /// The skb an ICMP port unreachable was last sent about.
    pub port_unreachable_skb: u64,
    /// The last failed `__udp_enqueue_schedule_skb`.
    pub enqueue: FailedCall,
    /// The last failed input route lookup (`ip_route_input_noref`).
    pub route_input: FailedCall,
}

impl DropEvidence {
    /// Forgets what it holds about `skb`, which is being freed: a later skb allocated at the
    /// same address (SLUB hands a CPU's last freed object out next) is another datagram. A
    /// bad-checksum datagram in the skb of a closed-port one just dropped on the same CPU was
    /// once reported NO_SOCKET (Debian 5.10 guest).
    #[expect(clippy::inline_always, reason = "eBPF, as `DropSites::kind_of`")]
    #[inline(always)]
    pub fn forget(&mut self, skb: u64) {
        if self.port_unreachable_skb == skb {
            self.port_unreachable_skb = 0;
        }
        for call in [&mut self.enqueue, &mut self.route_input] {
            if call.skb == skb {
                *call = FailedCall::default();
            }
        }
    }
}

/// A kernel function that failed on an skb: which skb, and its negative errno.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FailedCall {
    pub skb: u64,
    pub rc: i64,
}

impl FailedCall {
    /// The errno this call returned for `skb`, if it was the last to fail on this CPU.
    #[expect(clippy::inline_always, reason = "eBPF, as `DropSites::kind_of`")]
    #[inline(always)]
    fn errno_for(&self, skb: u64) -> Option<i64> {
        (self.skb == skb).then_some(-self.rc)
    }
}

impl InferredReason {
    /// Tells the two causes of [`Self::ShortOrChecksum`] apart by the datagram's headers, as
    /// `__udp4_lib_rcv`/`__udp6_lib_rcv` do before jumping to `short_packet:`: a UDP length
    /// `udp_length` larger than the IP payload `ip_payload`, or under the UDP header's 8 bytes
    /// (IPv6's 0 is a jumbogram's, taken as the payload); any other drop there is `csum_error:`.
    #[expect(clippy::inline_always, reason = "eBPF, as `DropSites::kind_of`")]
    #[inline(always)]
    #[must_use]
    pub fn by_udp_length(self, udp_length: u16, ip_payload: u32, ipv6: bool) -> Self {
        if self != Self::ShortOrChecksum {
            return self;
        }
        let length = match (udp_length, ipv6) {
            (0, true) => ip_payload,
            (length, _) => u32::from(length),
        };
        if length < 8 || length > ip_payload {
            Self::PktTooSmall
        } else {
            Self::UdpCsum
        }
    }
}

/// `ENOMEM`, `EXDEV` and `ENOBUFS` (include/uapi/asm-generic/errno-base.h, errno.h).
const ENOMEM: i64 = 12;
const EXDEV: i64 = 18;
const ENOBUFS: i64 = 105;

/// The reason of a drop of `skb` in a function of `kind` (`None`: freed at socket close or
/// with the datagram it was a fragment of, not a drop), given `evidence`.
#[expect(clippy::inline_always, reason = "eBPF, as `DropSites::kind_of`")]
#[inline(always)]
pub fn infer(
    kind: Option<DropSiteKind>,
    skb: u64,
    evidence: &DropEvidence,
) -> Option<InferredReason> {
    Some(match kind {
        Some(DropSiteKind::SocketClose) => return None,
        Some(DropSiteKind::Netfilter) => InferredReason::NetfilterDrop,
        Some(DropSiteKind::UdpReceive) if evidence.port_unreachable_skb == skb => {
            InferredReason::NoSocket
        }
        Some(DropSiteKind::UdpReceive) => InferredReason::ShortOrChecksum,
        Some(DropSiteKind::UdpQueue) => match evidence.enqueue.errno_for(skb) {
            Some(ENOMEM) => InferredReason::SocketRcvbuff,
            Some(ENOBUFS) => InferredReason::ProtoMem,
            _ => InferredReason::SocketFilterOrChecksum,
        },
        Some(DropSiteKind::RouteInput) if evidence.route_input.errno_for(skb) == Some(EXDEV) => {
            InferredReason::IpRpfilter
        }
        Some(DropSiteKind::NeighQueue) => InferredReason::NeighQueuefull,
        Some(DropSiteKind::NeighInvalidate) => InferredReason::NeighFailed,
        // Its one kfree_skb besides a failed copy to the reader's buffer (EFAULT).
        Some(DropSiteKind::Reader) => InferredReason::UdpCsum,
        // Anywhere else; 5.17+ leave the other input route errors NOT_SPECIFIED too. What
        // `FragList` frees is skipped by the drop programs only when it is a fragment.
        None | Some(DropSiteKind::RouteInput | DropSiteKind::FragList) => {
            InferredReason::NotSpecified
        }
    })
}

/// Whether a free at a function of `kind` of an skb that `is_fragment` is that of a
/// reassembled datagram's fragment, freed along with it ([`DropSiteKind::FragList`]): no drop,
/// on any kernel; what became of the datagram is its head's own free.
#[expect(clippy::inline_always, reason = "eBPF, as `DropSites::kind_of`")]
#[inline(always)]
pub fn freed_with_datagram(kind: Option<DropSiteKind>, is_fragment: bool) -> bool {
    is_fragment && matches!(kind, Some(DropSiteKind::FragList))
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] of u64/u32 pairs without implicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::DropSites {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKB: u64 = 0xffff_8880_0000_1000;

    fn sites() -> DropSites {
        let mut sites = DropSites::EMPTY;
        for (slot, (start, kind)) in [
            (0x1000, DropSiteKind::UdpReceive),
            (0x2000, DropSiteKind::UdpQueue),
            (0x3000, DropSiteKind::Netfilter),
            (0x4000, DropSiteKind::SocketClose),
            (0x5000, DropSiteKind::RouteInput),
            (0x6000, DropSiteKind::NeighQueue),
            (0x7000, DropSiteKind::NeighInvalidate),
            (0x8000, DropSiteKind::Reader),
            (0x9000, DropSiteKind::FragList),
        ]
        .into_iter()
        .enumerate()
        {
            sites.sites[slot] = DropSite {
                start,
                end: start + 0x800,
                kind: kind as u32,
                padding: 0,
            };
        }
        sites
    }

    fn reason(location: u64, evidence: DropEvidence) -> Option<InferredReason> {
        infer(sites().kind_of(location), SKB, &evidence)
    }

    #[test]
    fn locations_are_classified_by_range() {
        let sites = sites();
        assert_eq!(sites.kind_of(0x1000), Some(DropSiteKind::UdpReceive));
        assert_eq!(sites.kind_of(0x17ff), Some(DropSiteKind::UdpReceive));
        assert_eq!(sites.kind_of(0x1800), None, "past the function's end");
        assert_eq!(sites.kind_of(0x3093), Some(DropSiteKind::Netfilter));
        assert_eq!(sites.kind_of(0), None, "unused slots match nothing");
    }

    #[test]
    fn a_port_unreachable_for_the_same_skb_means_no_socket() {
        let icmp = DropEvidence {
            port_unreachable_skb: SKB,
            ..DropEvidence::default()
        };
        assert_eq!(reason(0x13a3, icmp), Some(InferredReason::NoSocket));
        let other = DropEvidence {
            port_unreachable_skb: SKB + 0x100,
            ..DropEvidence::default()
        };
        assert_eq!(reason(0x13a3, other), Some(InferredReason::ShortOrChecksum));
        // The same ICMP error says nothing about a drop elsewhere.
        assert_eq!(
            reason(0x23c2, icmp),
            Some(InferredReason::SocketFilterOrChecksum)
        );
    }

    #[test]
    fn a_drop_forgets_the_evidence_about_its_skb() {
        let mut evidence = DropEvidence {
            port_unreachable_skb: SKB,
            enqueue: FailedCall { skb: SKB, rc: -12 },
            route_input: FailedCall {
                skb: SKB + 0x100,
                rc: -18,
            },
        };
        assert_eq!(reason(0x13a3, evidence), Some(InferredReason::NoSocket));
        evidence.forget(SKB);
        // The next datagram in the same skb, dropped there without an ICMP error of its own.
        assert_eq!(
            reason(0x13a3, evidence),
            Some(InferredReason::ShortOrChecksum)
        );
        assert_eq!(
            reason(0x23c2, evidence),
            Some(InferredReason::SocketFilterOrChecksum)
        );
        assert_eq!(evidence.route_input.skb, SKB + 0x100, "another skb's stays");
    }

    #[test]
    fn a_failed_enqueue_names_the_queue_drop_by_its_errno() {
        let failed = |rc| DropEvidence {
            enqueue: FailedCall { skb: SKB, rc },
            ..DropEvidence::default()
        };
        assert_eq!(
            reason(0x23c2, failed(-12)),
            Some(InferredReason::SocketRcvbuff)
        );
        assert_eq!(reason(0x23c2, failed(-105)), Some(InferredReason::ProtoMem));
        assert_eq!(
            reason(0x23c2, DropEvidence::default()),
            Some(InferredReason::SocketFilterOrChecksum)
        );
        // Another skb's failure is not this one's.
        let mut elsewhere = failed(-12);
        elsewhere.enqueue.skb = SKB + 8;
        assert_eq!(
            reason(0x23c2, elsewhere),
            Some(InferredReason::SocketFilterOrChecksum)
        );
    }

    #[test]
    fn an_input_route_refused_as_cross_device_is_the_reverse_path_filter() {
        let failed = |rc| DropEvidence {
            route_input: FailedCall { skb: SKB, rc },
            ..DropEvidence::default()
        };
        assert_eq!(
            reason(0x5123, failed(-18)),
            Some(InferredReason::IpRpfilter)
        );
        // A martian (-EINVAL) or no route: as on 5.17+, not specified.
        assert_eq!(
            reason(0x5123, failed(-22)),
            Some(InferredReason::NotSpecified)
        );
        let mut elsewhere = failed(-18);
        elsewhere.route_input.skb = SKB + 8;
        assert_eq!(
            reason(0x5123, elsewhere),
            Some(InferredReason::NotSpecified)
        );
        // The route failure says nothing about a drop in UDP.
        assert_eq!(
            reason(0x23c2, failed(-18)),
            Some(InferredReason::SocketFilterOrChecksum)
        );
    }

    #[test]
    fn neighbour_queue_and_resolution_failures() {
        assert_eq!(
            reason(0x6042, DropEvidence::default()),
            Some(InferredReason::NeighQueuefull)
        );
        assert_eq!(
            reason(0x707e, DropEvidence::default()),
            Some(InferredReason::NeighFailed)
        );
    }

    #[test]
    fn short_packets_and_checksum_errors_by_the_udp_length() {
        let both = InferredReason::ShortOrChecksum;
        assert_eq!(both.by_udp_length(20, 20, false), InferredReason::UdpCsum);
        assert_eq!(
            both.by_udp_length(21, 20, false),
            InferredReason::PktTooSmall
        );
        assert_eq!(
            both.by_udp_length(7, 20, false),
            InferredReason::PktTooSmall
        );
        assert_eq!(
            both.by_udp_length(0, 20, false),
            InferredReason::PktTooSmall
        );
        assert_eq!(both.by_udp_length(0, 20, true), InferredReason::UdpCsum);
        assert_eq!(
            InferredReason::NoSocket.by_udp_length(99, 20, false),
            InferredReason::NoSocket,
            "only the shared label is told apart"
        );
    }

    #[test]
    fn netfilter_unknown_places_and_socket_close() {
        assert_eq!(
            reason(0x3093, DropEvidence::default()),
            Some(InferredReason::NetfilterDrop)
        );
        assert_eq!(
            reason(0xa000, DropEvidence::default()),
            Some(InferredReason::NotSpecified)
        );
        assert_eq!(
            reason(0x4010, DropEvidence::default()),
            None,
            "freed at close"
        );
        // What a list free frees is told by the skb: see the next test.
        assert_eq!(
            reason(0x9010, DropEvidence::default()),
            Some(InferredReason::NotSpecified)
        );
    }

    #[test]
    fn only_fragments_freed_in_a_list_go_with_their_datagram() {
        let sites = sites();
        assert!(freed_with_datagram(sites.kind_of(0x9010), true));
        // 5.10's kfree_skb_list also frees a qdisc's dropped packets, GSO segments: reported.
        assert!(!freed_with_datagram(sites.kind_of(0x9010), false));
        // A fragment dropped anywhere else is a drop (netfilter, a reassembly timeout).
        assert!(!freed_with_datagram(sites.kind_of(0x3093), true));
        assert!(!freed_with_datagram(None, true));
    }

    #[test]
    fn every_function_fits_the_table() {
        let functions: usize = DropSiteKind::ALL.iter().map(|k| k.functions().len()).sum();
        assert!(functions <= DROP_SITES, "{functions} functions");
        for reason in InferredReason::ALL {
            assert_eq!(InferredReason::from_u32(reason as u32), Some(reason));
        }
    }
}
