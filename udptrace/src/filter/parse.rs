//! Lexer and recursive-descent parser for filter expressions (grammar in `mod.rs`).

use std::net::IpAddr;

use udptrace_common::{
    event::{AF_INET, AF_INET6},
    filter::FILTER_MAX_INSNS,
};

use super::{Dir, Expr, FilterError};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Word,
    Open,
    Close,
    Not,
    And,
    Or,
}

#[derive(Clone, Debug)]
struct Token<'a> {
    kind: Kind,
    text: &'a str,
    position: usize,
}

fn lex(expression: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let bytes = expression.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &expression[at..];
        let single = |kind| Token {
            kind,
            text: &rest[..1],
            position: at,
        };
        match bytes[at] {
            b' ' | b'\t' | b'\n' => {
                at += 1;
                continue;
            }
            b'(' => tokens.push(single(Kind::Open)),
            b')' => tokens.push(single(Kind::Close)),
            b'!' => tokens.push(single(Kind::Not)),
            _ if rest.starts_with("&&") || rest.starts_with("||") => {
                let kind = if rest.starts_with("&&") {
                    Kind::And
                } else {
                    Kind::Or
                };
                tokens.push(Token {
                    kind,
                    text: &rest[..2],
                    position: at,
                });
                at += 2;
                continue;
            }
            _ => {
                let end = rest
                    .find(|c: char| c.is_whitespace() || "()!&|".contains(c))
                    .unwrap_or(rest.len())
                    .max(rest.chars().next().map_or(1, char::len_utf8));
                let text = &rest[..end];
                let kind = match text {
                    "and" => Kind::And,
                    "or" => Kind::Or,
                    "not" => Kind::Not,
                    _ => Kind::Word,
                };
                tokens.push(Token {
                    kind,
                    text,
                    position: at,
                });
                at += end;
                continue;
            }
        }
        at += 1;
    }
    tokens
}

/// The qualifier a bare value after `and`/`or` repeats.
#[derive(Clone, Copy, Debug)]
enum Qualifier {
    Host(Dir),
    Net(Dir),
    Port(Dir),
    PortRange(Dir),
}

struct Parser<'a> {
    expression: &'a str,
    tokens: Vec<Token<'a>>,
    next: usize,
    last_qualifier: Option<Qualifier>,
    /// Terms so far: each becomes one test of the compiled program.
    terms: usize,
}

/// Parses an expression; `Ok(None)` for an empty one.
pub fn parse(expression: &str) -> Result<Option<Expr>, FilterError> {
    let mut parser = Parser {
        expression,
        tokens: lex(expression),
        next: 0,
        last_qualifier: None,
        terms: 0,
    };
    if parser.tokens.is_empty() {
        return Ok(None);
    }
    let expr = parser.expr(0)?;
    if let Some(token) = parser.peek() {
        let token = token.clone();
        return Err(parser.error_at(
            &token,
            if token.kind == Kind::Close {
                "unbalanced ')': no '(' opens it".into()
            } else {
                format!(
                    "expected 'and', 'or' or the end of the expression, found '{}'",
                    token.text
                )
            },
        ));
    }
    Ok(Some(expr))
}

/// Deepest nesting of parentheses and `not` accepted (the stack is the recursion). Together
/// with the limit of FILTER_MAX_INSNS terms, it bounds the depth of the tree, which the
/// compiler, the interpreter and `Drop` walk recursively.
const MAX_DEPTH: usize = 64;

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Token<'a>> {
        self.tokens.get(self.next)
    }

    fn advance(&mut self) -> Option<Token<'a>> {
        let token = self.tokens.get(self.next).cloned();
        self.next += 1;
        token
    }

    fn error_at(&self, token: &Token<'_>, message: String) -> FilterError {
        FilterError {
            expression: self.expression.to_owned(),
            position: token.position,
            length: token.text.len(),
            message,
        }
    }

    /// An error about `part`, a piece of `token`'s text (a number inside a range or a CIDR).
    fn error_in(&self, token: &Token<'_>, part: &str, message: String) -> FilterError {
        let offset = (part.as_ptr() as usize)
            .checked_sub(token.text.as_ptr() as usize)
            .filter(|offset| offset + part.len() <= token.text.len())
            .unwrap_or(0);
        FilterError {
            expression: self.expression.to_owned(),
            position: token.position + offset,
            length: part.len(),
            message,
        }
    }

    /// Counts a term about to become a test; past FILTER_MAX_INSNS, the error points at it.
    fn count_term(&mut self, token: &Token<'_>) -> Result<(), FilterError> {
        self.terms += 1;
        if self.terms > FILTER_MAX_INSNS {
            return Err(self.error_at(
                token,
                format!(
                    "expression too large for the kernel: more than {FILTER_MAX_INSNS} terms \
                     (host, net, port, portrange, udp, ip, ...); simplify it (e.g. use portrange \
                     or net instead of many port/host terms)"
                ),
            ));
        }
        Ok(())
    }

    fn error_at_end(&self, message: String) -> FilterError {
        FilterError {
            expression: self.expression.to_owned(),
            position: self.expression.len(),
            length: 1,
            message,
        }
    }

    /// expr := term (('and' | 'or') term)*, left to right, equal precedence (pcap-filter).
    fn expr(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut left = self.term(depth)?;
        while let Some(token) = self.peek() {
            let kind = token.kind.clone();
            if kind != Kind::And && kind != Kind::Or {
                break;
            }
            self.advance();
            let right = self.term(depth)?;
            left = if kind == Kind::And {
                Expr::And(Box::new(left), Box::new(right))
            } else {
                Expr::Or(Box::new(left), Box::new(right))
            };
        }
        Ok(left)
    }

    /// term := ('not' | '!') term | '(' expr ')' | primitive
    fn term(&mut self, depth: usize) -> Result<Expr, FilterError> {
        if depth > MAX_DEPTH {
            let token = self.peek().cloned();
            return Err(match token {
                Some(token) => self.error_at(&token, format!("nesting deeper than {MAX_DEPTH}")),
                None => self.error_at_end(format!("nesting deeper than {MAX_DEPTH}")),
            });
        }
        let Some(token) = self.advance() else {
            return Err(self.error_at_end("expected a filter term after this".into()));
        };
        match token.kind {
            Kind::Not => Ok(Expr::Not(Box::new(self.term(depth + 1)?))),
            Kind::Open => {
                let inner = self.expr(depth + 1)?;
                match self.advance() {
                    Some(close) if close.kind == Kind::Close => Ok(inner),
                    Some(other) => Err(self.error_at(
                        &other,
                        format!("expected ')' or 'and'/'or', found '{}'", other.text),
                    )),
                    None => Err(self.error_at(&token, "unbalanced '(': no ')' closes it".into())),
                }
            }
            Kind::Close => Err(self.error_at(&token, "unbalanced ')': no '(' opens it".into())),
            Kind::And | Kind::Or => Err(self.error_at(
                &token,
                format!("expected a filter term before '{}'", token.text),
            )),
            Kind::Word => self.primitive(&token),
        }
    }

    fn primitive(&mut self, token: &Token<'a>) -> Result<Expr, FilterError> {
        let protocol = match token.text {
            "udp" => Some(Expr::True),
            "ip" => Some(Expr::Ipv4),
            "ip6" => Some(Expr::Ipv6),
            "icmp" => Some(Expr::Icmp4),
            "icmp6" => Some(Expr::Icmp6),
            _ => None,
        };
        self.count_term(token)?;
        if let Some(protocol) = protocol {
            // `udp port 53`: a protocol word qualifying the primitive that follows.
            let qualified = self.peek().is_some_and(|next| {
                next.kind == Kind::Word
                    && matches!(
                        next.text,
                        "src" | "dst" | "host" | "net" | "port" | "portrange"
                    )
            });
            if qualified {
                let next = self.advance().expect("peeked");
                self.count_term(&next)?;
                let primitive = self.qualified(&next)?;
                return Ok(Expr::And(Box::new(protocol), Box::new(primitive)));
            }
            return Ok(protocol);
        }
        self.qualified(token)
    }

    /// `[src|dst] (host|net|port|portrange) VALUE`, `src|dst VALUE`, or a bare VALUE repeating
    /// the previous qualifier.
    fn qualified(&mut self, token: &Token<'a>) -> Result<Expr, FilterError> {
        let (dir, kind_token) = match token.text {
            "src" | "dst" => {
                let dir = if token.text == "src" {
                    Dir::Src
                } else {
                    Dir::Dst
                };
                match self.peek() {
                    Some(next)
                        if next.kind == Kind::Word
                            && matches!(next.text, "host" | "net" | "port" | "portrange") =>
                    {
                        (dir, self.advance())
                    }
                    // `src 192.0.2.1` is `src host 192.0.2.1`.
                    _ => {
                        let value = self.value_after(token, "an address")?;
                        return self.host(dir, &value);
                    }
                }
            }
            _ => (Dir::Either, Some(token.clone())),
        };
        let kind_token = kind_token.expect("a token");
        let qualifier = match kind_token.text {
            "host" => Qualifier::Host(dir),
            "net" => Qualifier::Net(dir),
            "port" => Qualifier::Port(dir),
            "portrange" => Qualifier::PortRange(dir),
            _ if dir == Dir::Either => {
                // A bare value: repeat the previous qualifier (`port 53 or 123`).
                let Some(previous) = self.last_qualifier else {
                    return Err(self.error_at(
                        &kind_token,
                        format!(
                            "unknown word '{}': expected udp, icmp, icmp6, ip, ip6, host, net, port, \
                             portrange, src, dst, not or '('",
                            kind_token.text
                        ),
                    ));
                };
                return self.with_qualifier(previous, &kind_token);
            }
            _ => {
                return Err(self.error_at(
                    &kind_token,
                    format!(
                        "expected host, net, port or portrange after '{}'",
                        token.text
                    ),
                ));
            }
        };
        let what = match qualifier {
            Qualifier::Host(_) => "an address",
            Qualifier::Net(_) => "a network (e.g. 192.0.2.0/24)",
            Qualifier::Port(_) => "a port number or service name",
            Qualifier::PortRange(_) => "a port range (e.g. 5000-5100)",
        };
        let value = self.value_after(&kind_token, what)?;
        self.with_qualifier(qualifier, &value)
    }

    fn value_after(&mut self, after: &Token<'a>, what: &str) -> Result<Token<'a>, FilterError> {
        match self.advance() {
            Some(value) if value.kind == Kind::Word => Ok(value),
            Some(other) => Err(self.error_at(
                &other,
                format!(
                    "expected {what} after '{}', found '{}'",
                    after.text, other.text
                ),
            )),
            None => Err(self.error_at_end(format!("expected {what} after '{}'", after.text))),
        }
    }

    fn with_qualifier(
        &mut self,
        qualifier: Qualifier,
        value: &Token<'a>,
    ) -> Result<Expr, FilterError> {
        self.last_qualifier = Some(qualifier);
        match qualifier {
            Qualifier::Host(dir) => self.host(dir, value),
            Qualifier::Net(dir) => self.net(dir, value),
            Qualifier::Port(dir) => {
                let port = self.port(value)?;
                Ok(Expr::Port {
                    dir,
                    lo: port,
                    hi: port,
                })
            }
            Qualifier::PortRange(dir) => {
                let Some((lo, hi)) = value.text.split_once('-') else {
                    return Err(self.error_at(
                        value,
                        format!("'{}' is not a range like 5000-5100", value.text),
                    ));
                };
                let (lo, hi) = (self.port_number(value, lo)?, self.port_number(value, hi)?);
                if lo > hi {
                    return Err(
                        self.error_at(value, format!("range start {lo} is after its end {hi}"))
                    );
                }
                Ok(Expr::Port { dir, lo, hi })
            }
        }
    }

    fn address(&self, token: &Token<'_>, text: &str) -> Result<(u8, [u8; 16]), FilterError> {
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => {
                let mut addr = [0; 16];
                addr[..4].copy_from_slice(&v4.octets());
                Ok((AF_INET, addr))
            }
            Ok(IpAddr::V6(v6)) => Ok((AF_INET6, v6.octets())),
            Err(_) => Err(self.error_at(
                token,
                format!("'{text}' is not an IPv4 or IPv6 address (host names are not resolved)"),
            )),
        }
    }

    fn host(&self, dir: Dir, token: &Token<'_>) -> Result<Expr, FilterError> {
        let (family, addr) = self.address(token, token.text)?;
        Ok(Expr::Net {
            dir,
            family,
            addr,
            prefix: if family == AF_INET { 32 } else { 128 },
        })
    }

    fn net(&mut self, dir: Dir, token: &Token<'a>) -> Result<Expr, FilterError> {
        let (address, prefix) = match token.text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (token.text, None),
        };
        let (family, addr) = self.address(token, address)?;
        let max: u8 = if family == AF_INET { 32 } else { 128 };
        let prefix: u8 = match prefix {
            Some(text) => digits(text)
                .filter(|p| *p <= u32::from(max))
                .and_then(|p| u8::try_from(p).ok())
                .ok_or_else(|| {
                    self.error_in(
                        token,
                        text,
                        format!("prefix length '/{text}' must be a number 0-{max}"),
                    )
                })?,
            None if self.peek().is_some_and(|t| t.text == "mask") => {
                self.advance();
                let mask = self.value_after(token, "a netmask")?;
                let (mask_family, bits) = self.address(&mask, mask.text)?;
                let ones: u32 = bits.iter().map(|b| b.count_ones()).sum();
                let contiguous = bits
                    .iter()
                    .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1))
                    .skip(ones as usize)
                    .all(|bit| bit == 0);
                if mask_family != family || !contiguous {
                    return Err(self.error_at(
                        &mask,
                        format!("'{}' is not a contiguous netmask", mask.text),
                    ));
                }
                ones as u8
            }
            // tcpdump takes a bare IPv4 net's prefix from its trailing zero octets; udptrace
            // asks for it instead of guessing.
            None => {
                return Err(self.error_at(
                    token,
                    format!(
                        "'{}' needs a prefix length, e.g. {}/24",
                        token.text, token.text
                    ),
                ));
            }
        };
        let host_bits_set = (usize::from(prefix)..usize::from(max))
            .any(|bit| addr[bit / 8] & (0x80 >> (bit % 8)) != 0);
        if host_bits_set {
            return Err(self.error_at(
                token,
                format!(
                    "'{}' has host bits set beyond /{prefix} (as tcpdump, udptrace refuses it)",
                    token.text
                ),
            ));
        }
        Ok(Expr::Net {
            dir,
            family,
            addr,
            prefix,
        })
    }

    fn port(&self, token: &Token<'_>) -> Result<u16, FilterError> {
        // Service names start with a letter; anything else is meant as a number.
        if !token.text.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return self.port_number(token, token.text);
        }
        service_port(token.text).ok_or_else(|| {
            self.error_at(
                token,
                format!(
                    "'{}' is not a port number or a UDP service in /etc/services",
                    token.text
                ),
            )
        })
    }

    /// `text` (the token or a part of it) as a port: digits only, as everywhere in filters.
    fn port_number(&self, token: &Token<'_>, text: &str) -> Result<u16, FilterError> {
        digits(text)
            .and_then(|port| u16::try_from(port).ok())
            .ok_or_else(|| {
                self.error_in(
                    token,
                    text,
                    format!("port '{text}' must be a number 0-65535"),
                )
            })
    }
}

/// A decimal number written with digits only: `str::parse` also takes a leading `+`, which
/// no number in a filter has (`port +53` is not a port). Saturates far above every limit.
fn digits(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0u32, |value, digit| {
        value
            .saturating_mul(10)
            .saturating_add(u32::from(digit - b'0'))
    }))
}

/// UDP services tcpdump knows without /etc/services (a minimal system may lack the file).
const BUILTIN_SERVICES: &[(&str, u16)] = &[
    ("domain", 53),
    ("bootps", 67),
    ("bootpc", 68),
    ("tftp", 69),
    ("ntp", 123),
    ("snmp", 161),
    ("snmp-trap", 162),
    ("syslog", 514),
    ("mdns", 5353),
];

/// Port of a UDP service name, from /etc/services, else the built-in table.
fn service_port(name: &str) -> Option<u16> {
    std::fs::read_to_string("/etc/services")
        .ok()
        .and_then(|text| services_lookup(&text, name))
        .or_else(|| {
            BUILTIN_SERVICES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, p)| *p)
        })
}

/// Looks `name` (or an alias) up among the `udp` entries of services(5) text.
pub(super) fn services_lookup(text: &str, name: &str) -> Option<u16> {
    text.lines().find_map(|line| {
        let line = line.split('#').next()?;
        let mut words = line.split_whitespace();
        let service = words.next()?;
        let (port, protocol) = words.next()?.split_once('/')?;
        (protocol == "udp" && (service == name || words.any(|alias| alias == name)))
            .then(|| port.parse().ok())
            .flatten()
    })
}
