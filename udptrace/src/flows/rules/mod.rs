//! The verdict rules, one file per family, and their registration. Adding a verdict:
//! docs/recipes.md.

mod checksum;
mod conntrack;
mod firewall;
mod fragments;
mod neighbor;
mod no_reply;
mod no_route;
mod no_socket;
mod rcvbuf;
mod reply_source;
mod rp_filter;
mod tx_drop;

use std::time::Duration;

pub use no_reply::DEFAULT_REPLY_TIMEOUT;

use super::rule::Rule;

/// Every rule, in the order they see each event; `max_flows` bounds the state a rule keeps
/// per flow; a request unanswered after `reply_timeout` is judged (`no_reply`).
pub fn registered(max_flows: usize, reply_timeout: Duration) -> Vec<Box<dyn Rule>> {
    vec![
        Box::new(reply_source::ReplySource::new(max_flows)),
        Box::<no_socket::NoSocket>::default(),
        // Before the firewall rule: a netfilter drop that conntrack made is its (and is then
        // counted, which the firewall rule leaves alone).
        Box::new(conntrack::ConntrackDrop::new(max_flows)),
        Box::new(firewall::FirewallDrop),
        Box::new(rcvbuf::RcvbufOverflow),
        Box::new(rp_filter::RpFilterDrop),
        Box::new(checksum::ChecksumError),
        Box::new(neighbor::NeighborUnreachable),
        Box::new(no_route::NoRoute),
        Box::new(tx_drop::TxDrop),
        Box::new(no_reply::NoReply::new(max_flows, reply_timeout)),
        Box::new(fragments::FragmentLoss),
    ]
}
