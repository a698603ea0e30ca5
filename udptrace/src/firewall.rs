//! Which nftables rule drops a port: a firewall verdict is only useful with the rule that
//! fired. Reads `nft -a list ruleset` inside the namespace of the drop; iptables-legacy rules
//! are not read (nft shows iptables-nft rules, the default on current distributions).
//!
//! This is one of the two subprocesses udptrace runs while tracing (the other is `qdiscs`'s
//! `tc`), and only for firewall drops: the
//! kernel hands nftables rules out as netlink expressions (NFT_MSG_GETRULE), and only
//! libnftables turns them back into the rule text a user wrote and can search for. Its
//! caller (`namespaces`) caches the text per namespace and runs `nft` at most once per
//! namespace every `RULES_REFRESH`.

use std::{fs::File, io};

use serde::{Deserialize, Serialize};

use crate::host::output_in;

/// `nft -a list ruleset` run inside the network namespace `netns` refers to.
pub fn ruleset_in(netns: &File) -> io::Result<String> {
    output_in(netns, "nft", &["-a", "list", "ruleset"])
}

/// An nftables rule, where it sits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallRule {
    /// `FAMILY NAME`, e.g. `inet filter`.
    pub table: String,
    pub chain: String,
    /// The chain's hook (`input`, `prerouting`, ...), `None` for a regular chain.
    pub hook: Option<String>,
    /// The rule as `nft -a` prints it, `# handle N` included.
    pub text: String,
}

/// What a drop was of, for finding the rules that can have dropped it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// A datagram to this destination port.
    Port(u16),
    /// An IP fragment: a rule about fragments (`ip frag-off ...`, `exthdr frag ...`,
    /// `ip6 nexthdr ipv6-frag`); a later fragment has no UDP header for a port rule to match.
    Fragment,
}

/// The drop/reject rules in `text` (an `nft -a list ruleset`) that can have dropped it.
pub fn parse_ruleset(text: &str, dropped: Dropped) -> Vec<FirewallRule> {
    let mut table = String::new();
    let mut chain = String::new();
    let mut hook = None;
    let mut rules = Vec::new();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["table", family, name, ..] => table = format!("{family} {name}"),
            ["chain", name, ..] => {
                (*name).clone_into(&mut chain);
                hook = None;
            }
            ["type", _, "hook", name, ..] => hook = Some((*name).to_owned()),
            _ if drops(&words, dropped) => rules.push(FirewallRule {
                table: table.clone(),
                chain: chain.clone(),
                hook: hook.clone(),
                text: line.to_owned(),
            }),
            _ => {}
        }
    }
    rules
}

/// A drop/reject rule that can have dropped it.
fn drops(words: &[&str], dropped: Dropped) -> bool {
    let verdict = words.iter().any(|w| *w == "drop" || *w == "reject");
    verdict
        && match dropped {
            Dropped::Port(port) => drops_port(words, &port.to_string()),
            Dropped::Fragment => words.iter().any(|word| word.contains("frag")),
        }
}

/// A rule whose `dport` condition (a port, a range or a set) covers `port`.
fn drops_port(words: &[&str], port: &str) -> bool {
    let Some(at) = words.iter().position(|w| *w == "dport") else {
        return false;
    };
    let condition = &words[at + 1..];
    let end = if condition.first() == Some(&"{") {
        condition
            .iter()
            .position(|w| w.ends_with('}'))
            .map_or(condition.len(), |e| e + 1)
    } else {
        1.min(condition.len())
    };
    condition[..end].iter().any(|word| mentions(word, port))
}

/// `5003`, or a range `5000-5100` containing it.
fn mentions(word: &str, port: &str) -> bool {
    let word = word.trim_matches(|c| c == ',' || c == '{' || c == '}');
    if word == port {
        return true;
    }
    let (Some((lo, hi)), Ok(port)) = (word.split_once('-'), port.parse::<u16>()) else {
        return false;
    };
    matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULESET: &str = "table inet udptrace_lab { # handle 5
\tchain input { # handle 1
\t\ttype filter hook input priority filter; policy accept;
\t\tudp dport 5003 drop # handle 2
\t\tudp dport 6000-6100 reject # handle 3
\t\tudp dport { 53, 7000 } drop # handle 4
\t\tudp dport 5003 counter packets 1 bytes 2 # handle 6
\t}
\tchain forward { # handle 7
\t\ttype filter hook forward priority filter; policy accept;
\t\tip frag-off & 8191 != 0 counter packets 4 bytes 4 # handle 8
\t\tip frag-off & 8191 != 0 drop # handle 9
\t}
}
";

    #[test]
    fn finds_the_rules_that_drop_fragments() {
        assert_eq!(
            parse_ruleset(RULESET, Dropped::Fragment),
            [FirewallRule {
                table: "inet udptrace_lab".into(),
                chain: "forward".into(),
                hook: Some("forward".into()),
                text: "ip frag-off & 8191 != 0 drop # handle 9".into()
            }]
        );
    }

    #[test]
    fn finds_the_rules_that_drop_a_port() {
        assert_eq!(
            parse_ruleset(RULESET, Dropped::Port(5003)),
            [FirewallRule {
                table: "inet udptrace_lab".into(),
                chain: "input".into(),
                hook: Some("input".into()),
                text: "udp dport 5003 drop # handle 2".into()
            }]
        );
        assert_eq!(parse_ruleset(RULESET, Dropped::Port(6050)).len(), 1);
        assert!(
            parse_ruleset(RULESET, Dropped::Port(7000))[0]
                .text
                .contains("handle 4")
        );
        assert!(
            parse_ruleset(RULESET, Dropped::Port(53))[0]
                .text
                .contains("handle 4")
        );
        assert!(parse_ruleset(RULESET, Dropped::Port(9)).is_empty());
    }
}
