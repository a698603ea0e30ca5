//! Issue 17, fragment_loss: a 4000-byte answer crossing a router whose firewall drops
//! fragments, traced with a port filter. Later fragments carry no UDP header: that the
//! router's drops of them show up under `port P` at all proves the kernel side followed them
//! from their first fragment (by addresses, protocol and IP ID).

use serde_json::Value;
use udptrace::lab::scenarios::{FRAGMENTED_ANSWER, NARROW_MTU};

use crate::{
    common::{events, verdicts},
    drops::traced,
};

/// The answer's UDP length: payload and 8-byte UDP header.
const DATAGRAM_LEN: u64 = FRAGMENTED_ANSWER as u64 + 8;

/// The drops of fragments of the answer, in namespace `netns`, with `reason`.
fn fragment_drops<'a>(records: &'a [Value], netns: u32, reason: &str) -> Vec<&'a Value> {
    events(records, "drop")
        .into_iter()
        .filter(|d| d["netns"] == netns && d["reason"] == reason && d["fragment"].is_object())
        .collect()
}

#[test]
fn later_fragments_dropped_by_a_router_are_followed_and_reassembly_times_out() {
    let (lab, outcome, records) = traced("fragments-dropped", &[]);
    let client = outcome.client.local.unwrap();
    assert_eq!(outcome.client.sent, 2, "{}", outcome.describe());
    assert!(outcome.client.replies.is_empty(), "{}", outcome.describe());
    let router = lab.namespace("router").unwrap().inode;
    let dropped = fragment_drops(&records, router, "NETFILTER_DROP");
    // Two answers of three fragments: the two after the first of each.
    assert_eq!(dropped.len(), 4, "{records:#?}");
    for drop in &dropped {
        assert_eq!(drop["saddr"], lab.target.ip().to_string());
        assert_eq!(
            drop["sport"],
            lab.target.port(),
            "ports learned from the first"
        );
        assert_eq!(drop["dport"], client.port());
        let fragment = &drop["fragment"];
        assert_ne!(fragment["offset"], 0, "{drop}");
        assert_eq!(fragment["datagram_len"], DATAGRAM_LEN, "{drop}");
    }
    let expired = fragment_drops(&records, lab.client.inode, "FRAG_REASM_TIMEOUT");
    assert_eq!(expired.len(), 2, "one per answer: {records:#?}");
    for drop in &expired {
        assert_eq!(drop["fragment"]["offset"], 0, "the first fragment waited");
        assert_eq!(drop["fragment"]["ip_len"], 1_500, "{drop}");
        assert!(
            drop["location"].as_str().unwrap().starts_with("ip_expire+"),
            "{drop}"
        );
    }
    let time_exceeded = events(&records, "icmp")
        .into_iter()
        .filter(|i| i["icmp_type"] == 11 && i["icmp_code"] == 1)
        .count();
    assert_eq!(time_exceeded, 2, "{records:#?}");
    let found = verdicts(&records);
    assert_eq!(found.len(), 1, "{found:#?}");
    let verdict = found[0];
    assert_eq!(verdict["code"], "fragment_loss");
    assert_eq!(
        verdict["count"], 6,
        "4 fragments dropped, 2 reassemblies expired"
    );
    let facts = &verdict["facts"];
    assert_eq!(facts["cause"], "firewall");
    assert_eq!(facts["datagram_len"], DATAGRAM_LEN);
    assert_eq!(facts["fragment_size"], 1_500);
    let summary = verdict["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!(
            "namespace {}",
            lab.namespace("router").unwrap().name
        )),
        "{summary}"
    );
    assert!(
        summary.contains("(hook forward): ip frag-off & 8191 != 0 drop"),
        "names the rule: {summary}"
    );
    let fix = verdict["fix"].as_str().unwrap();
    assert!(fix.contains("1232"), "{fix}");
    assert!(fix.contains("ip frag-off & 8191 != 0 drop"), "{fix}");
    let evidence = verdict["evidence"].as_array().unwrap();
    assert!(
        evidence
            .iter()
            .any(|line| line.as_str().unwrap().contains("FRAG_REASM_TIMEOUT")),
        "the client's timeout is evidence too: {evidence:#?}"
    );
}

#[test]
fn a_router_dropping_every_fragment_is_fragment_loss_not_a_port_firewall_drop() {
    let (lab, outcome, records) = traced("fragments-all-dropped", &[]);
    assert!(outcome.client.replies.is_empty(), "{}", outcome.describe());
    let router = lab.namespace("router").unwrap().inode;
    assert_eq!(
        fragment_drops(&records, router, "NETFILTER_DROP").len(),
        6,
        "three fragments of each answer: {records:#?}"
    );
    let found = verdicts(&records);
    assert_eq!(found.len(), 1, "{found:#?}");
    let verdict = found[0];
    assert_eq!(verdict["code"], "fragment_loss", "{verdict:#}");
    let text = format!("{} {}", verdict["summary"], verdict["fix"]);
    assert!(text.contains("ip frag-off & 16383 != 0 drop"), "{text}");
    assert!(!text.contains("allow udp dport"), "{text}");
}

#[test]
fn a_reassembled_answer_is_healthy() {
    let (lab, outcome, records) = traced("fragments-reassembled", &[]);
    assert_eq!(outcome.client.replies.len(), 2, "{}", outcome.describe());
    assert!(verdicts(&records).is_empty(), "{records:#?}");
    assert!(events(&records, "drop").is_empty(), "{records:#?}");
    // The fragments were seen crossing, each with the answer's ports.
    let fragments = events(&records, "xmit")
        .into_iter()
        .filter(|x| x["fragment"].is_object() && x["sport"] == lab.target.port())
        .count();
    assert!(fragments >= 6, "{records:#?}");
}

#[test]
fn a_path_too_narrow_for_a_dont_fragment_answer_names_the_mtu() {
    let (lab, outcome, records) = traced("path-mtu", &[]);
    let server = outcome.server.as_ref().unwrap();
    assert!(outcome.client.replies.is_empty(), "{}", outcome.describe());
    assert!(
        server.errors.contains(&libc::EMSGSIZE),
        "{}",
        outcome.describe()
    );
    let router = lab.namespace("router").unwrap();
    let too_big: Vec<&Value> = events(&records, "icmp")
        .into_iter()
        .filter(|i| i["icmp_type"] == 3 && i["icmp_code"] == 4)
        .collect();
    // One error: the router's, once; the later answers fail at the sender.
    assert_eq!(too_big.len(), 1, "{records:#?}");
    assert_eq!(too_big[0]["netns"], router.inode);
    assert_eq!(too_big[0]["mtu"], NARROW_MTU, "read from the ICMP header");
    assert_eq!(too_big[0]["saddr"], lab.target.ip().to_string());
    assert_eq!(too_big[0]["sport"], lab.target.port());
    let refused: Vec<&Value> = events(&records, "send_error")
        .into_iter()
        .filter(|e| e["errno"] == "EMSGSIZE")
        .collect();
    assert_eq!(
        refused.len(),
        server.errors.len(),
        "every EMSGSIZE the server got: {records:#?}"
    );
    let found = verdicts(&records);
    assert_eq!(found.len(), 1, "{found:#?}");
    let verdict = found[0];
    assert_eq!(verdict["code"], "fragment_loss");
    assert_eq!(verdict["facts"]["mtu"], NARROW_MTU);
    assert_eq!(
        verdict["count"],
        1 + refused.len() as u64,
        "the ICMP error and the refused sends"
    );
    let summary = verdict["summary"].as_str().unwrap();
    assert!(summary.contains("the next link's MTU is 1280"), "{summary}");
    assert!(summary.contains(&router.name), "{summary}");
    let fix = verdict["fix"].as_str().unwrap();
    assert!(fix.contains("at most 1252 bytes of payload"), "{fix}");
}

#[test]
fn ipv6_later_fragments_are_followed_by_the_fragment_headers_identification() {
    let (lab, outcome, records) = traced("fragments-dropped-v6", &[]);
    let client = outcome.client.local.unwrap();
    assert!(outcome.client.replies.is_empty(), "{}", outcome.describe());
    let router = lab.namespace("router").unwrap().inode;
    let dropped = fragment_drops(&records, router, "NETFILTER_DROP");
    assert_eq!(
        dropped.len(),
        4,
        "two later fragments of each answer: {records:#?}"
    );
    for drop in &dropped {
        assert_eq!(drop["family"], "ipv6");
        assert_eq!(
            drop["sport"],
            lab.target.port(),
            "ports learned from the first"
        );
        assert_eq!(drop["dport"], client.port());
        assert_eq!(drop["fragment"]["datagram_len"], DATAGRAM_LEN, "{drop}");
    }
    let expired = fragment_drops(&records, lab.client.inode, "FRAG_REASM_TIMEOUT");
    assert_eq!(expired.len(), 2, "one per answer: {records:#?}");
    assert!(expired.iter().all(|d| d["fragment"]["offset"] == 0));
    // ICMPv6 time exceeded, fragment reassembly time exceeded (RFC 4443 §3.3), seen leaving
    // the client (ICMPv6 errors are seen at each device they leave: the router's too).
    let time_exceeded = events(&records, "icmp")
        .into_iter()
        .filter(|i| {
            i["icmp_type"] == 3
                && i["icmp_code"] == 1
                && i["sport"] == lab.target.port()
                && i["netns"] == lab.client.inode
        })
        .count();
    assert_eq!(time_exceeded, 2, "{records:#?}");
    let found = verdicts(&records);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0]["code"], "fragment_loss");
    let summary = found[0]["summary"].as_str().unwrap();
    assert!(
        summary.contains("(hook forward): frag frag-off != 0 drop"),
        "{summary}"
    );
}
