//! The compiled form of a filter expression and its evaluator.
//!
//! Userspace (`udptrace/src/filter/`) parses a tcpdump-style expression and compiles it into a
//! program of at most [`FILTER_MAX_INSNS`] tests (one per `host`/`net`/`port`/... term). Each
//! test names the test to run next when it holds and when it does not, or the final answer:
//! `and`, `or` and `not` become jumps, as in a classic BPF filter, so the program is a DAG of
//! tests evaluated with short-circuit. The same [`Filter::matches`] runs inside every eBPF
//! program before anything is reserved in the ring buffer, and in userspace tests, so the
//! kernel and the host cannot disagree.
//!
//! The shape is chosen for the kernel's verifier. The program lives in frozen `.rodata`, so
//! the verifier knows every test and walks only the code of that test. The only state carried
//! from one test to the next is the index of the next test (no boolean stack): every path that
//! reaches test `i` has the same state, so the verifier prunes all but the first (`states_equal`
//! in kernel/bpf/verifier.c) and verification grows linearly with the program. The former
//! postfix program with a stack of results carried a different known stack value on each path
//! (the verifier tracks constants exactly and had to, since the final `stack & 1` decided a
//! branch): 32 `net X/24` terms joined by `or` took 100 s to verify on Linux 6.18.
//!
//! Constraints of running in eBPF shape the rest: no recursion, a loop that provably ends (jumps
//! only go forward, checked here too), a small stack, and instructions read with
//! `read_volatile` so that the compiler cannot constant-fold the all-zero placeholder that the
//! loader overwrites.

use core::{mem::offset_of, ptr::read_volatile};

use crate::event::{AF_INET, AF_INET6, Tuple};

/// Most tests in one program (one per term of the expression); longer expressions are
/// rejected by the parser. Verification grows linearly with it: on Linux 6.18 the eleven
/// programs of a run take about 25k instructions to verify with one test, and 165k-280k with
/// 128 depending on the shape (`udptrace::filter::costliest_expression` is the costliest
/// measured), which makes udptrace ready about 0.3 s later; the integration tests hold it under
/// a second. The hot path grows with it too: a datagram matched against all 128 tests costs a
/// few ns per test at each hook (bench/results.md, costliest filter row).
pub const FILTER_MAX_INSNS: usize = 128;

/// Matches every event (`udp`).
pub const OP_TRUE: u8 = 0;
/// An event about an IPv4 datagram (`ip`).
pub const OP_IPV4: u8 = 1;
/// An event about an IPv6 datagram (`ip6`).
pub const OP_IPV6: u8 = 2;
/// An ICMPv4 error about a datagram (`icmp`).
pub const OP_ICMP4: u8 = 3;
/// An ICMPv6 error about a datagram (`icmp6`).
pub const OP_ICMP6: u8 = 4;
/// Address within `addr/mask` of `family`, on the side(s) given by `dir`.
pub const OP_NET: u8 = 5;
/// Port within `port_lo..=port_hi` on the side(s) given by `dir`.
pub const OP_PORT: u8 = 6;

/// `dir` of [`OP_NET`] and [`OP_PORT`]: source side.
pub const DIR_SRC: u8 = 1;
/// Destination side.
pub const DIR_DST: u8 = 2;
/// Either side (`host`, `port` without `src`/`dst`).
pub const DIR_EITHER: u8 = 3;

/// A jump target: the whole filter matches.
pub const TARGET_MATCH: u16 = u16::MAX;
/// A jump target: the whole filter does not match.
pub const TARGET_MISS: u16 = u16::MAX - 1;

/// One test. Fields not used by an op are zero.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FilterInsn {
    pub op: u8,
    pub dir: u8,
    /// [`AF_INET`] or [`AF_INET6`] for [`OP_NET`].
    pub family: u8,
    pub padding: u8,
    pub port_lo: u16,
    pub port_hi: u16,
    /// Index of the next test when this one holds, or [`TARGET_MATCH`]/[`TARGET_MISS`].
    pub on_match: u16,
    /// Same when it does not hold.
    pub on_miss: u16,
    pub padding2: u32,
    /// [`OP_NET`]: the network address and its netmask, as the words of a [`Tuple`] address
    /// (an IPv4 address fills the first 4 bytes), so a test is two masked word compares.
    pub addr: [u64; 2],
    pub mask: [u64; 2],
}

/// A compiled filter: `insns[..len]`, entered at `insns[0]`.
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
            padding: 0,
            port_lo: 0,
            port_hi: 0,
            on_match: 0,
            on_miss: 0,
            padding2: 0,
            addr: [0; 2],
            mask: [0; 2],
        }; FILTER_MAX_INSNS],
    };

    /// Evaluates the program on an event about the datagram `tuple`; `icmp_error` is set when
    /// the event is an ICMP error quoting that datagram. A malformed program (a jump backwards
    /// or past the end) does not match.
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
        let mut index = 0;
        // Ends: `index` grows at every step and stays below FILTER_MAX_INSNS.
        while index < FILTER_MAX_INSNS && index < len {
            // SAFETY: index < FILTER_MAX_INSNS.
            let insn = unsafe { self.insns.as_ptr().add(index) };
            // The one branch of a test: the verifier walks two paths per test.
            let next = if insn_holds(insn, tuple, icmp_error) != 0 {
                // SAFETY: as above; fields are read one by one where needed.
                unsafe { read_volatile(&raw const (*insn).on_match) }
            } else {
                // SAFETY: as above.
                unsafe { read_volatile(&raw const (*insn).on_miss) }
            };
            match next {
                TARGET_MATCH => return true,
                TARGET_MISS => return false,
                _ if usize::from(next) <= index => return false,
                _ => index = usize::from(next),
            }
        }
        false
    }
}

/// 1 when the test at `insn` (a valid pointer into a [`Filter`]) holds, else 0.
///
/// Computed without a branch: a comparison in BPF is a jump, and each jump on the datagram's
/// unknown fields doubles the paths the verifier walks through the test (a port test with
/// `&&`/`||` had five); with 0/1 arithmetic it walks the test once. `op`, `dir` and `family`
/// are constants to the verifier (frozen `.rodata`), so matching on them costs no path.
#[expect(clippy::inline_always, reason = "eBPF, as `Filter::matches`")]
#[inline(always)]
fn insn_holds(insn: *const FilterInsn, tuple: &Tuple, icmp_error: bool) -> u64 {
    // SAFETY (every block below): `insn` points into a `Filter`; volatile, field by field, as
    // in `Filter::matches`.
    let op = unsafe { read_volatile(&raw const (*insn).op) };
    let family = u64::from(tuple.family);
    let error = u64::from(icmp_error);
    match op {
        OP_TRUE => 1,
        OP_IPV4 => is_zero(family ^ u64::from(AF_INET)),
        OP_IPV6 => is_zero(family ^ u64::from(AF_INET6)),
        OP_ICMP4 => error & is_zero(family ^ u64::from(AF_INET)),
        OP_ICMP6 => error & is_zero(family ^ u64::from(AF_INET6)),
        OP_NET => {
            let (dir, wanted) = unsafe {
                (
                    read_volatile(&raw const (*insn).dir),
                    read_volatile(&raw const (*insn).family),
                )
            };
            let other_family = family ^ u64::from(wanted);
            let (src, dst) = sides(dir);
            (src & is_zero(other_family | outside(tuple, offset_of!(Tuple, saddr), insn)))
                | (dst & is_zero(other_family | outside(tuple, offset_of!(Tuple, daddr), insn)))
        }
        OP_PORT => {
            let (dir, lo, hi) = unsafe {
                (
                    read_volatile(&raw const (*insn).dir),
                    read_volatile(&raw const (*insn).port_lo),
                    read_volatile(&raw const (*insn).port_hi),
                )
            };
            // `lo <= port <= hi` as one unsigned comparison: below `lo`, the difference wraps
            // above `hi - lo`. Port 0 is no port (a fragment without a UDP header, a socket
            // without a peer): no port test holds on it, as in libpcap, whose `port` needs a
            // header to read (gencode.c `gen_port_common`).
            let width = u64::from(hi.wrapping_sub(lo));
            let (src, dst) = sides(dir);
            let within = |port: u16| {
                at_most(u64::from(port.wrapping_sub(lo)), width) & (is_zero(u64::from(port)) ^ 1)
            };
            (src & within(tuple.sport)) | (dst & within(tuple.dport))
        }
        _ => 0,
    }
}

/// Whether a test looks at the source and at the destination side, as 0/1.
#[expect(clippy::inline_always, reason = "eBPF, as `Filter::matches`")]
#[inline(always)]
fn sides(dir: u8) -> (u64, u64) {
    (u64::from(dir & DIR_SRC != 0), u64::from(dir & DIR_DST != 0))
}

/// The bits by which the address at byte `offset` of `tuple` (`saddr` or `daddr`) falls
/// outside the network of the test at `insn`: 0 when within.
#[expect(clippy::inline_always, reason = "eBPF, as `Filter::matches`")]
#[inline(always)]
fn outside(tuple: &Tuple, offset: usize, insn: *const FilterInsn) -> u64 {
    let words = core::ptr::from_ref(tuple).cast::<u64>();
    // SAFETY: `Tuple` is 8-aligned and its addresses are two words each at 8-aligned offsets
    // (8 and 24); `insn` points into a `Filter`.
    unsafe {
        let address = words.add(offset / 8);
        let (high, low) = (read_volatile(address), read_volatile(address.add(1)));
        let net = &raw const (*insn).addr;
        let mask = &raw const (*insn).mask;
        ((high ^ read_volatile(&raw const (*net)[0])) & read_volatile(&raw const (*mask)[0]))
            | ((low ^ read_volatile(&raw const (*net)[1])) & read_volatile(&raw const (*mask)[1]))
    }
}

/// 1 when `value` is 0, else 0, without a branch: the top bit of `value | -value` is set for
/// every value but 0.
#[expect(clippy::inline_always, reason = "eBPF, as `Filter::matches`")]
#[inline(always)]
fn is_zero(value: u64) -> u64 {
    opaque(opaque(value | value.wrapping_neg()) >> 63) ^ 1
}

/// 1 when `value <= limit` (both below 2^63), else 0, without a branch: `limit - value` wraps
/// to a number with the top bit set exactly when `value` is larger.
#[expect(clippy::inline_always, reason = "eBPF, as `Filter::matches`")]
#[inline(always)]
fn at_most(value: u64, limit: u64) -> u64 {
    opaque(opaque(limit.wrapping_sub(value)) >> 63) ^ 1
}

/// `value`, through a volatile read, so that the compiler cannot turn the bit arithmetic on it
/// back into a comparison, which BPF encodes as a jump: hidden are both the operand of the sign
/// shift (else `(x | -x) >> 63` is `x != 0`) and its result (else `(x >> 63) ^ 1` is `x >= 0`).
#[expect(clippy::inline_always, reason = "eBPF, as `Filter::matches`")]
#[inline(always)]
fn opaque(value: u64) -> u64 {
    // SAFETY: a read of a local.
    unsafe { read_volatile(&raw const value) }
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
    /// 1 with `--container`/`--pod`: only events in a network namespace that is a key of
    /// [`crate::names::SELECTED_NETNS_MAP`]. A map, not a constant like `netns`: a container
    /// that restarts gets a new namespace, which userspace adds while the programs run.
    pub netns_set: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] integers and byte arrays; every bit pattern is valid.
    unsafe impl aya::Pod for super::Filter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Selectors {}
}
