//! Names of programs, maps and globals in the eBPF object, shared so that the loader and the
//! kernel crate cannot drift apart. A program's function name is its ELF symbol and the key
//! `Ebpf::program_mut` looks it up by.

/// Ring buffer every event goes through.
pub const EVENTS_MAP: &str = "EVENTS";
/// Per-CPU `u64` counters indexed by [`crate::event::Counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Hash [`crate::event::FlowCountKey`] → [`crate::event::FlowCount`]: per flow and generation,
/// every drop (by reason) and every datagram, including those whose event was sampled out.
pub const FLOW_COUNTS_MAP: &str = "FLOW_COUNTS";
/// The same for events whose flow found `FLOW_COUNTS` full (keys without a tuple).
pub const FLOW_OVERFLOW_MAP: &str = "FLOW_OVERFLOW";
/// One-entry `u32` array: the generation (0 or 1) the programs count in; userspace flips it.
pub const GENERATION_MAP: &str = "GENERATION";
/// Global holding [`crate::offsets::KernelOffsets`], set before load.
pub const OFFSETS_GLOBAL: &str = "OFFSETS";
/// Global holding [`crate::filter::Filter`], set before load.
pub const FILTER_GLOBAL: &str = "FILTER";
/// Global holding [`crate::filter::Selectors`], set before load.
pub const SELECTORS_GLOBAL: &str = "SELECTORS";
/// Hash `u32` → `u32`: the network namespace inodes `--container`/`--pod` select (the value
/// is unused), kept by userspace as containers start and stop (`Selectors::netns_set`).
pub const SELECTED_NETNS_MAP: &str = "SELECTED_NETNS";
/// Most namespaces `--container`/`--pod` select at once.
pub const SELECTED_NETNS_ENTRIES: u32 = 1024;
/// Global `u8`, set before load: 1 with `--debug-bpf` (the programs log through aya-log).
pub const DEBUG_BPF_GLOBAL: &str = "DEBUG_BPF";
/// `BPF_MAP_TYPE_STACK_TRACE` of `--stack`: kernel call stacks by id (`EventDetail::stack_id`).
pub const STACKS_MAP: &str = "STACKS";
/// Global holding [`crate::event::Capture`], set before load: what `-w` copies.
pub const CAPTURE_GLOBAL: &str = "CAPTURE";
/// One-entry `u32` array of [`FEATURE_ICMP6_PROBE`] bits, written after attaching.
pub const FEATURES_MAP: &str = "FEATURES";
/// `icmp6_send` is probed: the device hop stops parsing outgoing ICMPv6 errors, which would
/// report each twice.
pub const FEATURE_ICMP6_PROBE: u32 = 1;
/// The device hop (`xmit`) is attached: it reports ICMPv4 fragmentation needed with the MTU
/// from the packet, and `icmp_send`, whose tracepoint lacks it, leaves those errors to it.
pub const FEATURE_XMIT: u32 = 4;
/// `udptrace watch`: per-datagram path events ([`crate::event::EventKind::narrowed`]) pass
/// only when one of their ports is in [`ESCALATED_MAP`] (the flows being escalated).
pub const FEATURE_NARROW: u32 = 2;
/// Hash `u32` port → `u8`: the ports of the flows `udptrace watch` escalates, written and
/// cleared by userspace.
pub const ESCALATED_MAP: &str = "ESCALATED";
/// Ports escalated at once; past it, escalation waits for a slot.
pub const ESCALATED_ENTRIES: u32 = 256;

/// `skb:kfree_skb`: every freed skb with a drop reason.
pub const PROG_DROP_TP_BTF: &str = "drop_tp_btf";
pub const PROG_DROP_RAW_TP: &str = "drop_raw_tp";
pub const PROG_DROP_TRACEPOINT: &str = "drop_tracepoint";

/// The same for kernels whose `kfree_skb` has no reason argument (before 5.17): the reason
/// is inferred (`crate::drops`).
pub const PROG_DROP_INFERRED_TP_BTF: &str = "drop_inferred_tp_btf";
pub const PROG_DROP_INFERRED_RAW_TP: &str = "drop_inferred_raw_tp";
pub const PROG_DROP_INFERRED_TRACEPOINT: &str = "drop_inferred_tracepoint";
/// Global holding [`crate::drops::DropSites`], set before load.
pub const DROP_SITES_GLOBAL: &str = "DROP_SITES";
/// `sock_def_error_report`, for kernels without `sock:inet_sk_error_report`.
pub const PROG_SK_ERROR_FENTRY: &str = "sk_error_fentry";
pub const PROG_SK_ERROR_KPROBE: &str = "sk_error_kprobe";
/// `__udp_enqueue_schedule_skb`'s failures, the evidence of inferred receive-buffer drops.
pub const PROG_ENQUEUE_FEXIT: &str = "enqueue_fexit";
pub const PROG_ENQUEUE_KPROBE: &str = "enqueue_kprobe";
pub const PROG_ENQUEUE_KRETPROBE: &str = "enqueue_kretprobe";
/// `ip_route_input_noref`'s failures, the evidence of inferred reverse-path-filter drops.
pub const PROG_ROUTE_INPUT_FEXIT: &str = "route_input_fexit";
pub const PROG_ROUTE_INPUT_KPROBE: &str = "route_input_kprobe";
pub const PROG_ROUTE_INPUT_KRETPROBE: &str = "route_input_kretprobe";

/// `icmp:icmp_send`: every ICMPv4 error the kernel sends.
pub const PROG_ICMP_TP_BTF: &str = "icmp_send_tp_btf";
pub const PROG_ICMP_RAW_TP: &str = "icmp_send_raw_tp";
pub const PROG_ICMP_TRACEPOINT: &str = "icmp_send_tracepoint";
/// `__icmp_send` itself, for kernels without the tracepoint.
pub const PROG_ICMP_FENTRY: &str = "icmp_send_fentry";
pub const PROG_ICMP_KPROBE: &str = "icmp_send_kprobe";

/// `icmp6_send`: every ICMPv6 error the kernel generates (IPv6 has no tracepoint for it).
pub const PROG_ICMP6_FENTRY: &str = "icmp6_send_fentry";
pub const PROG_ICMP6_KPROBE: &str = "icmp6_send_kprobe";

/// `connect()` on UDP sockets: `udp_connect`/`udpv6_connect` (Linux 6.13+), else
/// `ip4_datagram_connect`/`ip6_datagram_connect`.
pub const PROG_CONNECT_FEXIT_UDP4: &str = "connect_fexit_udp_connect";
pub const PROG_CONNECT_FEXIT_UDP6: &str = "connect_fexit_udpv6_connect";
pub const PROG_CONNECT_FEXIT_IP4: &str = "connect_fexit_ip4_datagram_connect";
pub const PROG_CONNECT_FEXIT_IP6: &str = "connect_fexit_ip6_datagram_connect";
pub const PROG_CONNECT_KPROBE: &str = "connect_kprobe";
pub const PROG_CONNECT_KRETPROBE: &str = "connect_kretprobe";

/// UDP socket lookup for received datagrams: `__udp4_lib_lookup`/`__udp6_lib_lookup`.
pub const PROG_LOOKUP_FEXIT_V4: &str = "lookup_fexit_udp4";
pub const PROG_LOOKUP_FEXIT_V6: &str = "lookup_fexit_udp6";
pub const PROG_LOOKUP_KPROBE_V4: &str = "lookup_kprobe_udp4";
pub const PROG_LOOKUP_KRETPROBE_V4: &str = "lookup_kretprobe_udp4";
pub const PROG_LOOKUP_KPROBE_V6: &str = "lookup_kprobe_udp6";
pub const PROG_LOOKUP_KRETPROBE_V6: &str = "lookup_kretprobe_udp6";

/// `net:net_dev_queue`: packets handed to a device; parsed for ICMPv6 errors, which have no
/// tracepoint of their own.
pub const PROG_DEV_QUEUE_TP_BTF: &str = "dev_queue_tp_btf";
pub const PROG_DEV_QUEUE_RAW_TP: &str = "dev_queue_raw_tp";
pub const PROG_DEV_QUEUE_TRACEPOINT: &str = "dev_queue_tracepoint";

/// `sock:inet_sk_error_report`: an error (ECONNREFUSED, ...) was reported to a socket.
pub const PROG_SK_ERROR_TP_BTF: &str = "sk_error_tp_btf";
pub const PROG_SK_ERROR_RAW_TP: &str = "sk_error_raw_tp";

/// Result of a UDP send: `fexit` on `udp_sendmsg`/`udpv6_sendmsg` where the kernel allows it,
/// else `sock:sock_send_length`.
pub const PROG_SEND_FEXIT_V4: &str = "send_fexit_udp_sendmsg";
pub const PROG_SEND_FEXIT_V6: &str = "send_fexit_udpv6_sendmsg";
pub const PROG_SEND_KPROBE_V4: &str = "send_kprobe_udp_sendmsg";
pub const PROG_SEND_KRETPROBE_V4: &str = "send_kretprobe_udp_sendmsg";
pub const PROG_SEND_KPROBE_V6: &str = "send_kprobe_udpv6_sendmsg";
pub const PROG_SEND_KRETPROBE_V6: &str = "send_kretprobe_udpv6_sendmsg";
pub const PROG_SEND_TP_BTF: &str = "send_tp_btf";
pub const PROG_SEND_RAW_TP: &str = "send_raw_tp";
pub const PROG_SEND_TRACEPOINT: &str = "send_tracepoint";

/// `sock:sock_recv_length`: result of a receive (a connected socket's pending ECONNREFUSED
/// surfaces here, in the receiving process).
pub const PROG_RECV_TP_BTF: &str = "recv_tp_btf";
pub const PROG_RECV_RAW_TP: &str = "recv_raw_tp";
pub const PROG_RECV_TRACEPOINT: &str = "recv_tracepoint";
/// `udp_recvmsg`/`udpv6_recvmsg` returns, for kernels without `sock:sock_recv_length` (< 6.3).
pub const PROG_RECV_FEXIT_V4: &str = "recv_fexit_udp_recvmsg";
pub const PROG_RECV_FEXIT_V6: &str = "recv_fexit_udpv6_recvmsg";
/// The same before Linux 5.17 (no `bpf_get_func_ret`): the return value read from the context.
pub const PROG_RECV_FEXIT_CTX_V4: &str = "recv_fexit_ctx_udp_recvmsg";
pub const PROG_RECV_FEXIT_CTX_V6: &str = "recv_fexit_ctx_udpv6_recvmsg";
pub const PROG_RECV_KPROBE: &str = "recv_kprobe";
pub const PROG_RECV_KRETPROBE: &str = "recv_kretprobe";

/// `net:netif_receive_skb`: a datagram entering a device.
pub const PROG_RECEIVE_TP_BTF: &str = "receive_tp_btf";
pub const PROG_RECEIVE_RAW_TP: &str = "receive_raw_tp";
pub const PROG_RECEIVE_TRACEPOINT: &str = "receive_tracepoint";

/// `sock:sk_data_ready`: a datagram queued to a socket.
pub const PROG_DATA_READY_TP_BTF: &str = "data_ready_tp_btf";
pub const PROG_DATA_READY_RAW_TP: &str = "data_ready_raw_tp";
pub const PROG_DATA_READY_TRACEPOINT: &str = "data_ready_tracepoint";
/// `sock_def_readable`, for kernels without `sock:sk_data_ready` (< 6.7).
pub const PROG_DATA_READY_FENTRY: &str = "data_ready_fentry";
pub const PROG_DATA_READY_KPROBE: &str = "data_ready_kprobe";

/// `skb:consume_skb`: ends tracking of a datagram.
pub const PROG_CONSUME_TP_BTF: &str = "consume_tp_btf";
pub const PROG_CONSUME_RAW_TP: &str = "consume_raw_tp";
pub const PROG_CONSUME_TRACEPOINT: &str = "consume_tracepoint";

/// `fib:fib_table_lookup` and `fib6:fib6_table_lookup`: route lookups.
pub const PROG_ROUTE4_TRACEPOINT: &str = "route4_tracepoint";
pub const PROG_ROUTE6_TRACEPOINT: &str = "route6_tracepoint";
