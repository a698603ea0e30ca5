use proptest::prelude::*;
use udptrace_common::{
    event::{AF_INET, AF_INET6, IPPROTO_UDP, Tuple},
    filter::FILTER_MAX_INSNS,
};

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

/// A fragment without a UDP header (an IPv4 fragment other than the first, any IPv6 fragment)
/// has ports 0: no port test holds on it, so `not port P` shows it and `portrange 0-1023`
/// does not, as libpcap's filters (found by the pcap_differential integration test: such
/// fragments used to carry their payload's first bytes as ports).
#[test]
fn port_zero_is_no_port() {
    let fragment = v4(A, 0, B, 0);
    assert!(!check("port 0", &fragment, false));
    assert!(!check("portrange 0-1023", &fragment, false));
    assert!(!check("src portrange 0-65535", &fragment, false));
    assert!(check("not port 53", &fragment, false));
    assert!(check("not portrange 0-1023", &fragment, false));
    assert!(check("host 192.0.2.1 and not port 53", &fragment, false));
    assert!(check("udp", &fragment, false));
    let v6_fragment = v6("2001:db8::1", 0, "2001:db8::2", 0);
    assert!(!check("dst portrange 0-10", &v6_fragment, false));
    assert!(check("ip6 and not port 0", &v6_fragment, false));
    // One side without a port, the other with one (an unconnected socket's peer).
    let socket = v4(A, 4_000, [0; 4], 0);
    assert!(check("port 4000", &socket, false));
    assert!(!check("dst portrange 0-100", &socket, false));
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

fn ports(count: usize) -> String {
    (0..count)
        .map(|p| format!("port {p}"))
        .collect::<Vec<_>>()
        .join(" or ")
}

#[test]
fn oversized_expressions_are_rejected_at_the_first_term_too_many() {
    let fits = compile(&[ports(FILTER_MAX_INSNS)]).unwrap();
    assert_eq!(fits.program.len as usize, FILTER_MAX_INSNS);
    let long = ports(FILTER_MAX_INSNS + 1);
    let e = compile(std::slice::from_ref(&long)).unwrap_err();
    assert!(
        e.message.contains("too large for the kernel"),
        "{}",
        e.message
    );
    let last = long.rfind("port").unwrap();
    assert_eq!(
        (e.position, e.length),
        (last, 4),
        "caret under the extra term"
    );
    // A protocol word qualifying a primitive is a term of its own.
    let qualified = format!("{} or udp port 1", ports(FILTER_MAX_INSNS - 1));
    let e = compile(std::slice::from_ref(&qualified)).unwrap_err();
    assert_eq!(e.position, qualified.rfind("port").unwrap());
}

#[test]
fn the_costliest_expression_is_the_largest_and_runs_every_test_on_ipv4() {
    let costliest = compile(&[costliest_expression()]).unwrap();
    assert_eq!(costliest.program.len as usize, FILTER_MAX_INSNS);
    assert!(compile(&[costliest_expression() + " or udp"]).is_err());
    assert!(!check(
        &costliest_expression(),
        &v4(A, 40_000, B, 7_000),
        false
    ));
    assert!(check(&costliest_expression(), &v4(A, 40_000, B, 9), false));
    assert!(!check(&costliest_expression(), &v4(A, 1_000, B, 9), false));
}

/// Item 5 of issue 12: 101,000 `or` terms overflowed the stack (recursion proportional to the
/// input). Now nothing proportional to the input is recursive: every one of these ends in a
/// clean error, on a test thread's 2 MiB stack.
#[test]
fn huge_and_deeply_nested_inputs_are_errors_not_crashes() {
    let huge_or = ports(101_000);
    let e = compile(&[huge_or]).unwrap_err();
    assert!(e.message.contains("too large"));
    assert!(e.to_string().len() < 500, "not echoed whole: {e}");
    let huge_and = vec!["port 1 and"; 200_000].join(" ") + " port 2";
    assert!(error(&huge_and).message.contains("too large"));
    let parens = format!("{}port 1{}", "(".repeat(100_000), ")".repeat(100_000));
    let e = compile(&[parens]).unwrap_err();
    assert!(e.message.contains("nesting deeper than"), "{}", e.message);
    assert_eq!(e.position, 65, "caret at the first parenthesis too deep");
    let nots = "not ".repeat(100_000) + "port 1";
    assert!(compile(&[nots]).unwrap_err().message.contains("nesting"));
    let bangs = "!".repeat(100_000) + "port 1";
    assert!(compile(&[bangs]).unwrap_err().message.contains("nesting"));
    let unclosed = "(".repeat(100_000);
    assert!(compile(&[unclosed]).is_err());
    let closers = ")".repeat(100_000);
    assert!(compile(&[closers]).is_err());
    // The deepest accepted nesting, at the largest size, compiles.
    let deep = format!(
        "{}{}{}",
        "( ".repeat(60),
        ports(FILTER_MAX_INSNS),
        " )".repeat(60)
    );
    assert_eq!(
        compile(&[deep]).unwrap().program.len as usize,
        FILTER_MAX_INSNS
    );
}

#[test]
fn control_characters_are_escaped_and_the_caret_stays_under_the_word() {
    let e = compile(&["udp and \u{1b}[2Jevil".to_owned()]).unwrap_err();
    let text = e.to_string();
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert_eq!(
        text,
        "invalid filter: unknown word '\\x1b[2Jevil': expected udp, icmp, icmp6, ip, ip6, \
         host, net, port, portrange, src, dst, not or '('\n  \
         udp and \\x1b[2Jevil\n          ^^^^^^^^^^^"
    );
    // After an escaped character, the caret still lands under the offending word.
    let e = compile(&["host \u{7}x or port 99999".to_owned()]).unwrap_err();
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[1], "  host \\x07x or port 99999");
    assert_eq!(lines[2].find('^'), lines[1].find("\\x07"), "{lines:?}");
}

#[test]
fn numbers_are_digits_only() {
    let e = error("port +53");
    assert_eq!((e.position, e.length), (5, 3));
    assert!(
        e.message.contains("must be a number 0-65535"),
        "{}",
        e.message
    );
    let e = error("portrange +1-+2");
    assert_eq!((e.position, e.length), (10, 2), "caret under '+1'");
    let e = error("portrange 1-+2");
    assert_eq!((e.position, e.length), (12, 2), "caret under '+2'");
    assert!(e.message.contains("'+2'"), "{}", e.message);
    let e = error("portrange 5-");
    assert_eq!((e.position, e.length), (12, 0));
    let e = error("net 192.0.2.0/+24");
    assert_eq!((e.position, e.length), (14, 3), "caret under '+24'");
    assert!(e.message.contains("must be a number 0-32"), "{}", e.message);
    let e = error("net 2001:db8::/1000000000000000000000");
    assert!(e.message.contains("0-128"), "{}", e.message);
    assert!(error("port 0x35").message.contains("must be a number"));
    assert!(error("port -1").message.contains("must be a number"));
    assert!(compile(&words("portrange 0-65535 or net 192.0.2.0/24")).is_ok());
}

#[test]
fn a_malformed_program_matches_nothing() {
    let mut filter = compile(&words("port 1 or port 2")).unwrap().program;
    let t = v4(A, 2, B, 2);
    assert!(filter.matches(&t, false));
    // A jump backwards (or onto itself) would loop: the evaluator refuses it.
    filter.insns[1].on_match = 1;
    assert!(!filter.matches(&t, false));
    filter.insns[0].on_miss = 0;
    assert!(!filter.matches(&t, false));
    // Past the end.
    filter.insns[0].on_miss = 7;
    assert!(!filter.matches(&t, false));
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
    sized_expr(4, 20)
}

/// Trees of up to `depth` levels and about `size` leaves.
fn sized_expr(depth: u32, size: u32) -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(depth, size, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Expr::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| Expr::Or(Box::new(a), Box::new(b))),
        ]
    })
}

const PORTS: [u16; 6] = [0, 53, 123, 4000, 4001, 65_532];
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
        let filter = compile(&[ast.to_string()]).unwrap();
        prop_assert_eq!(filter.program.len as usize, ast.tests());
        for (tuple, icmp) in &cases {
            prop_assert_eq!(filter.matches(tuple, *icmp), ast.matches(tuple, *icmp), "{}", ast);
        }
    }

    /// Same for large programs, near FILTER_MAX_INSNS tests; and every jump goes forward, to a
    /// test of the program or to a final answer (the kernel's evaluator relies on it to end).
    #[test]
    fn large_programs_agree_and_jump_forward(ast in sized_expr(12, 120), cases in proptest::collection::vec(tuple(), 16)) {
        prop_assume!(ast.tests() <= FILTER_MAX_INSNS);
        let filter = compile(&[ast.to_string()]).unwrap();
        let program = &filter.program;
        for (index, insn) in program.insns[..program.len as usize].iter().enumerate() {
            for target in [insn.on_match, insn.on_miss] {
                prop_assert!(
                    target == TARGET_MATCH
                        || target == TARGET_MISS
                        || (usize::from(target) > index && target < program.len as u16),
                    "test {} jumps to {}", index, target
                );
            }
        }
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
