//! An event in words: the one-line summary the text output prints after the time and kind,
//! and verdict evidence lines reuse.

use super::wire::{device_text, endpoints_text, location_text, process_text, skb_text};
use crate::model::{IpFragment, RouteDirection, SocketInfo, TraceEvent, What};

/// The event's one-line summary without time and colour (also used by verdict evidence).
pub fn summary(event: &TraceEvent) -> String {
    let text = what_summary(event);
    match &event.fragment {
        Some(fragment) => format!("{text} ({})", fragment_text(fragment)),
        None => text,
    }
}

/// `first fragment (id 0xbeef, 1500 bytes) of a 4008-byte datagram`, `fragment at 1480 (id
/// 0xbeef, 1500 bytes, last)`: a later fragment's datagram length is known when its first
/// fragment was seen.
pub fn fragment_text(fragment: &IpFragment) -> String {
    let which = if fragment.offset == 0 {
        "first fragment".to_owned()
    } else {
        format!("fragment at {}", fragment.offset)
    };
    let last = if fragment.more { "" } else { ", last" };
    let of = fragment
        .datagram_len
        .map_or_else(String::new, |len| format!(" of a {len}-byte datagram"));
    format!(
        "{which} (id {:#x}, {} bytes{last}){of}",
        fragment.id, fragment.ip_len
    )
}

/// What happened, without the fragment it happened to.
fn what_summary(event: &TraceEvent) -> String {
    let src = event.source();
    let dst = event.destination();
    match &event.what {
        What::Drop {
            reason,
            reason_inferred,
            txq,
            ..
        } => format!(
            "{src} > {dst} {}{}{}",
            reason.name,
            if *reason_inferred { " (inferred)" } else { "" },
            txq.map_or_else(String::new, |txq| format!(" on transmit queue {txq}"))
        ),
        What::Icmp {
            icmp_type,
            icmp_code,
            meaning,
            mtu,
        } => {
            let mtu = mtu.map_or_else(String::new, |mtu| format!(", mtu {mtu}"));
            format!("{meaning} (type {icmp_type} code {icmp_code}{mtu}) about {src} > {dst}")
        }
        What::SockError { error, .. }
        | What::SendError { error, .. }
        | What::RecvError { error, .. } => {
            format!("{} on socket {src} (peer {dst})", error.0.name())
        }
        What::Send {
            bytes,
            socket,
            call: Some(call),
        } => {
            let how = if call.pktinfo {
                format!("sendmsg() with IP_PKTINFO source {}", event.saddr)
            } else if call.connected {
                format!(
                    "on a socket connected to {}",
                    socket
                        .peer
                        .map_or_else(|| "?".to_owned(), |peer| peer.to_string())
                )
            } else if event.saddr.is_unspecified() {
                "sendto() without IP_PKTINFO: the kernel chooses the source".to_owned()
            } else {
                "sendto()".to_owned()
            };
            format!("{bytes} bytes from {} to {dst}, {how}", socket.local)
        }
        What::Send {
            bytes,
            socket,
            call: None,
        } => match &socket.peer {
            Some(peer) => format!("{bytes} bytes from {} to {peer}", socket.local),
            None => format!("{bytes} bytes from {} (unconnected)", socket.local),
        },
        What::Route {
            direction,
            device,
            error,
            ..
        } => {
            let device = device_text(device);
            let direction = match direction {
                RouteDirection::Output => "output",
                RouteDirection::Input => "input",
            };
            let outcome = match error {
                Some(error) => format!("failed {}", error.name()),
                // An unbound sender: this lookup is where the kernel picks the source address
                // (the preferred source of the route, else the device's primary address).
                None if event.saddr.is_unspecified() => {
                    format!("dev {device}, source chosen from {device}")
                }
                None => format!("dev {device}"),
            };
            format!("{direction} {src} > {dst} {outcome}")
        }
        What::Xmit | What::Recv => format!("{src} > {dst}"),
        What::Deliver { socket } => format!("{src} > {dst} to {}", socket_text(socket)),
        What::Connect {
            socket,
            error: None,
        } => format!(
            "socket {} pinned to local {src} and peer {dst}",
            socket_text(socket)
        ),
        What::Connect {
            socket,
            error: Some(error),
        } => format!(
            "socket {} to {dst} failed {}",
            socket_text(socket),
            error.name()
        ),
        What::Lookup {
            socket: Some(socket),
        } => format!("{src} > {dst} found socket {}", socket_text(socket)),
        What::Lookup { socket: None } => format!("{src} > {dst} found no socket"),
    }
}

/// `0.0.0.0:4000 (connected to 192.0.2.1:5000) nc[123]`.
fn socket_text(socket: &SocketInfo) -> String {
    let owner = socket
        .owner
        .as_ref()
        .map_or_else(String::new, |owner| format!(" {}", process_text(owner)));
    match &socket.peer {
        Some(peer) => format!("{} (connected to {peer}){owner}", socket.local),
        None => format!("{}{owner}", socket.local),
    }
}

/// Where an event happened, in parts: kernel location, packet id, namespace, device, process
/// (the text output's indented line; the comment of a `-w` packet).
pub fn context_parts(event: &TraceEvent) -> Vec<String> {
    let mut parts = Vec::new();
    if let What::Drop { location, .. } = &event.what {
        parts.push(format!("at {}", location_text(location)));
    }
    if let Some(skb) = event.skb {
        // The last hex digits identify a datagram across its hops well enough for a reader.
        let skb = skb_text(skb);
        parts.push(format!("#{}", &skb[skb.len().saturating_sub(5)..]));
    }
    if event.tracked {
        parts.push("(followed)".into());
    }
    if event.hops_untraced {
        parts.push("(hops not traced)".into());
    }
    if let Some(conntrack) = &event.conntrack {
        parts.push(format!(
            "ct {} / reply {}",
            endpoints_text(&conntrack.original),
            endpoints_text(&conntrack.reply)
        ));
    }
    match (&event.netns_name, event.netns) {
        (Some(name), _) => parts.push(format!("ns {name}")),
        (None, 0) => {}
        (None, inode) => parts.push(format!("ns {inode}")),
    }
    if let Some(ifname) = &event.ifname {
        parts.push(ifname.clone());
    }
    if let Some(process) = event.process.as_ref().filter(|p| !p.comm.is_empty()) {
        parts.push(process_text(process));
    }
    parts
}
