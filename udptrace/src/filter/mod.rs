//! tcpdump-style filter expressions: parsed here into an [`Expr`], compiled into the postfix
//! [`Filter`] program that every kernel hook evaluates before it writes anything.
//!
//! Language (a subset of pcap-filter(7)): `udp`, `icmp`, `icmp6`, `ip`, `ip6`; `[src|dst]
//! host ADDR`; `[src|dst] net CIDR` or `net ADDR mask MASK`; `[src|dst] port PORT|SERVICE`;
//! `[src|dst] portrange A-B`; `and`/`&&`, `or`/`||`, `not`/`!`, parentheses. As in pcap-filter,
//! `and` and `or` have the same precedence and group left to right (`a or b and c` is
//! `(a or b) and c`), `not` binds tightest, and a bare value after `and`/`or` repeats the
//! previous qualifier (`port 53 or 123`). A protocol word followed by a qualifier means both
//! (`udp port 53`).
//!
//! Semantics for UDP events: every event concerns a UDP datagram, so `udp` is always true;
//! `icmp`/`icmp6` select ICMP errors about IPv4/IPv6 datagrams, whose addresses and ports are
//! the quoted datagram's (so `port 4000` also shows the port-unreachable about port 4000);
//! `ip`/`ip6` select the datagram's family; `host`/`net`/`port` without `src`/`dst` match either
//! side. A drop matches on the dropped datagram; a socket event on the socket's local address
//! (src) and connected peer (dst). Port 0 is no port (a fragment without a UDP header, as
//! libpcap sees fragments; an unconnected socket's peer): no `port`/`portrange` term holds on
//! it. On packets, the matches are libpcap's (integration test `pcap_differential`), ICMP
//! errors aside.
//!
//! The compiled program has one test per term (`udp`, `ip`, `host`, `net`, `port`,
//! `portrange`, ...; `and`, `or` and `not` cost nothing: they are jumps). Expressions of more than
//! [`FILTER_MAX_INSNS`] (256) terms are rejected with an error, pointing at the first term too
//! many, rather than filtered partly in userspace: the kernel must see the whole filter so that
//! unwanted traffic never costs ring-buffer space.

mod parse;

use std::fmt;

use udptrace_common::{
    event::{AF_INET, AF_INET6, Tuple},
    filter::{
        DIR_DST, DIR_EITHER, DIR_SRC, FILTER_MAX_INSNS, Filter, FilterInsn, OP_ICMP4, OP_ICMP6,
        OP_IPV4, OP_IPV6, OP_NET, OP_PORT, OP_TRUE, TARGET_MATCH, TARGET_MISS,
    },
};

pub use parse::parse;

/// Which side of the datagram a qualifier looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Src,
    Dst,
    Either,
}

impl Dir {
    const fn code(self) -> u8 {
        match self {
            Self::Src => DIR_SRC,
            Self::Dst => DIR_DST,
            Self::Either => DIR_EITHER,
        }
    }

    const fn prefix(self) -> &'static str {
        match self {
            Self::Src => "src ",
            Self::Dst => "dst ",
            Self::Either => "",
        }
    }
}

/// A parsed filter expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `udp`: every event.
    True,
    Ipv4,
    Ipv6,
    Icmp4,
    Icmp6,
    /// `host`/`net`: `addr` (IPv4 in the first 4 bytes) with `prefix` significant bits.
    Net {
        dir: Dir,
        family: u8,
        addr: [u8; 16],
        prefix: u8,
    },
    Port {
        dir: Dir,
        lo: u16,
        hi: u16,
    },
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

impl Expr {
    /// The reference interpreter, independent of the compiled form (property tests compare
    /// the two).
    pub fn matches(&self, tuple: &Tuple, icmp_error: bool) -> bool {
        match self {
            Self::True => true,
            Self::Ipv4 => tuple.family == AF_INET,
            Self::Ipv6 => tuple.family == AF_INET6,
            Self::Icmp4 => icmp_error && tuple.family == AF_INET,
            Self::Icmp6 => icmp_error && tuple.family == AF_INET6,
            Self::Net {
                dir,
                family,
                addr,
                prefix,
            } => {
                let within = |candidate: &[u8; 16]| {
                    let bits = usize::from(*prefix);
                    (0..bits).all(|bit| {
                        let mask = 0x80u8 >> (bit % 8);
                        candidate[bit / 8] & mask == addr[bit / 8] & mask
                    })
                };
                tuple.family == *family
                    && match dir {
                        Dir::Src => within(&tuple.saddr),
                        Dir::Dst => within(&tuple.daddr),
                        Dir::Either => within(&tuple.saddr) || within(&tuple.daddr),
                    }
            }
            Self::Port { dir, lo, hi } => {
                // Port 0 is no port (see `udptrace_common::filter`).
                let within = |port: u16| port != 0 && (*lo..=*hi).contains(&port);
                match dir {
                    Dir::Src => within(tuple.sport),
                    Dir::Dst => within(tuple.dport),
                    Dir::Either => within(tuple.sport) || within(tuple.dport),
                }
            }
            Self::Not(inner) => !inner.matches(tuple, icmp_error),
            Self::And(a, b) => a.matches(tuple, icmp_error) && b.matches(tuple, icmp_error),
            Self::Or(a, b) => a.matches(tuple, icmp_error) || b.matches(tuple, icmp_error),
        }
    }

    /// How many tests the compiled program spends on this expression: one per leaf (`and`,
    /// `or` and `not` are jumps).
    fn tests(&self) -> usize {
        match self {
            Self::Not(inner) => inner.tests(),
            Self::And(a, b) | Self::Or(a, b) => a.tests() + b.tests(),
            _ => 1,
        }
    }

    /// Appends this expression's tests to `program`, continuing at `on_match` when it holds
    /// and at `on_miss` when not. Every jump goes forward: the right side of `and`/`or` starts
    /// right after the left side's tests, and the targets given are beyond both.
    fn emit(&self, program: &mut Vec<FilterInsn>, on_match: u16, on_miss: u16) {
        let test = |op: u8| FilterInsn {
            op,
            on_match,
            on_miss,
            ..FilterInsn::default()
        };
        // Within FILTER_MAX_INSNS (the parser refuses more tests), far below the targets.
        let after = |left: &Self| (program.len() + left.tests()) as u16;
        match self {
            Self::True => program.push(test(OP_TRUE)),
            Self::Ipv4 => program.push(test(OP_IPV4)),
            Self::Ipv6 => program.push(test(OP_IPV6)),
            Self::Icmp4 => program.push(test(OP_ICMP4)),
            Self::Icmp6 => program.push(test(OP_ICMP6)),
            Self::Net {
                dir,
                family,
                addr,
                prefix,
            } => {
                let mut mask = [0u8; 16];
                for bit in 0..usize::from(*prefix) {
                    mask[bit / 8] |= 0x80 >> (bit % 8);
                }
                program.push(FilterInsn {
                    dir: dir.code(),
                    family: *family,
                    addr: words(addr),
                    mask: words(&mask),
                    ..test(OP_NET)
                });
            }
            Self::Port { dir, lo, hi } => program.push(FilterInsn {
                dir: dir.code(),
                port_lo: *lo,
                port_hi: *hi,
                ..test(OP_PORT)
            }),
            Self::Not(inner) => inner.emit(program, on_miss, on_match),
            Self::And(a, b) => {
                let right = after(a);
                a.emit(program, right, on_miss);
                b.emit(program, on_match, on_miss);
            }
            Self::Or(a, b) => {
                let right = after(a);
                a.emit(program, on_match, right);
                b.emit(program, on_match, on_miss);
            }
        }
    }
}

/// A 16-byte address as the two native-endian words the kernel compares (`filter::within`).
fn words(bytes: &[u8; 16]) -> [u64; 2] {
    let (high, low) = bytes.split_at(8);
    [
        u64::from_ne_bytes(high.try_into().expect("8 bytes")),
        u64::from_ne_bytes(low.try_into().expect("8 bytes")),
    ]
}

/// Prints an expression that parses back to the same tree (fully parenthesized).
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::True => f.write_str("udp"),
            Self::Ipv4 => f.write_str("ip"),
            Self::Ipv6 => f.write_str("ip6"),
            Self::Icmp4 => f.write_str("icmp"),
            Self::Icmp6 => f.write_str("icmp6"),
            Self::Net {
                dir,
                family,
                addr,
                prefix,
            } => {
                let ip: std::net::IpAddr = if *family == AF_INET {
                    std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).into()
                } else {
                    std::net::Ipv6Addr::from(*addr).into()
                };
                write!(f, "{}net {ip}/{prefix}", dir.prefix())
            }
            Self::Port { dir, lo, hi } if lo == hi => write!(f, "{}port {lo}", dir.prefix()),
            Self::Port { dir, lo, hi } => write!(f, "{}portrange {lo}-{hi}", dir.prefix()),
            Self::Not(inner) => write!(f, "not ({inner})"),
            Self::And(a, b) => write!(f, "({a}) and ({b})"),
            Self::Or(a, b) => write!(f, "({a}) or ({b})"),
        }
    }
}

/// A bad expression: what was expected, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError {
    pub expression: String,
    /// Byte offset of the offending token in `expression`.
    pub position: usize,
    /// Its length (at least 1 for the caret).
    pub length: usize,
    pub message: String,
}

/// Control characters (C0, DEL and C1, all below U+0100) written as `\xNN`, and `\` as `\\`:
/// an expression is echoed in errors, and an escape sequence in it must not reach the terminal
/// raw.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            c if c.is_control() => escaped.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Characters of the expression shown before and after the offending token: an expression of
/// thousands of terms is not echoed whole.
const CONTEXT_BEFORE: usize = 60;
const CONTEXT_AFTER: usize = 30;

impl fmt::Display for FilterError {
    /// The message, the expression around the offending token, and a caret under the token,
    /// all escaped; the caret is placed and sized in escaped characters so that it stays under
    /// the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let start = floor_char_boundary(&self.expression, self.position);
        let end = floor_char_boundary(&self.expression, start + self.length);
        let before: Vec<char> = escape(&self.expression[..start]).chars().collect();
        let token = escape(&self.expression[start..end]);
        let after: Vec<char> = escape(&self.expression[end..]).chars().collect();
        let mut shown: String = if before.len() > CONTEXT_BEFORE {
            std::iter::once('…')
                .chain(before[before.len() - CONTEXT_BEFORE..].iter().copied())
                .collect()
        } else {
            before.iter().collect()
        };
        let column = shown.chars().count();
        shown.push_str(&token);
        shown.extend(after.iter().take(CONTEXT_AFTER));
        if after.len() > CONTEXT_AFTER {
            shown.push('…');
        }
        writeln!(f, "invalid filter: {}", escape(&self.message))?;
        writeln!(f, "  {shown}")?;
        write!(
            f,
            "  {}{}",
            " ".repeat(column),
            "^".repeat(token.chars().count().max(1))
        )
    }
}

/// The largest char boundary of `text` at or before `at` (`str::floor_char_boundary` is
/// unstable).
fn floor_char_boundary(text: &str, at: usize) -> usize {
    (0..=at.min(text.len()))
        .rev()
        .find(|&index| text.is_char_boundary(index))
        .unwrap_or(0)
}

impl std::error::Error for FilterError {}

/// A filter ready for the kernel.
#[derive(Clone, Debug)]
pub struct CompiledFilter {
    /// The expression as the user gave it (words joined by spaces).
    pub expression: String,
    /// `None` for the empty expression (everything matches).
    pub ast: Option<Expr>,
    /// Boxed: at 6 KiB, it would bloat every future that holds a tracer.
    pub program: Box<Filter>,
}

impl CompiledFilter {
    /// Evaluates the compiled program (what the kernel runs).
    pub fn matches(&self, tuple: &Tuple, icmp_error: bool) -> bool {
        self.program.matches(tuple, icmp_error)
    }
}

/// Parses and compiles the filter words given on the command line.
pub fn compile(args: &[String]) -> Result<CompiledFilter, FilterError> {
    let expression = args.join(" ");
    let ast = parse(&expression)?;
    let mut program = Box::new(Filter::MATCH_ALL);
    if let Some(ast) = &ast {
        let mut insns = Vec::with_capacity(ast.tests());
        ast.emit(&mut insns, TARGET_MATCH, TARGET_MISS);
        // The parser refuses expressions of more than FILTER_MAX_INSNS tests, so every test fits.
        for (slot, insn) in program.insns.iter_mut().zip(&insns) {
            *slot = *insn;
        }
        program.len = insns.len() as u32;
    }
    Ok(CompiledFilter {
        expression,
        ast,
        program,
    })
}

/// The costliest accepted expression known, which the benchmark and the tests load to measure
/// the size limit: [`FILTER_MAX_INSNS`] terms in `(net ... or not port ...)` pairs joined by
/// `and`, the shape the verifier took longest on (each test is reached from two others), and
/// the kernel runs every one of its tests on an IPv4 datagram, which it then does not match
/// unless the datagram is from or to port 9 (and none of ports 1000-1062).
pub fn costliest_expression() -> String {
    let pairs = FILTER_MAX_INSNS / 2;
    (0..pairs)
        .map(|i| {
            if i + 1 < pairs {
                format!("(net 2001:db8:{i:x}::/48 or not port {})", 1000 + i)
            } else {
                "(net 2001:db8:ffff::/48 or port 9)".to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

#[cfg(test)]
mod tests;
