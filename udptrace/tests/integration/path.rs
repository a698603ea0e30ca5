//! Issue 4: the packet path of the seeds' incident on a Docker-like host, hop by hop.

use serde_json::Value;

use crate::{common::events, drops::traced};

fn kind<'a>(records: &'a [Value], kind: &str, pick: impl Fn(&Value) -> bool) -> Vec<&'a Value> {
    events(records, kind)
        .into_iter()
        .filter(|e| pick(e))
        .collect()
}

fn assert_wrong_source_timeline(name: &str, client_ip: &str, asked: &str, bridge: &str) {
    let (lab, outcome, records) = traced(name, &[]);
    let client = outcome.client.local.unwrap();
    let port = lab.target.port();
    // The request: sent by the client process, through the container's eth0 and the bridge,
    // delivered to the wildcard server socket with its owner.
    let send = kind(&records, "send", |e| {
        e["socket"]["peer"] == lab.target.to_string()
    });
    assert!(!send.is_empty(), "client send: {records:#?}");
    assert_eq!(send[0]["pid"], std::process::id());
    let request_hops = kind(&records, "xmit", |e| {
        e["daddr"] == asked && e["dport"] == port
    });
    assert!(
        request_hops
            .iter()
            .any(|e| e["netns"] == lab.client.inode && e["ifname"] == "eth0")
    );
    let received = kind(&records, "recv", |e| {
        e["daddr"] == asked && e["dport"] == port
    });
    assert!(
        received
            .iter()
            .any(|e| e["netns"] == lab.server.inode && e["ifname"] == "veth-ctr")
    );
    assert!(
        received
            .iter()
            .any(|e| e["netns"] == lab.server.inode && e["ifname"] == "br0")
    );
    assert!(
        received
            .iter()
            .all(|e| e["netns_name"] == lab.client.name || e["netns_name"] == lab.server.name)
    );
    let delivered = kind(&records, "deliver", |e| e["dport"] == port);
    let delivered = delivered
        .first()
        .unwrap_or_else(|| panic!("no delivery: {records:#?}"));
    assert!(
        delivered["socket"]["local"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{port}"))
    );
    assert_eq!(delivered["socket"]["owner_pid"], std::process::id());
    assert_eq!(delivered["netns"], lab.server.inode);
    // The reply: its route lookup chose br0, so the kernel chose the bridge's address.
    let route = kind(&records, "route", |e| {
        e["direction"] == "output" && e["sport"] == port && e["daddr"] == client.ip().to_string()
    });
    assert!(
        route.iter().any(|r| r["device"] == "br0"),
        "route lookup via br0: {route:#?}"
    );
    let reply = kind(&records, "xmit", |e| {
        e["sport"] == port && e["daddr"] == client.ip().to_string()
    });
    assert!(!reply.is_empty());
    assert!(
        reply.iter().all(|e| e["saddr"] == bridge),
        "reply from the bridge address: {reply:#?}"
    );
    assert!(
        reply
            .iter()
            .any(|e| e["ifname"] == "br0" && e["netns"] == lab.server.inode)
    );
    // And on the client side the reply dies: NO_SOCKET in the container.
    let dropped = kind(&records, "drop", |e| {
        e["saddr"] == bridge && e["sport"] == port
    });
    assert!(
        dropped
            .iter()
            .any(|e| e["reason"] == "NO_SOCKET" && e["netns"] == lab.client.inode)
    );
    // Hops of one datagram share its packet identifier.
    let skb = &reply[0]["skb"];
    assert!(
        kind(&records, "recv", |e| e["skb"] == *skb)
            .iter()
            .any(|e| e["netns"] == lab.client.inode)
    );
    let _ = client_ip;
}

#[test]
fn wrong_source_reply_timeline() {
    assert_wrong_source_timeline(
        "wrong-source-reply",
        "198.51.100.2",
        "192.0.2.1",
        "198.51.100.1",
    );
}

#[test]
fn wrong_source_reply_timeline_ipv6() {
    assert_wrong_source_timeline(
        "wrong-source-reply-v6",
        "2001:db8:1::2",
        "2001:db8:2::1",
        "2001:db8:1::1",
    );
}

/// Masquerade in a middle namespace: one datagram seen before and after NAT, with the
/// conntrack entry that explains the rewrite.
#[test]
fn nat_rewrites_are_visible_with_their_conntrack_entry() {
    let (lab, outcome, records) = traced("dind-nat-hairpin", &[]);
    let client = outcome.client.local.unwrap();
    let dind2 = lab.middle.iter().find(|n| n.role == "dind2").unwrap();
    // The request enters dind2 from the client with the client's address...
    let before = kind(&records, "recv", |e| {
        e["saddr"] == client.ip().to_string() && e["netns"] == dind2.inode
    });
    let before = before
        .first()
        .unwrap_or_else(|| panic!("no pre-NAT hop: {records:#?}"));
    // ...and leaves it, the same skb, masqueraded to dind2's address, with conntrack's view.
    let after = kind(&records, "xmit", |e| {
        e["skb"] == before["skb"] && e["netns"] == dind2.inode
    });
    let after = after
        .first()
        .unwrap_or_else(|| panic!("no post-NAT hop: {records:#?}"));
    assert_eq!(after["saddr"], "192.0.2.3");
    assert_eq!(
        after["tracked"], true,
        "followed through NAT although 'port' matched anyway"
    );
    let conntrack = &after["conntrack"];
    assert_eq!(
        conntrack["original"],
        format!("{client} > {}", lab.target),
        "{after:#}"
    );
    assert_eq!(
        conntrack["reply"],
        format!("{} > 192.0.2.3:{}", lab.target, client.port()),
        "{after:#}"
    );
    // The host's DNAT: the same datagram continues to the server's address.
    let dnat = kind(&records, "xmit", |e| {
        e["skb"] == before["skb"] && e["daddr"] == "192.0.2.2"
    });
    assert!(!dnat.is_empty(), "post-DNAT hop towards dind1");
}

/// Issue 17: hooks that usually run in a sender's system call also run in softirqs, where the
/// current task is whoever the CPU interrupted. veth delivers on the sender's CPU, so the
/// server namespace receives the client's datagram to a closed port in a softirq run by the
/// client's `send` (`local_bh_enable` → `do_softirq`), and the route lookup of its ICMP port
/// unreachable (`icmp_route_lookup`, net/ipv4/icmp.c: the datagram's flow reversed) runs
/// there: it is the server namespace's, and no process's.
#[test]
fn route_lookups_in_softirq_are_the_receivers() {
    let (lab, outcome, records) = traced("closed-port", &[]);
    let client = outcome.client.local.unwrap();
    let port = lab.target.port();
    let target = lab.target.ip().to_string();
    let own = kind(&records, "route", |e| {
        e["daddr"] == target && e["dport"] == port
    });
    assert!(
        own.iter()
            .any(|e| e["netns"] == lab.client.inode && e["pid"] == std::process::id()),
        "the client's own lookup, in its system call: {records:#?}"
    );
    let for_the_error = kind(&records, "route", |e| {
        e["sport"] == port && e["dport"] == client.port()
    });
    assert!(
        !for_the_error.is_empty(),
        "the ICMP error's lookup: {records:#?}"
    );
    for lookup in for_the_error {
        assert!(lookup.get("pid").is_none(), "{lookup:#}");
        assert!(lookup.get("comm").is_none(), "{lookup:#}");
        assert_eq!(lookup["netns"], lab.server.inode, "{lookup:#}");
    }
}
