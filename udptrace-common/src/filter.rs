//! The compiled form of a filter expression and its evaluator.
//!
//! Userspace (`udptrace/src/filter/`) parses a tcpdump-style expression and compiles it into a
//! postfix program of at most [`FILTER_MAX_INSNS`] instructions. The same [`Filter::matches`]
//! runs inside every eBPF program before anything is reserved in the ring buffer, and in
//! userspace tests, so the kernel and the host cannot disagree.
//!
//! Constraints of running in eBPF shape this code: no recursion, loops bounded by constants, a
//! small stack (the boolean stack is a `u64` of bits), no `memcmp` (bytes are compared in an
//! explicit loop), and instructions read one at a time with `read_volatile` so that the
//! compiler cannot constant-fold the all-zero placeholder that the loader overwrites.

use core::ptr::read_volatile;

use crate::event::{AF_INET, AF_INET6, Tuple};

/// Longest program the kernel evaluates; longer expressions are rejected by the compiler.
pub const FILTER_MAX_INSNS: usize = 64;

/// Matches everything (the compiled form of an empty expression is an empty program).
pub const OP_TRUE: u8 = 0;
/// An event about an IPv4 datagram (`ip`).
pub const OP_IPV4: u8 = 1;
/// An event about an IPv6 datagram (`ip6`).
pub const OP_IPV6: u8 = 2;
/// An ICMPv4 error about a datagram (`icmp`).
pub const OP_ICMP4: u8 = 3;
/// An ICMPv6 error about a datagram (`icmp6`).
pub const OP_ICMP6: u8 = 4;
/// Address within `addr/prefix_len` of `family`, on the side(s) given by `dir`.
pub const OP_NET: u8 = 5;
/// Port within `port_lo..=port_hi` on the side(s) given by `dir`.
pub const OP_PORT: u8 = 6;
/// Pops two results, pushes their conjunction.
pub const OP_AND: u8 = 7;
/// Pops two results, pushes their disjunction.
pub const OP_OR: u8 = 8;
/// Negates the top result.
pub const OP_NOT: u8 = 9;
/// Pushes `false` (a filter that matches nothing, e.g. `udp and not udp`).
pub const OP_FALSE: u8 = 10;

/// `dir` of [`OP_NET`] and [`OP_PORT`]: source side.
pub const DIR_SRC: u8 = 1;
/// Destination side.
pub const DIR_DST: u8 = 2;
/// Either side (`host`, `port` without `src`/`dst`).
pub const DIR_EITHER: u8 = 3;

/// One postfix instruction. Leaf fields not used by an op are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FilterInsn {
    pub op: u8,
    pub dir: u8,
    /// [`AF_INET`] or [`AF_INET6`] for [`OP_NET`].
    pub family: u8,
    pub prefix_len: u8,
    pub port_lo: u16,
    pub port_hi: u16,
    pub addr: [u8; 16],
}

/// A compiled filter: `insns[..len]` in postfix order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    pub len: u32,
    pub padding: u32,
    pub insns: [FilterInsn; FILTER_MAX_INSNS],
}

impl Filter {
    /// The empty program: every event matches.
    pub const MATCH_ALL: Self = Self {
        len: 0,
        padding: 0,
        insns: [FilterInsn {
            op: OP_TRUE,
            dir: 0,
            family: 0,
            prefix_len: 0,
            port_lo: 0,
            port_hi: 0,
            addr: [0; 16],
        }; FILTER_MAX_INSNS],
    };

    /// Evaluates the program on an event about the datagram `tuple`; `icmp_error` is set when
    /// the event is an ICMP error quoting that datagram.
    #[expect(
        clippy::inline_always,
        reason = "eBPF: one inlined body per program keeps the verifier's view and the stack small"
    )]
    #[inline(always)]
    pub fn matches(&self, tuple: &Tuple, icmp_error: bool) -> bool {
        // SAFETY: plain reads of our own fields; volatile only to defeat constant folding.
        let len = unsafe { read_volatile(&raw const self.len) } as usize;
        if len == 0 {
            return true;
        }
        // Bit i of `stack` is the i-th result from the top; postfix programs from the compiler
        // never go deeper than FILTER_MAX_INSNS (= 64 bits).
        let mut stack: u64 = 0;
        let mut index = 0;
        while index < FILTER_MAX_INSNS {
            if index >= len {
                break;
            }
            // SAFETY: index < FILTER_MAX_INSNS.
            let insn = unsafe { read_volatile(self.insns.as_ptr().add(index)) };
            match insn.op {
                OP_AND => {
                    let top = stack & 1;
                    stack >>= 1;
                    stack = (stack & !1) | (stack & top);
                }
                OP_OR => {
                    let top = stack & 1;
                    stack >>= 1;
                    stack |= top;
                }
                OP_NOT => stack ^= 1,
                _ => stack = (stack << 1) | u64::from(leaf_matches(&insn, tuple, icmp_error)),
            }
            index += 1;
        }
        stack & 1 == 1
    }
}

#[expect(clippy::inline_always, reason = "eBPF, as `Filter::matches`")]
#[inline(always)]
fn leaf_matches(insn: &FilterInsn, tuple: &Tuple, icmp_error: bool) -> bool {
    match insn.op {
        OP_TRUE => true,
        OP_IPV4 => tuple.family == AF_INET,
        OP_IPV6 => tuple.family == AF_INET6,
        OP_ICMP4 => icmp_error && tuple.family == AF_INET,
        OP_ICMP6 => icmp_error && tuple.family == AF_INET6,
        OP_NET => {
            tuple.family == insn.family
                && ((insn.dir & DIR_SRC != 0 && prefix_matches(&tuple.saddr, insn))
                    || (insn.dir & DIR_DST != 0 && prefix_matches(&tuple.daddr, insn)))
        }
        OP_PORT => {
            (insn.dir & DIR_SRC != 0 && insn.port_lo <= tuple.sport && tuple.sport <= insn.port_hi)
                || (insn.dir & DIR_DST != 0
                    && insn.port_lo <= tuple.dport
                    && tuple.dport <= insn.port_hi)
        }
        _ => false,
    }
}

/// Whether the first `insn.prefix_len` bits of `addr` equal those of `insn.addr`.
#[expect(clippy::inline_always, reason = "eBPF, as `Filter::matches`")]
#[inline(always)]
fn prefix_matches(addr: &[u8; 16], insn: &FilterInsn) -> bool {
    let mut remaining = u32::from(insn.prefix_len);
    let mut byte = 0;
    while byte < 16 {
        if remaining == 0 {
            return true;
        }
        let mask: u8 = if remaining >= 8 {
            0xff
        } else {
            0xffu8 << (8 - remaining)
        };
        if (addr[byte] ^ insn.addr[byte]) & mask != 0 {
            return false;
        }
        remaining = remaining.saturating_sub(8);
        byte += 1;
    }
    true
}

/// Selectors from command-line flags, checked in the kernel where the information exists
/// there (0 = any).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Selectors {
    /// Network namespace inode (`--netns`).
    pub netns: u32,
    /// Device index (`-i`); only meaningful together with `netns`, or on hosts where
    /// the name resolves to one index in the namespace udptrace runs in.
    pub ifindex: u32,
    /// Thread-group id of the sending/receiving process (`--pid`).
    pub pid: u32,
    pub padding: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] integers and byte arrays; every bit pattern is valid.
    unsafe impl aya::Pod for super::Filter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Selectors {}
}
