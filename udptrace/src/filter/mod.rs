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
//! (src) and connected peer (dst).
//!
//! Expressions whose program exceeds [`FILTER_MAX_INSNS`] instructions are rejected with an
//! error rather than filtered partly in userspace: the kernel must see the whole filter so that
//! unwanted traffic never costs ring-buffer space.

mod parse;

use std::fmt;

use udptrace_common::{
    event::{AF_INET, AF_INET6, Tuple},
    filter::{
        DIR_DST, DIR_EITHER, DIR_SRC, FILTER_MAX_INSNS, Filter, FilterInsn, OP_AND, OP_ICMP4,
        OP_ICMP6, OP_IPV4, OP_IPV6, OP_NET, OP_NOT, OP_OR, OP_PORT, OP_TRUE,
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
                let within = |port: u16| (*lo..=*hi).contains(&port);
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

    fn emit(&self, program: &mut Vec<FilterInsn>) {
        let leaf = |op: u8| FilterInsn {
            op,
            ..FilterInsn::default()
        };
        match self {
            Self::True => program.push(leaf(OP_TRUE)),
            Self::Ipv4 => program.push(leaf(OP_IPV4)),
            Self::Ipv6 => program.push(leaf(OP_IPV6)),
            Self::Icmp4 => program.push(leaf(OP_ICMP4)),
            Self::Icmp6 => program.push(leaf(OP_ICMP6)),
            Self::Net {
                dir,
                family,
                addr,
                prefix,
            } => program.push(FilterInsn {
                op: OP_NET,
                dir: dir.code(),
                family: *family,
                prefix_len: *prefix,
                addr: *addr,
                ..FilterInsn::default()
            }),
            Self::Port { dir, lo, hi } => program.push(FilterInsn {
                op: OP_PORT,
                dir: dir.code(),
                port_lo: *lo,
                port_hi: *hi,
                ..FilterInsn::default()
            }),
            Self::Not(inner) => {
                inner.emit(program);
                program.push(leaf(OP_NOT));
            }
            Self::And(a, b) => {
                a.emit(program);
                b.emit(program);
                program.push(leaf(OP_AND));
            }
            Self::Or(a, b) => {
                a.emit(program);
                b.emit(program);
                program.push(leaf(OP_OR));
            }
        }
    }
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

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let column = self.expression[..self.position.min(self.expression.len())]
            .chars()
            .count();
        writeln!(f, "invalid filter: {}", self.message)?;
        writeln!(f, "  {}", self.expression)?;
        write!(
            f,
            "  {}{}",
            " ".repeat(column),
            "^".repeat(self.length.max(1))
        )
    }
}

impl std::error::Error for FilterError {}

/// A filter ready for the kernel.
#[derive(Clone, Debug)]
pub struct CompiledFilter {
    /// The expression as the user gave it (words joined by spaces).
    pub expression: String,
    /// `None` for the empty expression (everything matches).
    pub ast: Option<Expr>,
    pub program: Filter,
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
    let mut program = Filter::MATCH_ALL;
    if let Some(ast) = &ast {
        let mut insns = Vec::new();
        ast.emit(&mut insns);
        if insns.len() > FILTER_MAX_INSNS {
            return Err(FilterError {
                position: 0,
                length: expression.len(),
                message: format!(
                    "expression too large for the kernel: {} instructions, at most {FILTER_MAX_INSNS}; \
                     simplify it (e.g. use portrange or net instead of many port/host terms)",
                    insns.len()
                ),
                expression,
            });
        }
        program.len = insns.len() as u32;
        program.insns[..insns.len()].copy_from_slice(&insns);
    }
    Ok(CompiledFilter {
        expression,
        ast,
        program,
    })
}

#[cfg(test)]
mod tests;
