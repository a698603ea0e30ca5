//! The hook table: for each logical hook, its attach mechanisms best first. Adding a mechanism
//! for a hook means adding its program in `udptrace-ebpf/src/hooks/` and a row here.
//!
//! Order: where the hook is a kernel function, a function probe (fentry/fexit where the kernel
//! allows trampolines, else kprobe/kretprobe); then the BTF tracepoint (typed arguments,
//! cheapest), the raw tracepoint (no BTF needed), and the classic tracefs tracepoint (needs
//! tracefs and its format file). Where a tracepoint says the same as the function, it comes
//! first and the function probes are the fallback for kernels without it (`icmp_error`).
//! A program listed several times is loaded once and attached to each function.

use udptrace_common::{
    event::Mechanism,
    names::{
        PROG_CONNECT_FEXIT_IP4, PROG_CONNECT_FEXIT_IP6, PROG_CONNECT_FEXIT_UDP4,
        PROG_CONNECT_FEXIT_UDP6, PROG_CONNECT_KPROBE, PROG_CONNECT_KRETPROBE, PROG_CONSUME_RAW_TP,
        PROG_CONSUME_TP_BTF, PROG_CONSUME_TRACEPOINT, PROG_DATA_READY_FENTRY,
        PROG_DATA_READY_KPROBE, PROG_DATA_READY_RAW_TP, PROG_DATA_READY_TP_BTF,
        PROG_DATA_READY_TRACEPOINT, PROG_DEV_QUEUE_RAW_TP, PROG_DEV_QUEUE_TP_BTF,
        PROG_DEV_QUEUE_TRACEPOINT, PROG_DROP_RAW_TP, PROG_DROP_TP_BTF, PROG_DROP_TRACEPOINT,
        PROG_ICMP_FENTRY, PROG_ICMP_KPROBE, PROG_ICMP_RAW_TP, PROG_ICMP_TP_BTF,
        PROG_ICMP_TRACEPOINT, PROG_ICMP6_FENTRY, PROG_ICMP6_KPROBE, PROG_LOOKUP_FEXIT_V4,
        PROG_LOOKUP_FEXIT_V6, PROG_LOOKUP_KPROBE_V4, PROG_LOOKUP_KPROBE_V6,
        PROG_LOOKUP_KRETPROBE_V4, PROG_LOOKUP_KRETPROBE_V6, PROG_RECEIVE_RAW_TP,
        PROG_RECEIVE_TP_BTF, PROG_RECEIVE_TRACEPOINT, PROG_RECV_FEXIT_CTX_V4,
        PROG_RECV_FEXIT_CTX_V6, PROG_RECV_FEXIT_V4, PROG_RECV_FEXIT_V6, PROG_RECV_KPROBE,
        PROG_RECV_KRETPROBE, PROG_RECV_RAW_TP, PROG_RECV_TP_BTF, PROG_RECV_TRACEPOINT,
        PROG_ROUTE4_TRACEPOINT, PROG_ROUTE6_TRACEPOINT, PROG_SEND_FEXIT_V4, PROG_SEND_FEXIT_V6,
        PROG_SEND_KPROBE_V4, PROG_SEND_KPROBE_V6, PROG_SEND_KRETPROBE_V4, PROG_SEND_KRETPROBE_V6,
        PROG_SEND_RAW_TP, PROG_SEND_TP_BTF, PROG_SEND_TRACEPOINT, PROG_SK_ERROR_RAW_TP,
        PROG_SK_ERROR_TP_BTF,
    },
    names::{
        PROG_DROP_INFERRED_RAW_TP, PROG_DROP_INFERRED_TP_BTF, PROG_DROP_INFERRED_TRACEPOINT,
        PROG_ENQUEUE_FEXIT, PROG_ENQUEUE_KPROBE, PROG_ENQUEUE_KRETPROBE, PROG_ROUTE_INPUT_FEXIT,
        PROG_ROUTE_INPUT_KPROBE, PROG_ROUTE_INPUT_KRETPROBE, PROG_SK_ERROR_FENTRY,
        PROG_SK_ERROR_KPROBE,
    },
    offsets::ClassicTracepoint,
};

/// Where one program attaches.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// fexit on a kernel function (BTF trampoline).
    Fexit(&'static str),
    /// fentry on a kernel function.
    Fentry(&'static str),
    /// kprobe on a kernel function's entry.
    Kprobe(&'static str),
    /// kretprobe on a kernel function's return.
    Kretprobe(&'static str),
    /// BTF-typed tracepoint (`tp_btf/<name>`).
    TpBtf(&'static str),
    /// Raw tracepoint (`raw_tp/<name>`).
    RawTp(&'static str),
    /// Classic tracefs tracepoint; the program reads the record through offsets from the
    /// event's format file.
    Tracepoint(ClassicTracepoint),
    /// `fib:fib_table_lookup` (`ipv6: false`) or `fib6:fib6_table_lookup`, read through
    /// `KernelOffsets::fib4`/`fib6`.
    RouteTracepoint { ipv6: bool },
}

impl Target {
    /// `(group, event)` of the route tracepoints.
    pub const fn route_event(ipv6: bool) -> (&'static str, &'static str) {
        if ipv6 {
            ("fib6", "fib6_table_lookup")
        } else {
            ("fib", "fib_table_lookup")
        }
    }
}

/// The BTF names the programs of [`HOOKS`] attach to: `btf_trace_<name>` typedefs for tp_btf
/// (the kernel's `DEFINE_EVENT` declares one per tracepoint, include/trace/bpf_probe.h), and
/// the functions of fentry/fexit and kprobes (whose absence from BTF is worth saying before
/// the kernel refuses).
pub fn btf_attach_names() -> (Vec<String>, Vec<&'static str>) {
    let mut typedefs = Vec::new();
    let mut functions = Vec::new();
    let targets = HOOKS
        .iter()
        .flat_map(|hook| hook.attachments)
        .flat_map(|attachment| attachment.programs);
    for (_, target) in targets {
        match *target {
            Target::TpBtf(tracepoint) => typedefs.push(format!("btf_trace_{tracepoint}")),
            Target::Fexit(function)
            | Target::Fentry(function)
            | Target::Kprobe(function)
            | Target::Kretprobe(function) => functions.push(function),
            Target::RawTp(_) | Target::Tracepoint(_) | Target::RouteTracepoint { .. } => {}
        }
    }
    (typedefs, functions)
}

/// A way to attach a hook: every program listed must attach for it to count.
#[derive(Clone, Copy, Debug)]
pub struct Attachment {
    pub mechanism: Mechanism,
    pub programs: &'static [(&'static str, Target)],
}

/// What a hook costs and when it is needed, which decides when it is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Fires on failures (drops, ICMP and socket errors) or at a low rate (`connect()`), not
    /// for every datagram: always attached, `udptrace watch` included. (`enqueue` fires per
    /// delivered datagram, but only on kernels before 5.17, whose drop reasons it infers.)
    Failure,
    /// Fires once for every datagram a socket sends or reads (send, recvmsg): stays attached
    /// in the interactive tracer, which learns from them that its filter matches;
    /// `udptrace watch` attaches them only while it escalates a flow.
    Path,
    /// Fires at every hop of every datagram on the host (device transmit and receive, route
    /// and socket lookups, delivery, consume): the bulk of the tracer's cost. The interactive
    /// tracer parks (detaches) those attached to tracepoints after `--park-after` seconds
    /// without a matching event and attaches them again at the next one; `udptrace watch`
    /// attaches them only while it escalates a flow.
    Hop,
}

/// A logical hook: what udptrace observes, independent of how.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    pub name: &'static str,
    pub role: Role,
    pub description: &'static str,
    /// Without a core hook udptrace cannot do its job: `doctor` exits non-zero and tracing
    /// refuses to start.
    pub core: bool,
    pub attachments: &'static [Attachment],
}

/// Every hook udptrace attaches, in attach order.
pub const HOOKS: &[Hook] = &[
    Hook {
        name: "drop",
        role: Role::Failure,
        description: "every freed UDP datagram with its drop reason and kernel location (skb:kfree_skb)",
        core: true,
        attachments: &[
            Attachment {
                mechanism: Mechanism::TpBtf,
                programs: &[(PROG_DROP_TP_BTF, Target::TpBtf("kfree_skb"))],
            },
            Attachment {
                mechanism: Mechanism::RawTracepoint,
                programs: &[(PROG_DROP_RAW_TP, Target::RawTp("kfree_skb"))],
            },
            Attachment {
                mechanism: Mechanism::Tracepoint,
                programs: &[(
                    PROG_DROP_TRACEPOINT,
                    Target::Tracepoint(ClassicTracepoint::KfreeSkb),
                )],
            },
            // Before Linux 5.17 kfree_skb has no reason: the same three, inferring it.
            Attachment {
                mechanism: Mechanism::TpBtf,
                programs: &[(PROG_DROP_INFERRED_TP_BTF, Target::TpBtf("kfree_skb"))],
            },
            Attachment {
                mechanism: Mechanism::RawTracepoint,
                programs: &[(PROG_DROP_INFERRED_RAW_TP, Target::RawTp("kfree_skb"))],
            },
            Attachment {
                mechanism: Mechanism::Tracepoint,
                programs: &[(
                    PROG_DROP_INFERRED_TRACEPOINT,
                    Target::Tracepoint(ClassicTracepoint::KfreeSkbNoReason),
                )],
            },
        ],
    },
    Hook {
        name: "icmp_error",
        role: Role::Failure,
        description: "ICMPv4 errors sent about UDP datagrams (icmp:icmp_send)",
        core: true,
        attachments: &[
            Attachment {
                mechanism: Mechanism::TpBtf,
                programs: &[(PROG_ICMP_TP_BTF, Target::TpBtf("icmp_send"))],
            },
            Attachment {
                mechanism: Mechanism::RawTracepoint,
                programs: &[(PROG_ICMP_RAW_TP, Target::RawTp("icmp_send"))],
            },
            Attachment {
                mechanism: Mechanism::Fentry,
                programs: &[(PROG_ICMP_FENTRY, Target::Fentry("__icmp_send"))],
            },
            Attachment {
                mechanism: Mechanism::Kprobe,
                programs: &[(PROG_ICMP_KPROBE, Target::Kprobe("__icmp_send"))],
            },
            Attachment {
                mechanism: Mechanism::Tracepoint,
                programs: &[(
                    PROG_ICMP_TRACEPOINT,
                    Target::Tracepoint(ClassicTracepoint::IcmpSend),
                )],
            },
        ],
    },
    Hook {
        name: "xmit",
        role: Role::Hop,
        description: "datagrams handed to a device, ICMPv6 errors and ICMPv4 fragmentation needed (net:net_dev_queue)",
        core: false,
        attachments: &[
            Attachment {
                mechanism: Mechanism::TpBtf,
                programs: &[(PROG_DEV_QUEUE_TP_BTF, Target::TpBtf("net_dev_queue"))],
            },
            Attachment {
                mechanism: Mechanism::RawTracepoint,
                programs: &[(PROG_DEV_QUEUE_RAW_TP, Target::RawTp("net_dev_queue"))],
            },
            Attachment {
                mechanism: Mechanism::Tracepoint,
                programs: &[(
                    PROG_DEV_QUEUE_TRACEPOINT,
                    Target::Tracepoint(ClassicTracepoint::NetDevQueue),
                )],
            },
        ],
    },
    Hook {
        name: "recv",
        role: Role::Hop,
        description: "datagrams entering a device (net:netif_receive_skb)",
        core: false,
        attachments: &[
            Attachment {
                mechanism: Mechanism::TpBtf,
                programs: &[(PROG_RECEIVE_TP_BTF, Target::TpBtf("netif_receive_skb"))],
            },
            Attachment {
                mechanism: Mechanism::RawTracepoint,
                programs: &[(PROG_RECEIVE_RAW_TP, Target::RawTp("netif_receive_skb"))],
            },
            Attachment {
                mechanism: Mechanism::Tracepoint,
                programs: &[(
                    PROG_RECEIVE_TRACEPOINT,
                    Target::Tracepoint(ClassicTracepoint::NetifReceiveSkb),
                )],
            },
        ],
    },
    Hook {
        name: "deliver",
        role: Role::Hop,
        description: "datagrams queued to a socket (sock:sk_data_ready, else sock_def_readable)",
        core: false,
        attachments: &[
            Attachment {
                mechanism: Mechanism::TpBtf,
                programs: &[(PROG_DATA_READY_TP_BTF, Target::TpBtf("sk_data_ready"))],
            },
            Attachment {
                mechanism: Mechanism::RawTracepoint,
                programs: &[(PROG_DATA_READY_RAW_TP, Target::RawTp("sk_data_ready"))],
            },
            Attachment {
                mechanism: Mechanism::Tracepoint,
                programs: &[(
                    PROG_DATA_READY_TRACEPOINT,
                    Target::Tracepoint(ClassicTracepoint::SkDataReady),
                )],
            },
            // Before Linux 6.7: the function the tracepoint lives in.
            Attachment {
                mechanism: Mechanism::Fentry,
                programs: &[(PROG_DATA_READY_FENTRY, Target::Fentry("sock_def_readable"))],
            },
            Attachment {
                mechanism: Mechanism::Kprobe,
                programs: &[(PROG_DATA_READY_KPROBE, Target::Kprobe("sock_def_readable"))],
            },
        ],
    },
    Hook {
        name: "consume",
        role: Role::Hop,
        description: "end of a followed datagram (skb:consume_skb)",
        core: false,
        attachments: &[
            Attachment {
                mechanism: Mechanism::TpBtf,
                programs: &[(PROG_CONSUME_TP_BTF, Target::TpBtf("consume_skb"))],
            },
            Attachment {
                mechanism: Mechanism::RawTracepoint,
                programs: &[(PROG_CONSUME_RAW_TP, Target::RawTp("consume_skb"))],
            },
            Attachment {
                mechanism: Mechanism::Tracepoint,
                programs: &[(
                    PROG_CONSUME_TRACEPOINT,
                    Target::Tracepoint(ClassicTracepoint::ConsumeSkb),
                )],
            },
        ],
    },
    Hook {
        name: "route4",
        role: Role::Hop,
        description: "IPv4 route lookups: the output device chosen (fib:fib_table_lookup)",
        core: false,
        attachments: &[Attachment {
            mechanism: Mechanism::Tracepoint,
            programs: &[(
                PROG_ROUTE4_TRACEPOINT,
                Target::RouteTracepoint { ipv6: false },
            )],
        }],
    },
    Hook {
        name: "route6",
        role: Role::Hop,
        description: "IPv6 route lookups (fib6:fib6_table_lookup)",
        core: false,
        attachments: &[Attachment {
            mechanism: Mechanism::Tracepoint,
            programs: &[(
                PROG_ROUTE6_TRACEPOINT,
                Target::RouteTracepoint { ipv6: true },
            )],
        }],
    },
    Hook {
        name: "sock_error",
        role: Role::Failure,
        description: "errors reported to UDP sockets, e.g. ECONNREFUSED (sock:inet_sk_error_report, else sock_def_error_report)",
        core: false,
        attachments: &[
            Attachment {
                mechanism: Mechanism::TpBtf,
                programs: &[(PROG_SK_ERROR_TP_BTF, Target::TpBtf("inet_sk_error_report"))],
            },
            Attachment {
                mechanism: Mechanism::RawTracepoint,
                programs: &[(PROG_SK_ERROR_RAW_TP, Target::RawTp("inet_sk_error_report"))],
            },
            // Before the tracepoint (5.10): the function it was added to.
            Attachment {
                mechanism: Mechanism::Fentry,
                programs: &[(
                    PROG_SK_ERROR_FENTRY,
                    Target::Fentry("sock_def_error_report"),
                )],
            },
            Attachment {
                mechanism: Mechanism::Kprobe,
                programs: &[(
                    PROG_SK_ERROR_KPROBE,
                    Target::Kprobe("sock_def_error_report"),
                )],
            },
        ],
    },
    Hook {
        name: "send",
        role: Role::Path,
        description: "UDP sends with the sending process; function probes add the destination, IP_PKTINFO and connected state (udp_sendmsg/udpv6_sendmsg, else sock:sock_send_length)",
        core: false,
        attachments: &[
            Attachment {
                mechanism: Mechanism::Fentry,
                programs: &[
                    (PROG_SEND_FEXIT_V4, Target::Fexit("udp_sendmsg")),
                    (PROG_SEND_FEXIT_V6, Target::Fexit("udpv6_sendmsg")),
                ],
            },
            Attachment {
                mechanism: Mechanism::Kprobe,
                programs: &[
                    (PROG_SEND_KPROBE_V4, Target::Kprobe("udp_sendmsg")),
                    (PROG_SEND_KRETPROBE_V4, Target::Kretprobe("udp_sendmsg")),
                    (PROG_SEND_KPROBE_V6, Target::Kprobe("udpv6_sendmsg")),
                    (PROG_SEND_KRETPROBE_V6, Target::Kretprobe("udpv6_sendmsg")),
                ],
            },
            Attachment {
                mechanism: Mechanism::TpBtf,
                programs: &[(PROG_SEND_TP_BTF, Target::TpBtf("sock_send_length"))],
            },
            Attachment {
                mechanism: Mechanism::RawTracepoint,
                programs: &[(PROG_SEND_RAW_TP, Target::RawTp("sock_send_length"))],
            },
            Attachment {
                mechanism: Mechanism::Tracepoint,
                programs: &[(
                    PROG_SEND_TRACEPOINT,
                    Target::Tracepoint(ClassicTracepoint::SockSendLength),
                )],
            },
        ],
    },
    Hook {
        name: "recv_error",
        // sock:sock_recv_length fires for every receive call, failed or not.
        role: Role::Path,
        description: "failed UDP receives with the receiving process (sock:sock_recv_length, else udp_recvmsg/udpv6_recvmsg)",
        core: false,
        attachments: &[
            Attachment {
                mechanism: Mechanism::TpBtf,
                programs: &[(PROG_RECV_TP_BTF, Target::TpBtf("sock_recv_length"))],
            },
            Attachment {
                mechanism: Mechanism::RawTracepoint,
                programs: &[(PROG_RECV_RAW_TP, Target::RawTp("sock_recv_length"))],
            },
            Attachment {
                mechanism: Mechanism::Tracepoint,
                programs: &[(
                    PROG_RECV_TRACEPOINT,
                    Target::Tracepoint(ClassicTracepoint::SockRecvLength),
                )],
            },
            // Before Linux 6.3: the receive functions' return values.
            Attachment {
                mechanism: Mechanism::Fentry,
                programs: &[
                    (PROG_RECV_FEXIT_V4, Target::Fexit("udp_recvmsg")),
                    (PROG_RECV_FEXIT_V6, Target::Fexit("udpv6_recvmsg")),
                ],
            },
            // Before Linux 5.17 (kfree_skb's reason came in the same release as the helper the
            // programs above call).
            Attachment {
                mechanism: Mechanism::Fentry,
                programs: &[
                    (PROG_RECV_FEXIT_CTX_V4, Target::Fexit("udp_recvmsg")),
                    (PROG_RECV_FEXIT_CTX_V6, Target::Fexit("udpv6_recvmsg")),
                ],
            },
            Attachment {
                mechanism: Mechanism::Kprobe,
                programs: &[
                    (PROG_RECV_KPROBE, Target::Kprobe("udp_recvmsg")),
                    (PROG_RECV_KRETPROBE, Target::Kretprobe("udp_recvmsg")),
                    (PROG_RECV_KPROBE, Target::Kprobe("udpv6_recvmsg")),
                    (PROG_RECV_KRETPROBE, Target::Kretprobe("udpv6_recvmsg")),
                ],
            },
        ],
    },
    Hook {
        name: "icmp6_error",
        role: Role::Failure,
        description: "ICMPv6 errors generated about UDP datagrams (icmp6_send; without it, seen at xmit)",
        core: false,
        attachments: &[
            Attachment {
                mechanism: Mechanism::Fentry,
                programs: &[(PROG_ICMP6_FENTRY, Target::Fentry("icmp6_send"))],
            },
            Attachment {
                mechanism: Mechanism::Kprobe,
                programs: &[(PROG_ICMP6_KPROBE, Target::Kprobe("icmp6_send"))],
            },
        ],
    },
    Hook {
        name: "connect",
        role: Role::Failure,
        description: "connect() on UDP sockets: the local address and peer it pins (udp_connect, ip4/ip6_datagram_connect)",
        core: false,
        attachments: &[
            Attachment {
                mechanism: Mechanism::Fentry,
                programs: &[
                    (PROG_CONNECT_FEXIT_UDP4, Target::Fexit("udp_connect")),
                    (PROG_CONNECT_FEXIT_UDP6, Target::Fexit("udpv6_connect")),
                ],
            },
            // Before Linux 6.13 `udp_prot.connect` is ip4_datagram_connect itself.
            Attachment {
                mechanism: Mechanism::Fentry,
                programs: &[
                    (
                        PROG_CONNECT_FEXIT_IP4,
                        Target::Fexit("ip4_datagram_connect"),
                    ),
                    (
                        PROG_CONNECT_FEXIT_IP6,
                        Target::Fexit("ip6_datagram_connect"),
                    ),
                ],
            },
            Attachment {
                mechanism: Mechanism::Kprobe,
                programs: &[
                    (PROG_CONNECT_KPROBE, Target::Kprobe("udp_connect")),
                    (PROG_CONNECT_KRETPROBE, Target::Kretprobe("udp_connect")),
                    (PROG_CONNECT_KPROBE, Target::Kprobe("udpv6_connect")),
                    (PROG_CONNECT_KRETPROBE, Target::Kretprobe("udpv6_connect")),
                ],
            },
            Attachment {
                mechanism: Mechanism::Kprobe,
                programs: &[
                    (PROG_CONNECT_KPROBE, Target::Kprobe("ip4_datagram_connect")),
                    (
                        PROG_CONNECT_KRETPROBE,
                        Target::Kretprobe("ip4_datagram_connect"),
                    ),
                    (PROG_CONNECT_KPROBE, Target::Kprobe("ip6_datagram_connect")),
                    (
                        PROG_CONNECT_KRETPROBE,
                        Target::Kretprobe("ip6_datagram_connect"),
                    ),
                ],
            },
        ],
    },
    Hook {
        name: "lookup",
        role: Role::Hop,
        description: "UDP socket lookups for received datagrams: the socket found, or none (__udp4_lib_lookup/__udp6_lib_lookup)",
        core: false,
        attachments: &[
            Attachment {
                mechanism: Mechanism::Fentry,
                programs: &[
                    (PROG_LOOKUP_FEXIT_V4, Target::Fexit("__udp4_lib_lookup")),
                    (PROG_LOOKUP_FEXIT_V6, Target::Fexit("__udp6_lib_lookup")),
                ],
            },
            Attachment {
                mechanism: Mechanism::Kprobe,
                programs: &[
                    (PROG_LOOKUP_KPROBE_V4, Target::Kprobe("__udp4_lib_lookup")),
                    (
                        PROG_LOOKUP_KRETPROBE_V4,
                        Target::Kretprobe("__udp4_lib_lookup"),
                    ),
                    (PROG_LOOKUP_KPROBE_V6, Target::Kprobe("__udp6_lib_lookup")),
                    (
                        PROG_LOOKUP_KRETPROBE_V6,
                        Target::Kretprobe("__udp6_lib_lookup"),
                    ),
                ],
            },
        ],
    },
    Hook {
        name: "enqueue",
        role: Role::Failure,
        description: "failed queueing to a UDP socket, evidence of inferred drop reasons before Linux 5.17 (__udp_enqueue_schedule_skb)",
        core: false,
        attachments: &[
            Attachment {
                mechanism: Mechanism::Fentry,
                programs: &[(
                    PROG_ENQUEUE_FEXIT,
                    Target::Fexit("__udp_enqueue_schedule_skb"),
                )],
            },
            Attachment {
                mechanism: Mechanism::Kprobe,
                programs: &[
                    (
                        PROG_ENQUEUE_KPROBE,
                        Target::Kprobe("__udp_enqueue_schedule_skb"),
                    ),
                    (
                        PROG_ENQUEUE_KRETPROBE,
                        Target::Kretprobe("__udp_enqueue_schedule_skb"),
                    ),
                ],
            },
        ],
    },
    Hook {
        name: "route_input",
        role: Role::Failure,
        description: "failed IPv4 input route lookups, evidence of inferred reverse-path-filter drops before Linux 5.17 (ip_route_input_noref)",
        core: false,
        attachments: &[
            Attachment {
                mechanism: Mechanism::Fentry,
                programs: &[(
                    PROG_ROUTE_INPUT_FEXIT,
                    Target::Fexit("ip_route_input_noref"),
                )],
            },
            Attachment {
                mechanism: Mechanism::Kprobe,
                programs: &[
                    (
                        PROG_ROUTE_INPUT_KPROBE,
                        Target::Kprobe("ip_route_input_noref"),
                    ),
                    (
                        PROG_ROUTE_INPUT_KRETPROBE,
                        Target::Kretprobe("ip_route_input_noref"),
                    ),
                ],
            },
        ],
    },
];

/// Programs for one kind of kernel only: `Some(true)` for Linux 5.17+ (those reading kfree_skb's
/// reason argument, and the fexit programs calling `bpf_get_func_ret`, new in the same release),
/// `Some(false)` for earlier kernels (the `drop_inferred_*` programs and their evidence,
/// `enqueue` and `route_input`; the fexit programs reading the return value from the context).
pub fn needs_drop_reason(program: &str) -> Option<bool> {
    match program {
        PROG_DROP_TP_BTF | PROG_DROP_RAW_TP | PROG_DROP_TRACEPOINT | PROG_RECV_FEXIT_V4
        | PROG_RECV_FEXIT_V6 => Some(true),
        PROG_DROP_INFERRED_TP_BTF
        | PROG_DROP_INFERRED_RAW_TP
        | PROG_DROP_INFERRED_TRACEPOINT
        | PROG_ENQUEUE_FEXIT
        | PROG_ENQUEUE_KPROBE
        | PROG_ENQUEUE_KRETPROBE
        | PROG_ROUTE_INPUT_FEXIT
        | PROG_ROUTE_INPUT_KPROBE
        | PROG_ROUTE_INPUT_KRETPROBE
        | PROG_RECV_FEXIT_CTX_V4
        | PROG_RECV_FEXIT_CTX_V6 => Some(false),
        _ => None,
    }
}

/// The contract between this plan, `udptrace_common::names` and the eBPF object, checked on the
/// embedded object itself without a kernel: a renamed program, a kprobe that became a
/// kretprobe, a moved tracepoint or a map whose layout changed on one side fails here, not at
/// attach time under root.
#[cfg(test)]
mod contract_tests {
    use std::collections::BTreeSet;

    use aya_obj::{Object, ProgramSection, generated::bpf_map_type};
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    use udptrace_common::{
        drops::DropSites,
        event::{COUNTER_COUNT, Capture, FlowCount, FlowCountKey, STACK_ENTRIES},
        filter::{Filter, Selectors},
        names::{
            CAPTURE_GLOBAL, COUNTERS_MAP, DEBUG_BPF_GLOBAL, DROP_SITES_GLOBAL, ESCALATED_ENTRIES,
            ESCALATED_MAP, EVENTS_MAP, FEATURES_MAP, FILTER_GLOBAL, FLOW_COUNTS_MAP,
            FLOW_OVERFLOW_MAP, GENERATION_MAP, OFFSETS_GLOBAL, SELECTED_NETNS_ENTRIES,
            SELECTED_NETNS_MAP, SELECTORS_GLOBAL, STACKS_MAP,
        },
        offsets::KernelOffsets,
    };

    use super::{HOOKS, Target};
    use crate::session::OBJECT;

    fn object_bytes() -> &'static [u8] {
        assert!(
            !OBJECT.is_empty(),
            "built with UDPTRACE_SKIP_EBPF: the contract test needs the real eBPF object"
        );
        OBJECT
    }

    /// The program type and ELF section a program attached to `target` must have (the
    /// sections aya-ebpf's macros emit: `#[kprobe]` without a function is plain `kprobe`).
    fn expected(target: Target) -> (fn(&ProgramSection) -> bool, Vec<String>) {
        match target {
            Target::Fexit(function) => (
                |s| matches!(s, ProgramSection::FExit { sleepable: false }),
                vec![format!("fexit/{function}")],
            ),
            Target::Fentry(function) => (
                |s| matches!(s, ProgramSection::FEntry { sleepable: false }),
                vec![format!("fentry/{function}")],
            ),
            Target::Kprobe(function) => (
                |s| matches!(s, ProgramSection::KProbe),
                vec!["kprobe".into(), format!("kprobe/{function}")],
            ),
            Target::Kretprobe(function) => (
                |s| matches!(s, ProgramSection::KRetProbe),
                vec!["kretprobe".into(), format!("kretprobe/{function}")],
            ),
            Target::TpBtf(tracepoint) => (
                |s| matches!(s, ProgramSection::BtfTracePoint),
                vec![format!("tp_btf/{tracepoint}")],
            ),
            Target::RawTp(tracepoint) => (
                |s| matches!(s, ProgramSection::RawTracePoint),
                vec![format!("raw_tp/{tracepoint}")],
            ),
            Target::Tracepoint(tracepoint) => {
                let (group, event) = tracepoint.event();
                (
                    |s| matches!(s, ProgramSection::TracePoint),
                    vec![format!("tracepoint/{group}/{event}")],
                )
            }
            Target::RouteTracepoint { ipv6 } => {
                let (group, event) = Target::route_event(ipv6);
                (
                    |s| matches!(s, ProgramSection::TracePoint),
                    vec![format!("tracepoint/{group}/{event}")],
                )
            }
        }
    }

    #[test]
    fn every_planned_program_exists_with_its_type_and_section() {
        let bytes = object_bytes();
        let parsed = Object::parse(bytes).expect("aya parses the eBPF object");
        let elf = object::File::parse(bytes).expect("the eBPF object is ELF");
        let mut problems = Vec::new();
        let mut planned = BTreeSet::new();
        for hook in HOOKS {
            for attachment in hook.attachments {
                for &(name, target) in attachment.programs {
                    planned.insert(name);
                    let Some(program) = parsed.programs.get(name) else {
                        problems.push(format!("hook {}: no program `{name}`", hook.name));
                        continue;
                    };
                    let (type_ok, sections) = expected(target);
                    if !type_ok(&program.section) {
                        problems.push(format!(
                            "`{name}` is {:?}, the plan attaches it as {target:?}",
                            program.section
                        ));
                    }
                    let section = elf
                        .section_by_index(object::SectionIndex(program.section_index))
                        .and_then(|section| section.name().map(str::to_owned))
                        .unwrap_or_default();
                    if !sections.contains(&section) {
                        problems.push(format!(
                            "`{name}` is in section `{section}`, the plan attaches it as {target:?}"
                        ));
                    }
                }
            }
        }
        // The other way round: a program no hook names is never attached (dead code, or a
        // name that drifted on the plan's side only).
        for name in parsed.programs.keys() {
            if !planned.contains(name.as_str()) {
                problems.push(format!("program `{name}` is in no hook of the plan"));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn every_map_and_global_userspace_opens_exists_with_its_layout() {
        let bytes = object_bytes();
        let parsed = Object::parse(bytes).expect("aya parses the eBPF object");
        let mut problems = Vec::new();
        // (name, type, key size, value size, max entries; 0: sized by userspace at load).
        let maps = [
            (EVENTS_MAP, bpf_map_type::BPF_MAP_TYPE_RINGBUF, 0, 0, 0),
            (
                COUNTERS_MAP,
                bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY,
                4,
                8,
                COUNTER_COUNT,
            ),
            (
                FLOW_COUNTS_MAP,
                bpf_map_type::BPF_MAP_TYPE_HASH,
                size_of::<FlowCountKey>(),
                size_of::<FlowCount>(),
                udptrace_common::event::FLOW_COUNTS_ENTRIES,
            ),
            (
                FLOW_OVERFLOW_MAP,
                bpf_map_type::BPF_MAP_TYPE_HASH,
                size_of::<FlowCountKey>(),
                size_of::<FlowCount>(),
                udptrace_common::event::FLOW_OVERFLOW_ENTRIES,
            ),
            (GENERATION_MAP, bpf_map_type::BPF_MAP_TYPE_ARRAY, 4, 4, 1),
            (
                ESCALATED_MAP,
                bpf_map_type::BPF_MAP_TYPE_HASH,
                4,
                1,
                ESCALATED_ENTRIES,
            ),
            (FEATURES_MAP, bpf_map_type::BPF_MAP_TYPE_ARRAY, 4, 4, 1),
            (
                SELECTED_NETNS_MAP,
                bpf_map_type::BPF_MAP_TYPE_HASH,
                4,
                4,
                SELECTED_NETNS_ENTRIES,
            ),
            // PERF_MAX_STACK_DEPTH (127) frames of 8 bytes.
            (
                STACKS_MAP,
                bpf_map_type::BPF_MAP_TYPE_STACK_TRACE,
                4,
                127 * 8,
                STACK_ENTRIES,
            ),
        ];
        for (name, kind, key, value, entries) in maps {
            let Some(map) = parsed.maps.get(name) else {
                problems.push(format!("no map `{name}`"));
                continue;
            };
            let found = (
                map.map_type(),
                map.key_size() as usize,
                map.value_size() as usize,
            );
            if found != (kind as u32, key, value) {
                problems.push(format!(
                    "map `{name}`: (type, key, value) is {found:?}, userspace expects {:?}",
                    (kind as u32, key, value)
                ));
            }
            if entries != 0 && map.max_entries() != entries {
                problems.push(format!(
                    "map `{name}`: {} entries, userspace expects {entries}",
                    map.max_entries()
                ));
            }
        }
        // Globals are overridden by symbol name (`EbpfLoader::override_global`), with bytes of
        // the shared type: the symbol must exist with that size.
        let elf = object::File::parse(bytes).expect("the eBPF object is ELF");
        for (name, size) in [
            (OFFSETS_GLOBAL, size_of::<KernelOffsets>()),
            (FILTER_GLOBAL, size_of::<Filter>()),
            (SELECTORS_GLOBAL, size_of::<Selectors>()),
            (DEBUG_BPF_GLOBAL, size_of::<u8>()),
            (DROP_SITES_GLOBAL, size_of::<DropSites>()),
            (CAPTURE_GLOBAL, size_of::<Capture>()),
        ] {
            match elf.symbols().find(|s| s.name() == Ok(name)) {
                None => problems.push(format!("no global `{name}`")),
                Some(symbol) if symbol.size() != size as u64 => problems.push(format!(
                    "global `{name}` is {} bytes, userspace writes {size}",
                    symbol.size()
                )),
                Some(_) => {}
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}
