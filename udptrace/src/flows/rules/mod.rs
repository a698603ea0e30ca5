//! The verdict rules, one file per family, and their registration. Adding a verdict:
//! docs/recipes.md.

mod checksum;
mod firewall;
mod fragments;
mod no_socket;
mod rcvbuf;
mod reply_source;
mod rp_filter;

use super::rule::Rule;

/// Every rule, in the order they see each event; `max_flows` bounds the state a rule keeps
/// per flow.
pub fn registered(max_flows: usize) -> Vec<Box<dyn Rule>> {
    vec![
        Box::new(reply_source::ReplySource::new(max_flows)),
        Box::new(no_socket::NoSocket),
        Box::new(firewall::FirewallDrop),
        Box::new(rcvbuf::RcvbufOverflow),
        Box::new(rp_filter::RpFilterDrop),
        Box::new(checksum::ChecksumError),
        Box::new(fragments::FragmentLoss),
    ]
}
