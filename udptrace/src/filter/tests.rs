use proptest::prelude::*;
use udptrace_common::event::{AF_INET, AF_INET6, IPPROTO_UDP, Tuple};

use super::{parse::services_lookup, *};

fn words(expression: &str) -> Vec<String> {
    expression.split_whitespace().map(str::to_owned).collect()
}

fn v4(a: [u8; 4], sport: u16, b: [u8; 4], dport: u16) -> Tuple {
    let mut tuple = Tuple {
        family: AF_INET,
        proto: IPPROTO_UDP,
        sport,
        dport,
        ..Tuple::default()
    };
    tuple.saddr[..4].copy_from_slice(&a);
    tuple.daddr[..4].copy_from_slice(&b);
    tuple
}

fn v6(a: &str, sport: u16, b: &str, dport: u16) -> Tuple {
    Tuple {
        family: AF_INET6,
        proto: IPPROTO_UDP,
        sport,
        dport,
        saddr: a.parse::<std::net::Ipv6Addr>().unwrap().octets(),
        daddr: b.parse::<std::net::Ipv6Addr>().unwrap().octets(),
        ..Tuple::default()
    }
}

fn check(expression: &str, tuple: &Tuple, icmp: bool) -> bool {
    let compiled = compile(&words(expression)).unwrap();
    let interpreted = compiled
        .ast
        .as_ref()
        .is_none_or(|ast| ast.matches(tuple, icmp));
    assert_eq!(compiled.matches(tuple, icmp), interpreted, "{expression}");
    interpreted
}

fn error(expression: &str) -> FilterError {
    compile(&words(expression)).unwrap_err()
}

const A: [u8; 4] = [192, 0, 2, 1];
const B: [u8; 4] = [198, 51, 100, 7];

#[test]
fn empty_matches_everything() {
    let compiled = compile(&[]).unwrap();
    assert_eq!(compiled.program.len, 0);
    assert!(compiled.matches(&v4(A, 1, B, 2), false));
}

#[test]
fn ports_match_either_side_unless_qualified() {
    let t = v4(A, 40_000, B, 4_000);
    assert!(check("port 4000", &t, false));
    assert!(check("port 40000", &t, false));
    assert!(check("dst port 4000", &t, false));
    assert!(!check("src port 4000", &t, false));
    assert!(check("portrange 3990-4010", &t, false));
    assert!(!check("src portrange 3990-4010", &t, false));
    assert!(check("udp port 4000", &t, false));
}

#[test]
fn hosts_and_nets() {
    let t = v4(A, 1, B, 2);
    assert!(check("host 192.0.2.1", &t, false));
    assert!(check("src host 192.0.2.1", &t, false));
    assert!(check("src 192.0.2.1", &t, false));
    assert!(!check("dst host 192.0.2.1", &t, false));
    assert!(check("net 198.51.100.0/24", &t, false));
    assert!(check("dst net 198.51.100.0 mask 255.255.255.0", &t, false));
    assert!(!check("net 203.0.113.0/24", &t, false));
    assert!(!check("host 2001:db8::1", &t, false), "family must match");
    let t6 = v6("2001:db8::1", 1, "2001:db8:1::2", 53);
    assert!(check("net 2001:db8::/32", &t6, false));
    assert!(check("ip6 and dst port domain", &t6, false));
    assert!(!check("ip", &t6, false));
}

#[test]
fn icmp_selects_errors_about_the_family() {
    let t = v4(A, 40_000, B, 4_000);
    assert!(check("icmp and port 4000", &t, true));
    assert!(!check("icmp", &t, false));
    assert!(!check("icmp6", &t, true));
    assert!(check("udp", &t, true), "udp is true for every event");
}

#[test]
fn and_or_have_equal_precedence_left_to_right() {
    // pcap-filter: `a or b and c` is `(a or b) and c`.
    let t = v4(A, 53, B, 9);
    assert!(!check("port 53 or port 1 and port 2", &t, false));
    assert!(check("port 53 or (port 1 and port 2)", &t, false));
    assert!(check("not port 1 and port 53", &t, false));
    assert!(check("! port 1 && port 53 || port 7", &t, false));
}

#[test]
fn bare_values_repeat_the_qualifier() {
    let t = v4(A, 1, B, 123);
    assert!(check("port 53 or 123", &t, false));
    assert!(check("dst port 53 or 123", &t, false));
    assert!(!check("src port 53 or 123", &t, false));
    assert!(check("host 203.0.113.1 or 198.51.100.7", &t, false));
    assert_eq!(
        compile(&words("port 53 or 123")).unwrap().ast,
        compile(&words("port 53 or port 123")).unwrap().ast
    );
}

#[test]
fn services() {
    assert_eq!(
        compile(&words("port domain")).unwrap().ast,
        compile(&words("port 53")).unwrap().ast
    );
    let text = "domain\t53/tcp\ndomain\t53/udp\t\t# DNS\nntp 123/udp ntpd\n";
    assert_eq!(services_lookup(text, "domain"), Some(53));
    assert_eq!(services_lookup(text, "ntpd"), Some(123));
    assert_eq!(services_lookup(text, "http"), None);
}

#[test]
fn errors_point_at_the_offending_token() {
    let e = error("port 99999");
    assert_eq!((e.position, e.length), (5, 5));
    assert!(e.message.contains("0-65535"), "{}", e.message);
    assert_eq!(
        e.to_string(),
        "invalid filter: port '99999' must be a number 0-65535\n  port 99999\n       ^^^^^"
    );

    let e = error("udp and host 300.1.1.1");
    assert_eq!(e.position, 13);
    assert!(e.message.contains("not an IPv4 or IPv6 address"));

    let e = error("portrange 9-1");
    assert_eq!(e.position, 10);
    assert!(e.message.contains("after its end"));

    let e = error("port");
    assert_eq!(e.position, 4, "caret after the end");
    assert!(
        e.message
            .contains("expected a port number or service name after 'port'")
    );

    let e = error("( port 1");
    assert_eq!(e.position, 0);
    assert!(e.message.contains("unbalanced '('"));

    let e = error("port 1 )");
    assert_eq!(e.position, 7);
    assert!(e.message.contains("unbalanced ')'"));

    let e = error("porr 53");
    assert_eq!((e.position, e.length), (0, 4));
    assert!(e.message.contains("unknown word 'porr'"));

    assert!(error("net 192.0.2.0/33").message.contains("0-32"));
    assert!(error("net 192.0.2.1/24").message.contains("host bits"));
    assert!(error("port 53 53").message.contains("expected 'and', 'or'"));
    assert!(
        error("port 53 and")
            .message
            .contains("expected a filter term")
    );
    assert!(
        error("port nosuchservice")
            .message
            .contains("/etc/services")
    );
    assert!(error("src port").message.contains("after 'port'"));
    assert!(error("dst foo 1").message.contains("not an IPv4"));
}

#[test]
fn oversized_expressions_are_rejected() {
    let long = (0..40)
        .map(|p| format!("port {p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let e = compile(&words(&long)).unwrap_err();
    assert!(
        e.message.contains("too large for the kernel"),
        "{}",
        e.message
    );
    let fits = (0..30)
        .map(|p| format!("port {p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    assert!(compile(&words(&fits)).is_ok());
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!("{}port 1{}", "( ".repeat(200), " )".repeat(200));
    assert!(error(&deep).message.contains("nesting"));
    let nots = format!("{}port 1", "not ".repeat(200));
    assert!(error(&nots).message.contains("nesting"));
}

fn leaf() -> impl Strategy<Value = Expr> {
    let dir = prop_oneof![Just(Dir::Src), Just(Dir::Dst), Just(Dir::Either)];
    prop_oneof![
        Just(Expr::True),
        Just(Expr::Ipv4),
        Just(Expr::Ipv6),
        Just(Expr::Icmp4),
        Just(Expr::Icmp6),
        (dir.clone(), 0u16..6, 0u16..4).prop_map(|(dir, lo, width)| Expr::Port {
            dir,
            lo: PORTS[lo as usize],
            hi: PORTS[lo as usize] + width,
        }),
        (dir, 0usize..ADDRESSES.len(), 0u8..=128).prop_map(|(dir, index, prefix)| {
            let (family, addr) = ADDRESSES[index];
            let max = if family == AF_INET { 32 } else { 128 };
            let prefix = prefix.min(max);
            let mut masked = addr;
            for bit in usize::from(prefix)..usize::from(max) {
                masked[bit / 8] &= !(0x80 >> (bit % 8));
            }
            Expr::Net {
                dir,
                family,
                addr: masked,
                prefix,
            }
        }),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(4, 20, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Expr::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| Expr::Or(Box::new(a), Box::new(b))),
        ]
    })
}

const PORTS: [u16; 6] = [0, 53, 123, 4000, 4001, 65_530];
const ADDRESSES: [(u8, [u8; 16]); 4] = [
    (AF_INET, [192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    (
        AF_INET,
        [198, 51, 100, 200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ),
    (
        AF_INET6,
        [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    ),
    (
        AF_INET6,
        [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
    ),
];

/// Tuples built from the same pools as the expressions, so that matches are common.
fn tuple() -> impl Strategy<Value = (Tuple, bool)> {
    (
        0usize..4,
        0usize..4,
        0usize..6,
        0usize..6,
        0u16..4,
        any::<bool>(),
    )
        .prop_map(|(a, b, sp, dp, jitter, icmp)| {
            let (family, saddr) = ADDRESSES[a];
            let (_, mut daddr) = ADDRESSES[b];
            if ADDRESSES[b].0 != family {
                daddr = ADDRESSES[a ^ 1].1;
            }
            (
                Tuple {
                    family,
                    proto: IPPROTO_UDP,
                    sport: PORTS[sp].saturating_add(jitter),
                    dport: PORTS[dp],
                    saddr,
                    daddr,
                    ..Tuple::default()
                },
                icmp,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// The kernel's compiled evaluator and the reference interpreter agree.
    #[test]
    fn compiled_program_agrees_with_the_interpreter(ast in expr(), cases in proptest::collection::vec(tuple(), 16)) {
        let mut program = Vec::new();
        ast.emit(&mut program);
        prop_assume!(program.len() <= FILTER_MAX_INSNS);
        let mut filter = Filter::MATCH_ALL;
        filter.len = program.len() as u32;
        filter.insns[..program.len()].copy_from_slice(&program);
        for (tuple, icmp) in &cases {
            prop_assert_eq!(filter.matches(tuple, *icmp), ast.matches(tuple, *icmp), "{}", ast);
        }
    }

    /// Printing an expression and parsing it back gives the same tree.
    #[test]
    fn print_parse_round_trip(ast in expr()) {
        let text = ast.to_string();
        let parsed = parse(&text).unwrap().unwrap();
        prop_assert_eq!(parsed, ast);
    }

    /// Nothing panics on arbitrary input.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,60}") {
        let _ = compile(&[text]);
    }

    /// Nor on soups of the language's own tokens.
    #[test]
    fn token_soup_never_panics(tokens in proptest::collection::vec(prop_oneof![
        Just("port"), Just("host"), Just("net"), Just("portrange"), Just("src"), Just("dst"),
        Just("and"), Just("or"), Just("not"), Just("("), Just(")"), Just("!"), Just("&&"),
        Just("||"), Just("53"), Just("192.0.2.1"), Just("2001:db8::/32"), Just("1-2"),
        Just("udp"), Just("icmp6"), Just("mask"), Just("255.255.0.0"), Just("domain"),
    ], 0..24)) {
        let words: Vec<String> = tokens.iter().map(|t| (*t).to_owned()).collect();
        let _ = compile(&words);
    }
}
