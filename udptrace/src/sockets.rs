//! The UDP sockets that exist in a network namespace, as `ss -uanp` would list them, read from
//! `/proc/net/udp` and `/proc/net/udp6` inside that namespace (net/ipv4/udp.c `udp4_format_sock`,
//! net/ipv6/datagram.c `__ip6_dgram_sock_seq_show`). Verdicts use this to say which socket
//! exists on a port and why a datagram did not match it.

use std::{
    collections::HashMap,
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd as _,
    path::Path,
};

use serde::Serialize;

/// `TCP_ESTABLISHED`: a UDP socket in this state was connect()ed (include/net/tcp_states.h).
const STATE_ESTABLISHED: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UdpSocketEntry {
    pub local: SocketAddr,
    /// Connected peer, or `None` for an unconnected socket.
    pub peer: Option<SocketAddr>,
    /// Bytes waiting in the receive queue.
    pub rx_queue: u64,
    pub inode: u64,
    /// Datagrams the socket dropped (receive buffer full, ...) since it was created.
    pub drops: u64,
    /// Receive buffer size in bytes (`ss -m` `rb`, i.e. `sk_rcvbuf`), when known.
    pub rcvbuf: Option<u64>,
}

impl UdpSocketEntry {
    /// Whether a datagram from `source` to `destination` would be delivered to this socket:
    /// local port and address (wildcard matches any), and, when connected, the peer.
    pub fn accepts(&self, source: SocketAddr, destination: SocketAddr) -> bool {
        self.local.port() == destination.port()
            && (self.local.ip().is_unspecified() || same_ip(self.local.ip(), destination.ip()))
            && self
                .peer
                .is_none_or(|peer| same_ip(peer.ip(), source.ip()) && peer.port() == source.port())
    }

    /// Why a datagram `source > destination` does not match this socket, in words.
    pub fn mismatch(&self, source: SocketAddr, destination: SocketAddr) -> Option<String> {
        if self.local.port() != destination.port() {
            return Some(format!("it listens on port {}", self.local.port()));
        }
        if !self.local.ip().is_unspecified() && !same_ip(self.local.ip(), destination.ip()) {
            return Some(format!(
                "it is bound to {} but the datagram is addressed to {}",
                self.local.ip(),
                destination.ip()
            ));
        }
        match self.peer {
            Some(peer) if !(same_ip(peer.ip(), source.ip()) && peer.port() == source.port()) => {
                Some(format!("it is connected to {peer}, not to {source}"))
            }
            _ => None,
        }
    }
}

/// Compares addresses, treating IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as the IPv4 address.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// Parses the text of /proc/net/udp or /proc/net/udp6.
pub fn parse_proc_net_udp(text: &str) -> Vec<UdpSocketEntry> {
    text.lines().skip(1).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<UdpSocketEntry> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
    if fields.len() < 13 {
        return None;
    }
    let local = parse_endpoint(fields[1])?;
    let remote = parse_endpoint(fields[2])?;
    let state = u8::from_str_radix(fields[3], 16).ok()?;
    let rx_queue = u64::from_str_radix(fields[4].split(':').nth(1)?, 16).ok()?;
    Some(UdpSocketEntry {
        local,
        peer: (state == STATE_ESTABLISHED && remote.port() != 0).then_some(remote),
        rx_queue,
        inode: fields[9].parse().ok()?,
        drops: fields[12].parse().ok()?,
        rcvbuf: None,
    })
}

/// `0100007F:1F90` (IPv4, the address as a host-endian u32 in hex) or 32 hex digits (IPv6,
/// four host-endian u32 words).
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match address.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(address, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            let mut bytes = [0u8; 16];
            for (word, chunk) in bytes.chunks_mut(4).enumerate() {
                let value = u32::from_str_radix(address.get(word * 8..word * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&value.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The UDP and UDP6 sockets of the network namespace at `netns_path` (a /run/netns file or
/// /proc/PID/ns/net), read from a short-lived thread that entered it: /proc/thread-self/net
/// shows the namespace of the reading thread.
pub fn udp_sockets_in(netns_path: &Path) -> std::io::Result<Vec<UdpSocketEntry>> {
    let file = File::open(netns_path)?;
    std::thread::spawn(move || -> std::io::Result<Vec<UdpSocketEntry>> {
        // SAFETY: valid fd of a namespace file; affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut entries =
            parse_proc_net_udp(&std::fs::read_to_string("/proc/thread-self/net/udp")?);
        if let Ok(text) = std::fs::read_to_string("/proc/thread-self/net/udp6") {
            entries.extend(parse_proc_net_udp(&text));
        }
        Ok(entries)
    })
    .join()
    .map_err(|_| std::io::Error::other("socket listing thread panicked"))?
}

/// Receive buffer sizes by socket inode in the namespace at `netns_path`, from
/// `ss -Hnuame` (sock_diag: /proc/net/udp does not show them).
pub fn receive_buffers_in(netns_path: &Path) -> std::io::Result<HashMap<u64, u64>> {
    let file = File::open(netns_path)?;
    let text = std::thread::spawn(move || -> std::io::Result<String> {
        // SAFETY: valid namespace fd; affects only this thread (and the child it forks).
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let output = std::process::Command::new("ss").arg("-Hnuame").output()?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    })
    .join()
    .map_err(|_| std::io::Error::other("ss thread panicked"))??;
    Ok(parse_ss_buffers(&text))
}

/// `ino:N` on a socket's line, `skmem:(...,rbN,...)` on it or its continuation line.
fn parse_ss_buffers(text: &str) -> HashMap<u64, u64> {
    let mut buffers = HashMap::new();
    let mut inode = None;
    for word in text.split_whitespace() {
        if let Some(number) = word.strip_prefix("ino:") {
            inode = number.parse().ok();
        } else if let (Some(skmem), Some(current)) = (word.strip_prefix("skmem:("), inode)
            && let Some(rb) = skmem
                .trim_end_matches(')')
                .split(',')
                .find_map(|part| part.strip_prefix("rb"))
                .and_then(|rb| rb.parse().ok())
        {
            buffers.insert(current, rb);
        }
    }
    buffers
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    const SAMPLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  120: 016433C6:0FA0 00000000:0000 07 00000000:00000200 00:00000000 00000000     0        0 31337 2 0000000000000000 12
  121: 020200C0:0FA0 026433C6:9C40 01 00000000:00000000 00:00000000 00000000     0        0 31338 2 0000000000000000 0
";

    #[test]
    fn reads_the_receive_buffer_of_a_real_socket() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let entries = udp_sockets_in(Path::new("/proc/self/ns/net")).unwrap();
        let port = socket.local_addr().unwrap().port();
        let inode = entries
            .iter()
            .find(|e| e.local.port() == port)
            .unwrap()
            .inode;
        let buffers = receive_buffers_in(Path::new("/proc/self/ns/net")).unwrap();
        assert!(buffers.get(&inode).is_some_and(|rb| *rb > 0), "{buffers:?}");
    }

    #[test]
    fn parses_ss_receive_buffers() {
        let text = "UNCONN 0 0 127.0.0.1:46009 0.0.0.0:* ino:109859 sk:1 cgroup:/ <->\n\t skmem:(r0,rb212992,t0,tb212992,f0,w0,o0,bl0,d0)\nUNCONN 0 0 [::1]:53 [::]:* ino:7 sk:2 <->\n\t skmem:(r0,rb4608,t0)\n";
        let buffers = parse_ss_buffers(text);
        assert_eq!(buffers.get(&109_859), Some(&212_992));
        assert_eq!(buffers.get(&7), Some(&4_608));
    }

    #[test]
    fn parses_ipv4_lines() {
        let entries = parse_proc_net_udp(SAMPLE);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].local, "198.51.100.1:4000".parse().unwrap());
        assert_eq!(entries[0].peer, None);
        assert_eq!(entries[0].rx_queue, 0x200);
        assert_eq!(entries[0].inode, 31337);
        assert_eq!(entries[0].drops, 12);
        assert_eq!(entries[1].local, "192.0.2.2:4000".parse().unwrap());
        assert_eq!(entries[1].peer, Some("198.51.100.2:40000".parse().unwrap()));
    }

    #[test]
    fn explains_mismatches() {
        let connected = UdpSocketEntry {
            local: "198.51.100.1:4000".parse().unwrap(),
            peer: Some("198.51.100.2:40000".parse().unwrap()),
            rx_queue: 0,
            inode: 1,
            drops: 0,
            rcvbuf: None,
        };
        let from = "198.51.100.2:40000".parse().unwrap();
        let to_uplink = "192.0.2.1:4000".parse().unwrap();
        assert!(!connected.accepts(from, to_uplink));
        assert_eq!(
            connected.mismatch(from, to_uplink).unwrap(),
            "it is bound to 198.51.100.1 but the datagram is addressed to 192.0.2.1"
        );
        let other = "198.51.100.3:1".parse().unwrap();
        assert_eq!(
            connected
                .mismatch(other, "198.51.100.1:4000".parse().unwrap())
                .unwrap(),
            "it is connected to 198.51.100.2:40000, not to 198.51.100.3:1"
        );
        let wildcard = UdpSocketEntry {
            local: "0.0.0.0:4000".parse().unwrap(),
            peer: None,
            ..connected
        };
        assert!(wildcard.accepts(other, to_uplink));
        assert_eq!(wildcard.mismatch(other, to_uplink), None);
    }

    #[test]
    fn lists_a_real_socket_of_this_namespace() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let entries = udp_sockets_in(Path::new("/proc/self/ns/net")).unwrap();
        assert!(
            entries
                .iter()
                .any(|e| e.local.port() == port && e.local.ip().is_loopback()),
            "socket on port {port} not listed: {entries:?}"
        );
        let socket6 = UdpSocket::bind("[::1]:0").unwrap();
        let port6 = socket6.local_addr().unwrap().port();
        let entries = udp_sockets_in(Path::new("/proc/self/ns/net")).unwrap();
        assert!(
            entries
                .iter()
                .any(|e| e.local == SocketAddr::new("::1".parse().unwrap(), port6))
        );
    }
}
