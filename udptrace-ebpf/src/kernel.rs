//! Reading kernel objects (sk_buff, net_device, sock) through the offsets userspace resolved
//! from the running kernel's BTF. Reads go through `bpf_probe_read_kernel`, which serves every
//! program type alike, except the fields of a BTF-typed argument on the per-packet path
//! (`Access::Typed`), which load directly.

use core::ptr::read_volatile;

use aya_ebpf::helpers::bpf_probe_read_kernel;
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};
use udptrace_common::{
    event::{
        AF_INET, AF_INET6, EventHeader, FirstFragment, Fragment, FragmentKey, IPPROTO_FRAGMENT,
        IPPROTO_UDP, Mechanism, Tuple,
    },
    offsets::{KernelOffsets, OFFSET_MISSING},
};

use crate::{FRAGMENTS, OFFSETS, mem};

/// A kernel read failed or needed an offset this kernel lacks.
pub struct ReadError;

/// Reads one field of `OFFSETS`; volatile so the compiler cannot fold the placeholder value.
#[inline(always)]
pub fn offset(field: impl Fn(&KernelOffsets) -> &u32) -> u32 {
    // SAFETY: a reference into our own static.
    unsafe { read_volatile(field(&OFFSETS)) }
}

/// Reads a `T` at `base + off` from kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Result<T, ReadError> {
    if base == 0 || off == OFFSET_MISSING {
        return Err(ReadError);
    }
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T) }.map_err(|_| ReadError)
}

/// How a program may read through a pointer it holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A BTF-typed argument of a tp_btf, fentry or fexit program (`ctx.arg(n)` there): the
    /// verifier checks each load against the argument's type at the offset (a constant: the
    /// offsets are read-only data, frozen before load) and the JIT makes it fault-safe, so
    /// fields load directly, without the helper call (tens of nanoseconds, on every packet).
    Typed,
    /// Anything else (raw and classic tracepoint arguments, kprobe registers, map values,
    /// return values): a plain integer to the verifier, read with `bpf_probe_read_kernel`.
    Probe,
}

impl Access {
    /// How the arguments of a program of `mechanism` may be read.
    #[inline(always)]
    pub fn of_arguments(mechanism: Mechanism) -> Self {
        if matches!(mechanism, Mechanism::TpBtf | Mechanism::Fentry) {
            Self::Typed
        } else {
            Self::Probe
        }
    }
}

/// Reads the `T` at `base + off` of an object `base` points to, as `access` allows.
#[inline(always)]
pub fn field<T>(base: u64, off: u32, access: Access) -> Result<T, ReadError> {
    if access == Access::Probe {
        return read(base, off);
    }
    if base == 0 || off == OFFSET_MISSING {
        return Err(ReadError);
    }
    // SAFETY: `base` is a BTF-typed pointer; the verifier admits the load only at a field of
    // the type, and the JIT turns a fault into a zero read.
    Ok(unsafe { read_volatile((base + u64::from(off)) as *const T) })
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
/// `network_header`/`transport_header` value meaning "not set" (include/linux/skbuff.h:
/// `skb_transport_header_was_set` compares with `(typeof(skb->transport_header))~0U`).
const HEADER_UNSET: u16 = 0xffff;

/// Network layer of an skb: the family and where the IP header starts.
pub struct Network {
    pub family: u8,
    pub header: u64,
}

/// Locates the IP header of `skb` (`skb->head + skb->network_header`), or `None` when the skb
/// is not IPv4/IPv6 (`skb->protocol`) or has no network header yet.
#[inline(always)]
pub fn network_header(skb: u64, access: Access) -> Result<Option<Network>, ReadError> {
    let protocol = u16::from_be(field::<u16>(skb, offset(|o| &o.skb_protocol), access)?);
    let family = match protocol {
        ETH_P_IP => AF_INET,
        ETH_P_IPV6 => AF_INET6,
        _ => return Ok(None),
    };
    let nh: u16 = field(skb, offset(|o| &o.skb_network_header), access)?;
    if nh == HEADER_UNSET {
        return Ok(None);
    }
    let head: u64 = field(skb, offset(|o| &o.skb_head), access)?;
    Ok(Some(Network {
        family,
        header: head + u64::from(nh),
    }))
}

/// An IPv4 header without options and the UDP header after it, read in one go. Aligned so
/// that the addresses, byte arrays in network-types, are copied as words (the IPv6 addresses
/// at 8 and 24 as two u64 each), not byte by byte.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Ipv4Udp {
    ip: Ipv4Hdr,
    udp: UdpHdr,
}

/// An IPv6 header and the UDP header after it, when no extension header comes between (else
/// the first 8 bytes of that header).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Ipv6Udp {
    ip: Ipv6Hdr,
    udp: UdpHdr,
}

/// The IPv6 fragment header (RFC 8200 §4.5, `struct frag_hdr` of include/net/ipv6.h) and the
/// UDP header after it (meaningful in the first fragment only).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Ipv6FragUdp {
    next_hdr: u8,
    reserved: u8,
    /// Offset in 8-byte units (13 bits), 2 reserved bits, M (more fragments).
    offset_flags: [u8; 2],
    id: [u8; 4],
    udp: UdpHdr,
}

/// IPv4 `frag_off` bits (include/net/ip.h `IP_MF`, `IP_OFFSET`).
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// Parses the IP header at `net` and, when it carries UDP, the ports after it, into `tuple`;
/// returns the next protocol. One read covers both headers (IPv4 without options + 8 bytes,
/// IPv6 + 8 bytes; each `bpf_probe_read_kernel` costs tens of nanoseconds on every packet):
/// reading past a short packet stays inside the skb's buffer, which ends with
/// `skb_shared_info`. Of the IPv6 extension headers only the fragment header is walked
/// (one more read, for fragments only): a UDP datagram behind others is reported with the
/// extension's protocol and skipped by callers. The layouts are network-types' (`struct
/// iphdr`, `ipv6hdr`, `udphdr` of include/uapi/linux/).
///
/// An IP fragment is described in `fragment` (left as it is otherwise) and given its
/// datagram's ports by [`follow_fragment`]: udptrace's extension of libpcap's filters, which
/// see an IPv4 fragment other than the first, and every IPv6 UDP fragment, as UDP without
/// ports (gencode.c `gen_port_common`, `gen_port6_common`). A fragment whose first one was
/// not seen keeps ports 0, "none": no port test matches them (`udptrace_common::filter`).
#[inline(always)]
pub fn ip_udp(net: &Network, tuple: &mut Tuple, fragment: &mut Fragment) -> Result<u8, ReadError> {
    mem::zero(tuple);
    tuple.family = net.family;
    let (protocol, udp) = if net.family == AF_INET {
        let header: Ipv4Udp = read(net.header, 0)?;
        mem::set_ipv4(&mut tuple.saddr, header.ip.src_addr);
        mem::set_ipv4(&mut tuple.daddr, header.ip.dst_addr);
        let ihl = u32::from(header.ip.ihl());
        // A fragment other than the first carries payload there: `follow_fragment` reads
        // no ports from it.
        let udp = if ihl == Ipv4Hdr::LEN as u32 || header.ip.proto != IPPROTO_UDP {
            header.udp
        } else {
            // IP options: the UDP header is further on.
            read(net.header, ihl)?
        };
        let frag_off = u16::from_be_bytes(header.ip.frags);
        if frag_off & (IP_MF | IP_OFFSET) != 0 {
            fragment.id = u32::from(u16::from_be_bytes(header.ip.id));
            fragment.offset = (frag_off & IP_OFFSET) << 3;
            fragment.ip_len = u16::from_be_bytes(header.ip.tot_len);
            fragment.more = u8::from(frag_off & IP_MF != 0);
        }
        (header.ip.proto, udp)
    } else {
        let header: Ipv6Udp = read(net.header, 0)?;
        tuple.saddr = header.ip.src_addr;
        tuple.daddr = header.ip.dst_addr;
        if header.ip.next_hdr == IPPROTO_FRAGMENT {
            let behind: Ipv6FragUdp = read(net.header, Ipv6Hdr::LEN as u32)?;
            let offset_flags = u16::from_be_bytes(behind.offset_flags);
            fragment.id = u32::from_be_bytes(behind.id);
            fragment.offset = offset_flags & !7;
            fragment.ip_len =
                (Ipv6Hdr::LEN as u16).wrapping_add(u16::from_be_bytes(header.ip.payload_len));
            fragment.more = (offset_flags & 1) as u8;
            (behind.next_hdr, behind.udp)
        } else {
            (header.ip.next_hdr, header.udp)
        }
    };
    if protocol == IPPROTO_UDP {
        tuple.proto = IPPROTO_UDP;
        if fragment.is_fragment() {
            follow_fragment(tuple, fragment, &udp);
        } else {
            tuple.sport = u16::from_be_bytes(udp.src);
            tuple.dport = u16::from_be_bytes(udp.dst);
        }
    }
    Ok(protocol)
}

/// The length of the IP packet at `net` by its header: IPv4 total length, IPv6 payload
/// length plus the fixed header (a jumbogram's 0 gives 40; none is UDP).
#[inline(always)]
pub fn ip_length(net: &Network) -> Result<u32, ReadError> {
    if net.family == AF_INET {
        let header: Ipv4Hdr = read(net.header, 0)?;
        Ok(u32::from(u16::from_be_bytes(header.tot_len)))
    } else {
        let header: Ipv6Hdr = read(net.header, 0)?;
        Ok(u32::from(u16::from_be_bytes(header.payload_len)) + Ipv6Hdr::LEN as u32)
    }
}

/// The UDP header's length field of the datagram at `net` and the IP payload it must fit
/// (IPv4 total length less the header, IPv6 payload length: no extension headers walked).
#[inline(always)]
pub fn udp_length(net: &Network) -> Result<(u16, u32), ReadError> {
    if net.family == AF_INET {
        let header: Ipv4Udp = read(net.header, 0)?;
        let ihl = u32::from(header.ip.ihl());
        let udp: UdpHdr = if ihl == Ipv4Hdr::LEN as u32 {
            header.udp
        } else {
            read(net.header, ihl)?
        };
        let total = u32::from(u16::from_be_bytes(header.ip.tot_len));
        Ok((u16::from_be_bytes(udp.len), total.saturating_sub(ihl)))
    } else {
        let header: Ipv6Udp = read(net.header, 0)?;
        Ok((
            u16::from_be_bytes(header.udp.len),
            u32::from(u16::from_be_bytes(header.ip.payload_len)),
        ))
    }
}

/// Bytes of `skb`'s linear data from the IP header at `net` to `skb->tail` (both offsets
/// from `skb->head`, include/linux/skbuff.h `skb_tail_pointer`); what lies in page
/// fragments after it is not in the head buffer.
#[inline(always)]
pub fn linear_after(skb: u64, access: Access, net: &Network) -> Result<u32, ReadError> {
    let head: u64 = field(skb, offset(|o| &o.skb_head), access)?;
    let tail: u32 = field(skb, offset(|o| &o.skb_tail), access)?;
    Ok((head + u64::from(tail)).saturating_sub(net.header) as u32)
}

/// Gives a UDP fragment its datagram's ports. Only the first fragment carries the UDP header
/// (the rest is payload): its ports and length are remembered in `FRAGMENTS` under the key the
/// kernel reassembles by, and later fragments of the same datagram take them from there, so
/// that a port filter follows them to wherever they die. Linux sends the first fragment first
/// (net/ipv4/ip_output.c `ip_do_fragment`, net/ipv6/ip6_output.c `ip6_fragment`); a later
/// fragment seen before it, or whose first one was never seen, gets ports 0.
#[inline(always)]
fn follow_fragment(tuple: &mut Tuple, fragment: &mut Fragment, udp: &UdpHdr) {
    let key = FragmentKey {
        saddr: tuple.saddr,
        daddr: tuple.daddr,
        id: fragment.id,
        family: tuple.family,
        proto: IPPROTO_UDP,
        padding: [0; 2],
    };
    let first = if fragment.offset == 0 {
        let first = FirstFragment {
            sport: u16::from_be_bytes(udp.src),
            dport: u16::from_be_bytes(udp.dst),
            datagram_len: u16::from_be_bytes(udp.len),
            padding: 0,
        };
        // An LRU evicts to make room: the insert fails only without memory, and then the
        // later fragments go without ports.
        let _ = FRAGMENTS.insert(&key, &first, 0);
        first
    } else {
        // SAFETY: the value is copied out at once.
        match unsafe { FRAGMENTS.get(&key) } {
            Some(first) => *first,
            None => return,
        }
    };
    tuple.sport = first.sport;
    tuple.dport = first.dport;
    fragment.datagram_len = first.datagram_len;
}

/// Fills `tuple` with the UDP datagram an skb carries, `fragment` when it is an IP fragment;
/// `false` for anything else (checked cheaply first: `kfree_skb` fires for every packet the
/// host frees).
#[inline(always)]
pub fn udp_datagram(
    skb: u64,
    access: Access,
    tuple: &mut Tuple,
    fragment: &mut Fragment,
) -> Result<bool, ReadError> {
    let Some(net) = network_header(skb, access)? else {
        return Ok(false);
    };
    Ok(ip_udp(&net, tuple, fragment)? == IPPROTO_UDP)
}

/// Records where an skb is: its device and that device's network namespace, else the
/// namespace of the socket that owns it.
#[inline(always)]
pub fn skb_place(skb: u64, access: Access, header: &mut EventHeader) {
    // A typed skb's `dev` and the `net` behind it are typed too (BTF pointer fields).
    let dev: u64 = field(skb, offset(|o| &o.skb_dev), access).unwrap_or(0);
    header.ifindex = 0;
    header.ifname = [0; 16];
    header.netns = 0;
    if dev != 0 {
        header.ifindex = field(dev, offset(|o| &o.dev_ifindex), access).unwrap_or(0);
        header.ifname = field(dev, offset(|o| &o.dev_name), access).unwrap_or([0; 16]);
        header.netns = field::<u64>(dev, offset(|o| &o.dev_net), access)
            .map_or(0, |net| net_inum(net, access));
    }
    if header.netns == 0 {
        let sk: u64 = field(skb, offset(|o| &o.skb_sk), access).unwrap_or(0);
        header.netns = sock_netns(sk, access);
    }
}

/// The `struct net` of the device an skb is at (`skb->dev->nd_net.net`), read with the
/// helper.
#[inline(always)]
pub fn skb_dev_net(skb: u64) -> Option<u64> {
    read::<u64>(skb, offset(|o| &o.skb_dev))
        .and_then(|dev| read::<u64>(dev, offset(|o| &o.dev_net)))
        .ok()
        .filter(|&net| net != 0)
}

/// Records a socket's place: its namespace (sockets have no device).
#[inline(always)]
pub fn sock_place(sk: u64, access: Access, header: &mut EventHeader) {
    header.ifindex = 0;
    header.ifname = [0; 16];
    header.netns = sock_netns(sk, access);
}

/// Namespace of the task running the hook (`current->nsproxy->net_ns->ns.inum`); meaningful
/// only in process context.
#[inline(always)]
pub fn task_place(header: &mut EventHeader) {
    // SAFETY: bpf_get_current_task has no preconditions.
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() };
    header.ifindex = 0;
    header.ifname = [0; 16];
    header.netns = read::<u64>(task, offset(|o| &o.task_nsproxy))
        .and_then(|nsproxy| read::<u64>(nsproxy, offset(|o| &o.nsproxy_net)))
        .map_or(0, |net| net_inum(net, Access::Probe));
}

/// `SOFTIRQ_OFFSET`, `HARDIRQ_MASK`, `NMI_MASK` of the preempt count (include/linux/preempt.h:
/// 8 preempt bits, 8 softirq bits, 4 hardirq bits at 16, NMI bits at 20; x86's inverted
/// PREEMPT_NEED_RESCHED, bit 31, is outside every mask).
const SOFTIRQ_OFFSET: u32 = 0x100;
const HARDIRQ_MASK: u32 = 0xf_0000;
const NMI_MASK: u32 = 0xf0_0000;

/// Whether the hook runs in an interrupt (serving a softirq, or in a hardirq), where the
/// current task is only whoever the CPU interrupted: a sender in its system call when veth
/// delivers on its CPU (`local_bh_enable` → `do_softirq`), or ksoftirqd. Read from this CPU's
/// preempt count, found from the current task's run queue (`KernelOffsets::percpu_*`);
/// `false` (process context assumed, as before) when this kernel's layout does not say where
/// it is.
///
/// Only `SOFTIRQ_OFFSET` says a softirq is being served (`in_serving_softirq()`); the rest of
/// the softirq bits count `local_bh_disable` sections of process context. A hardirq counts
/// unless the NMI bits are set too: x86 enters an int3 in kernel mode as an NMI
/// (`exc_int3` → `irqentry_nmi_enter`, arch/x86/kernel/traps.c), which is where kprobes
/// that are not ftrace-based run, in whatever context was hit.
#[inline(always)]
pub fn in_interrupt() -> bool {
    // SAFETY: bpf_get_current_task has no preconditions.
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() };
    let (runqueues, preempt) = (
        offset(|o| &o.percpu_runqueues),
        offset(|o| &o.percpu_preempt_count),
    );
    if runqueues == OFFSET_MISSING || preempt == OFFSET_MISSING {
        return false;
    }
    let Ok(count) = read::<u64>(task, offset(|o| &o.task_cfs_rq))
        .and_then(|cfs_rq| read::<u64>(cfs_rq, offset(|o| &o.cfs_rq_rq)))
        .and_then(|rq| read::<u32>(rq.wrapping_sub(u64::from(runqueues)), preempt))
    else {
        return false;
    };
    count & SOFTIRQ_OFFSET != 0 || (count & HARDIRQ_MASK != 0 && count & NMI_MASK == 0)
}

#[inline(always)]
pub fn sock_netns(sk: u64, access: Access) -> u32 {
    field::<u64>(sk, offset(|o| &o.sk_net), access).map_or(0, |net| net_inum(net, access))
}

/// Inode of a `struct net` (`net->ns.inum`), 0 when unreadable.
#[inline(always)]
pub fn net_inum(net: u64, access: Access) -> u32 {
    field(net, offset(|o| &o.net_inum), access).unwrap_or(0)
}

/// Fills `tuple` with a UDP socket's own addresses: `saddr:sport` is the local (bound) side,
/// `daddr:dport` the connected peer (zero when unconnected). `false` for other protocols and
/// families.
#[inline(always)]
pub fn udp_sock_tuple(sk: u64, access: Access, tuple: &mut Tuple) -> Result<bool, ReadError> {
    let protocol: u16 = field(sk, offset(|o| &o.sk_protocol), access)?;
    if protocol != u16::from(IPPROTO_UDP) {
        return Ok(false);
    }
    let family: u16 = field(sk, offset(|o| &o.sk_family), access)?;
    mem::zero(tuple);
    if family == u16::from(AF_INET) {
        mem::set_ipv4(
            &mut tuple.saddr,
            field(sk, offset(|o| &o.sk_rcv_saddr), access)?,
        );
        mem::set_ipv4(
            &mut tuple.daddr,
            field(sk, offset(|o| &o.sk_daddr), access)?,
        );
    } else if family == u16::from(AF_INET6) {
        tuple.saddr = field(sk, offset(|o| &o.sk_v6_rcv_saddr), access)?;
        tuple.daddr = field(sk, offset(|o| &o.sk_v6_daddr), access)?;
    } else {
        return Ok(false);
    }
    tuple.family = family as u8;
    tuple.proto = IPPROTO_UDP;
    tuple.sport = field(sk, offset(|o| &o.sk_num), access)?;
    tuple.dport = u16::from_be(field(sk, offset(|o| &o.sk_dport), access)?);
    Ok(true)
}

/// Reads the raw tracepoint argument that a classic tracepoint record stores at `off`
/// (`size` bytes, sign-extended for 4-byte ints), so classic programs can share the raw
/// programs' code. `OFFSET_MISSING` when the kernel's format lacks the field.
#[inline(always)]
pub fn record_field(record: u64, off: u32, size: u32) -> Result<u64, ReadError> {
    if size == 8 {
        read::<u64>(record, off)
    } else {
        read::<i32>(record, off).map(|value| value as i64 as u64)
    }
}

/// Whether `skb` carries a conntrack entry (`skb->_nfct`), i.e. may have been NAT'd here.
#[inline(always)]
pub fn has_conntrack(skb: u64, access: Access) -> bool {
    field::<u64>(skb, offset(|o| &o.skb_nfct), access).is_ok_and(|nfct| nfct & !7 != 0)
}

/// `IP_CT_DIR_ORIGINAL`/`IP_CT_DIR_REPLY` tuples and status of the skb's conntrack entry
/// (`skb->_nfct & NFCT_PTRMASK`, include/linux/skbuff.h; `struct nf_conn`,
/// include/net/netfilter/nf_conntrack.h). `false` when the skb has none or the kernel's BTF
/// lacks conntrack (a module kernel: its types live in the module's BTF).
#[inline(always)]
pub fn conntrack(
    skb: u64,
    access: Access,
    original: &mut Tuple,
    reply: &mut Tuple,
    status: &mut u64,
) -> bool {
    // `_nfct` is an integer (pointer | ctinfo): what it points to is read with the helper.
    let Ok(nfct) = field::<u64>(skb, offset(|o| &o.skb_nfct), access) else {
        return false;
    };
    // NFCT_PTRMASK = ~NFCT_INFOMASK (7).
    let ct = nfct & !7;
    if ct == 0 {
        return false;
    }
    let hash = offset(|o| &o.ct_tuplehash);
    let stride = offset(|o| &o.ct_tuplehash_size);
    let tuple = offset(|o| &o.ct_hash_tuple);
    if hash == OFFSET_MISSING || stride == OFFSET_MISSING || tuple == OFFSET_MISSING {
        return false;
    }
    *status = read(ct, offset(|o| &o.ct_status)).unwrap_or(0);
    ct_tuple(ct + u64::from(hash) + u64::from(tuple), original).is_ok()
        && ct_tuple(
            ct + u64::from(hash) + u64::from(stride) + u64::from(tuple),
            reply,
        )
        .is_ok()
}

#[inline(always)]
fn ct_tuple(at: u64, tuple: &mut Tuple) -> Result<(), ReadError> {
    let l3num: u16 = read(at, offset(|o| &o.ct_l3num))?;
    tuple.family = l3num as u8;
    tuple.proto = read(at, offset(|o| &o.ct_protonum))?;
    tuple.saddr = read(at, offset(|o| &o.ct_src_addr))?;
    tuple.daddr = read(at, offset(|o| &o.ct_dst_addr))?;
    tuple.sport = u16::from_be(read(at, offset(|o| &o.ct_src_port))?);
    tuple.dport = u16::from_be(read(at, offset(|o| &o.ct_dst_port))?);
    Ok(())
}

/// Inode number of a socket (`SOCK_INODE(sk->sk_socket)->i_ino`, include/net/sock.h), what
/// /proc/PID/fd shows as `socket:[ino]`; 0 when unknown (e.g. a socket being closed).
#[inline(always)]
pub fn sock_inode(sk: u64) -> u64 {
    let socket: u64 = read(sk, offset(|o| &o.sk_socket)).unwrap_or(0);
    let inode = offset(|o| &o.socket_inode);
    if socket == 0 || inode == OFFSET_MISSING {
        return 0;
    }
    read(socket + u64::from(inode), offset(|o| &o.inode_ino)).unwrap_or(0)
}
