//! The UDP sockets that exist in a network namespace, as `ss -uam` lists them, read in-process
//! through netlink sock_diag (NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY requests of
//! include/uapi/linux/inet_diag.h, answered by net/ipv4/udp_diag.c `udp_dump` →
//! net/ipv4/inet_diag.c `inet_sk_diag_fill`). Verdicts use this to say which socket exists on a
//! port, why a datagram did not match it, and how full its receive buffer is.
//!
//! A netlink socket belongs to the network namespace of the thread that created it
//! (net/netlink/af_netlink.c `netlink_create` → `sk_alloc(net, ...)`), and keeps it for its whole
//! life: [`SockDiag::open_in`] creates it from a short-lived thread that entered the namespace,
//! and every later dump through it lists that namespace, from any thread, with no namespace
//! switch and no subprocess.
use std::{
    fs::File,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    rc::Rc,
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_UDP, SockDiagMessage, TCP_ESTABLISHED,
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};
use serde::{Deserialize, Serialize};

use crate::model::Process;

/// A namespace's UDP sockets, each with the process holding it, when one was found (verdicts
/// then name the socket's `uid`).
pub type SocketList = Rc<[(UdpSocketEntry, Option<Process>)]>;

/// A socket from the namespace's listing (sock_diag), with the process holding it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedSocket {
    #[serde(flatten)]
    pub entry: UdpSocketEntry,
    /// `None`: no process was found holding it (the socket's `uid` then names its owner).
    pub owner: Option<Process>,
}

/// Why a datagram does not match a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mismatch {
    /// The socket is on another port.
    Port { listens: u16 },
    /// The socket is bound to another address.
    Address { bound: IpAddr, addressed: IpAddr },
    /// The socket is connected to another peer.
    Peer {
        connected: SocketAddr,
        source: SocketAddr,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpSocketEntry {
    pub local: SocketAddr,
    /// Connected peer, or `None` for an unconnected socket.
    pub peer: Option<SocketAddr>,
    /// Bytes waiting in the receive queue (`idiag_rqueue`: net/ipv4/udp_diag.c
    /// `udp_diag_get_info`, the `rx_queue` of /proc/net/udp).
    pub rx_queue: u64,
    pub inode: u64,
    /// Owner of the socket (`idiag_uid`, `sk_uid`): verdicts name it when no process is found.
    pub uid: u32,
    /// Datagrams the socket dropped (receive buffer full, ...) since it was created
    /// (`SK_MEMINFO_DROPS`).
    pub drops: u64,
    /// Receive buffer size in bytes (`SK_MEMINFO_RCVBUF`, i.e. `sk_rcvbuf`, `ss -m` `rb`), when
    /// the kernel sent INET_DIAG_SKMEMINFO.
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

    /// Why a datagram `source > destination` does not match this socket.
    pub fn mismatch(&self, source: SocketAddr, destination: SocketAddr) -> Option<Mismatch> {
        if self.local.port() != destination.port() {
            return Some(Mismatch::Port {
                listens: self.local.port(),
            });
        }
        if !self.local.ip().is_unspecified() && !same_ip(self.local.ip(), destination.ip()) {
            return Some(Mismatch::Address {
                bound: self.local.ip(),
                addressed: destination.ip(),
            });
        }
        match self.peer {
            Some(peer) if !(same_ip(peer.ip(), source.ip()) && peer.port() == source.port()) => {
                Some(Mismatch::Peer {
                    connected: peer,
                    source,
                })
            }
            _ => None,
        }
    }
}

/// Compares addresses, treating IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as the IPv4 address.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// Largest datagram a dump sends: net/netlink/af_netlink.c `netlink_dump` allocates at most
/// 32 KiB (`SKB_WITH_OVERHEAD(32768)`) per batch; twice that leaves room for any overhead.
const RECEIVE_BUFFER: usize = 64 * 1024;

/// A NETLINK_SOCK_DIAG socket inside one network namespace.
pub struct SockDiag {
    socket: Socket,
    /// Sequence number of the last request, to ignore the rest of an abandoned dump.
    sequence: u32,
    buffer: Vec<u8>,
}

impl SockDiag {
    /// Opens a sock_diag socket in the network namespace `netns` refers to (an open
    /// /run/netns or /proc/PID/ns/net file).
    pub fn open_in(netns: &File) -> io::Result<Self> {
        let netns = netns.try_clone()?;
        let socket = std::thread::spawn(move || -> io::Result<Socket> {
            // SAFETY: valid fd of a namespace file; setns affects only this thread, which
            // ends here.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Socket::new(NETLINK_SOCK_DIAG)
        })
        .join()
        .map_err(|_| io::Error::other("sock_diag thread panicked"))??;
        Ok(Self {
            socket,
            sequence: 0,
            buffer: Vec::with_capacity(RECEIVE_BUFFER),
        })
    }

    /// Every UDP socket of the namespace, IPv4 then IPv6 (an IPv6 socket bound to `::` that
    /// also receives IPv4 is listed once, as IPv6).
    pub fn udp_sockets(&mut self) -> io::Result<Vec<UdpSocketEntry>> {
        let mut entries = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.dump(family, &mut entries)?;
        }
        Ok(entries)
    }

    fn dump(&mut self, family: u8, entries: &mut Vec<UdpSocketEntry>) -> io::Result<()> {
        self.sequence = self.sequence.wrapping_add(1);
        let request = dump_request(family, self.sequence);
        // The kernel answers to our own port id (the socket's autobind), we send to its (0).
        self.socket
            .send_to(&request, &netlink_sys::SocketAddr::new(0, 0), 0)?;
        loop {
            self.buffer.clear();
            let received = self.socket.recv(&mut self.buffer, libc::MSG_TRUNC)?;
            if received > self.buffer.capacity() {
                return Err(io::Error::other(format!(
                    "sock_diag answer of {received} bytes truncated to {}",
                    self.buffer.capacity()
                )));
            }
            if decode_dump(&self.buffer, self.sequence, entries)? {
                return Ok(());
            }
        }
    }
}

/// A dump request for the UDP sockets of `family` in every state, with their memory counters
/// (include/uapi/linux/inet_diag.h `struct inet_diag_req_v2`, `idiag_ext` bit
/// INET_DIAG_SKMEMINFO: include/uapi/linux/sock_diag.h `SK_MEMINFO_*`).
fn dump_request(family: u8, sequence: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_UDP,
            extensions: ExtensionFlags::SKMEMINFO,
            // Unconnected UDP sockets are TCP_CLOSE, connected ones TCP_ESTABLISHED
            // (net/ipv4/datagram.c): ask for every state, as `ss -a` does.
            states: StateFlags::all(),
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

/// Decodes one datagram of a dump answering request `sequence` into `entries`; `true` once
/// its NLMSG_DONE arrived. Messages of another sequence (the tail of an abandoned dump) are
/// skipped.
fn decode_dump(
    mut bytes: &[u8],
    sequence: u32,
    entries: &mut Vec<UdpSocketEntry>,
) -> io::Result<bool> {
    while !bytes.is_empty() {
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(bytes)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
        // Messages are padded to 4 bytes (include/uapi/linux/netlink.h NLMSG_ALIGN).
        let length = (message.header.length as usize).next_multiple_of(4);
        bytes = bytes.get(length..).unwrap_or_default();
        if message.header.sequence_number != sequence {
            continue;
        }
        match message.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                entries.push(entry(&response));
            }
            NetlinkPayload::Done(done) if done.code < 0 => {
                return Err(io::Error::from_raw_os_error(-done.code));
            }
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(error) => return Err(error.to_io()),
            _ => {}
        }
    }
    Ok(false)
}

/// One `struct inet_diag_msg` and its attributes.
fn entry(response: &InetResponse) -> UdpSocketEntry {
    let header = &response.header;
    let id = &header.socket_id;
    let memory = response.nlas.iter().find_map(|nla| match nla {
        Nla::MemInfo(memory) => Some(memory),
        _ => None,
    });
    UdpSocketEntry {
        local: SocketAddr::new(id.source_address, id.source_port),
        // A connect()ed UDP socket is TCP_ESTABLISHED (net/ipv4/datagram.c
        // `__ip4_datagram_connect`).
        peer: (header.state == TCP_ESTABLISHED && id.destination_port != 0)
            .then(|| SocketAddr::new(id.destination_address, id.destination_port)),
        rx_queue: u64::from(header.recv_queue),
        inode: u64::from(header.inode),
        uid: header.uid,
        drops: memory.map_or(0, |memory| u64::from(memory.drops)),
        rcvbuf: memory.map(|memory| u64::from(memory.receive_queue_max)),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv6Addr, UdpSocket},
        os::fd::{AsRawFd as _, RawFd},
    };

    use super::*;

    /// `struct nlmsghdr` (include/uapi/linux/netlink.h).
    fn netlink_header(bytes: &mut Vec<u8>, length: usize, kind: u16, flags: u16, sequence: u32) {
        bytes.extend_from_slice(&(length as u32).to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&sequence.to_ne_bytes());
        bytes.extend_from_slice(&4242u32.to_ne_bytes());
    }

    /// One SOCK_DIAG_BY_FAMILY answer, laid out by hand from include/uapi/linux/inet_diag.h
    /// (`struct inet_diag_msg`, 72 bytes) followed by an INET_DIAG_SKMEMINFO attribute
    /// (`struct nlattr` + `__u32[SK_MEMINFO_VARS]`, include/uapi/linux/sock_diag.h).
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per inet_diag_msg field"
    )]
    fn diag_message(
        bytes: &mut Vec<u8>,
        sequence: u32,
        family: u8,
        state: u8,
        (local, local_port): ([u8; 16], u16),
        (peer, peer_port): ([u8; 16], u16),
        rqueue: u32,
        (uid, inode): (u32, u32),
        meminfo: [u32; 9],
    ) {
        let length = 16 + 72 + 4 + 36;
        // SOCK_DIAG_BY_FAMILY = 20, NLM_F_MULTI = 2.
        netlink_header(bytes, length, 20, 2, sequence);
        bytes.extend_from_slice(&[family, state, 0, 0]);
        bytes.extend_from_slice(&local_port.to_be_bytes());
        bytes.extend_from_slice(&peer_port.to_be_bytes());
        bytes.extend_from_slice(&local);
        bytes.extend_from_slice(&peer);
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // idiag_if
        bytes.extend_from_slice(&[0xa5; 8]); // idiag_cookie
        for field in [0, rqueue, 0, uid, inode] {
            bytes.extend_from_slice(&field.to_ne_bytes());
        }
        // INET_DIAG_SKMEMINFO = 7.
        bytes.extend_from_slice(&(4u16 + 36).to_ne_bytes());
        bytes.extend_from_slice(&7u16.to_ne_bytes());
        for value in meminfo {
            bytes.extend_from_slice(&value.to_ne_bytes());
        }
    }

    fn ipv4(octets: [u8; 4]) -> [u8; 16] {
        let mut address = [0; 16];
        address[..4].copy_from_slice(&octets);
        address
    }

    /// An unconnected (TCP_CLOSE) AF_INET socket on port 9 with nothing queued.
    fn idle_ipv4_socket(bytes: &mut Vec<u8>, sequence: u32, local: [u8; 4]) {
        diag_message(
            bytes,
            sequence,
            2,
            7,
            (ipv4(local), 9),
            (ipv4([0, 0, 0, 0]), 0),
            0,
            (0, 1),
            [0; 9],
        );
    }

    fn done(bytes: &mut Vec<u8>, sequence: u32, code: i32) {
        // NLMSG_DONE = 3, with the dump's status as its payload.
        netlink_header(bytes, 20, 3, 2, sequence);
        bytes.extend_from_slice(&code.to_ne_bytes());
    }

    #[test]
    fn decodes_a_dump_laid_out_by_hand() {
        let mut bytes = Vec::new();
        // SK_MEMINFO_RMEM_ALLOC, RCVBUF, WMEM_ALLOC, SNDBUF, FWD_ALLOC, WMEM_QUEUED, OPTMEM,
        // BACKLOG, DROPS.
        diag_message(
            &mut bytes,
            7,
            2,
            7,
            (ipv4([198, 51, 100, 1]), 4000),
            (ipv4([0, 0, 0, 0]), 0),
            0x200,
            (1000, 31337),
            [2304, 8192, 0, 212_992, 0, 0, 0, 0, 491],
        );
        // Left over from an abandoned dump: skipped.
        idle_ipv4_socket(&mut bytes, 6, [192, 0, 2, 9]);
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let peer6: Ipv6Addr = "2001:db8::2".parse().unwrap();
        diag_message(
            &mut bytes,
            7,
            10,
            1,
            (v6.octets(), 53),
            (peer6.octets(), 40000),
            0,
            (0, 31338),
            [0, 212_992, 0, 212_992, 0, 0, 0, 0, 0],
        );
        let mut entries = Vec::new();
        assert!(
            !decode_dump(&bytes, 7, &mut entries).unwrap(),
            "no NLMSG_DONE yet"
        );
        done(&mut bytes, 7, 0);
        entries.clear();
        assert!(decode_dump(&bytes, 7, &mut entries).unwrap());
        assert_eq!(
            entries,
            [
                UdpSocketEntry {
                    local: "198.51.100.1:4000".parse().unwrap(),
                    peer: None,
                    rx_queue: 0x200,
                    inode: 31337,
                    uid: 1000,
                    drops: 491,
                    rcvbuf: Some(8192),
                },
                UdpSocketEntry {
                    local: "[2001:db8::1]:53".parse().unwrap(),
                    peer: Some("[2001:db8::2]:40000".parse().unwrap()),
                    rx_queue: 0,
                    inode: 31338,
                    uid: 0,
                    drops: 0,
                    rcvbuf: Some(212_992),
                },
            ]
        );
    }

    #[test]
    fn reports_netlink_errors_and_truncated_messages() {
        let mut bytes = Vec::new();
        // NLMSG_ERROR = 2: `struct nlmsgerr`, the error then the request's header.
        netlink_header(&mut bytes, 16 + 4 + 16, 2, 0, 3);
        bytes.extend_from_slice(&(-libc::EINVAL).to_ne_bytes());
        netlink_header(&mut bytes, 16, 20, 0, 3);
        let error = decode_dump(&bytes, 3, &mut Vec::new()).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EINVAL), "{error}");

        let mut failed = Vec::new();
        done(&mut failed, 3, -libc::EBUSY);
        let error = decode_dump(&failed, 3, &mut Vec::new()).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EBUSY), "{error}");

        let mut truncated = Vec::new();
        idle_ipv4_socket(&mut truncated, 3, [192, 0, 2, 1]);
        truncated.truncate(60);
        let error = decode_dump(&truncated, 3, &mut Vec::new()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    }

    fn inode_of(fd: RawFd) -> u64 {
        // SAFETY: a zeroed stat is a valid out-parameter for fstat on an open fd.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open for the duration of the call.
        assert_eq!(unsafe { libc::fstat(fd, &raw mut stat) }, 0);
        stat.st_ino
    }

    fn set_receive_buffer(fd: RawFd, bytes: libc::c_int) -> u64 {
        let size = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: fd is an open socket; the option value is a c_int of `size` bytes.
        let set = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const bytes).cast(),
                size,
            )
        };
        assert_eq!(set, 0, "{}", io::Error::last_os_error());
        let mut value: libc::c_int = 0;
        let mut length = size;
        // SAFETY: as above, with room for the answer.
        let got = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw mut value).cast(),
                &raw mut length,
            )
        };
        assert_eq!(got, 0, "{}", io::Error::last_os_error());
        value as u64
    }

    fn listed(netns: &str) -> Vec<UdpSocketEntry> {
        let file = File::open(netns).unwrap();
        SockDiag::open_in(&file).unwrap().udp_sockets().unwrap()
    }

    fn find(entries: &[UdpSocketEntry], inode: u64) -> &UdpSocketEntry {
        entries
            .iter()
            .find(|entry| entry.inode == inode)
            .unwrap_or_else(|| panic!("socket inode {inode} not listed: {entries:?}"))
    }

    #[test]
    fn lists_real_sockets_of_this_namespace() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        // SO_RCVBUF 4096 is doubled by the kernel for its bookkeeping (socket(7)).
        let rcvbuf = set_receive_buffer(server.as_raw_fd(), 4096);
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        // 64 KiB into an 8 KiB buffer nobody reads: some are queued, the rest dropped. On
        // loopback the sender's softirq delivers each before send returns.
        for _ in 0..64 {
            client.send(&[0; 1000]).unwrap();
        }
        let server6 = UdpSocket::bind("[::1]:0").unwrap();
        let mut diag = SockDiag::open_in(&File::open("/proc/self/ns/net").unwrap()).unwrap();
        let entries = diag.udp_sockets().unwrap();

        let entry = find(&entries, inode_of(server.as_raw_fd()));
        assert_eq!(entry.local, server.local_addr().unwrap());
        assert_eq!(entry.peer, None);
        assert_eq!(entry.rcvbuf, Some(rcvbuf));
        assert_eq!(rcvbuf, 8192);
        assert!(entry.rx_queue > 0, "{entry:?}");
        assert!(entry.drops > 0, "{entry:?}");
        // SAFETY: geteuid has no preconditions.
        assert_eq!(entry.uid, unsafe { libc::geteuid() });

        let connected = find(&entries, inode_of(client.as_raw_fd()));
        assert_eq!(connected.local, client.local_addr().unwrap());
        assert_eq!(connected.peer, Some(server.local_addr().unwrap()));

        let entry6 = find(&entries, inode_of(server6.as_raw_fd()));
        assert_eq!(entry6.local, server6.local_addr().unwrap());

        // The same socket serves the next dump (a new sequence number), and the dump is
        // new: it lists a socket bound after the first. (Not "a closed socket is gone": a
        // process another test spawns at that moment holds a copy of every descriptor until
        // it execs, which kept a closed socket listed once.)
        let later = UdpSocket::bind("127.0.0.1:0").unwrap();
        let again = diag.udp_sockets().unwrap();
        find(&again, inode_of(server.as_raw_fd()));
        let entry = find(&again, inode_of(later.as_raw_fd()));
        assert_eq!(entry.local, later.local_addr().unwrap());
    }

    /// Needs root (CAP_SYS_ADMIN for unshare(CLONE_NEWNET)): fails otherwise.
    #[test]
    fn lists_the_sockets_of_a_namespace_it_entered() {
        // A thread moves into a new namespace, binds there and hands back the namespace and
        // its sockets; both stay alive (and in that namespace) after the thread ends.
        let (netns, sockets) = std::thread::spawn(|| {
            // SAFETY: affects only this thread.
            let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                unshared,
                0,
                "unshare(CLONE_NEWNET) needs root: {}",
                io::Error::last_os_error()
            );
            let v4 = UdpSocket::bind("0.0.0.0:0").unwrap();
            let v6 = UdpSocket::bind("[::]:0").unwrap();
            (File::open("/proc/thread-self/ns/net").unwrap(), [v4, v6])
        })
        .join()
        .unwrap();
        let rcvbuf = set_receive_buffer(sockets[0].as_raw_fd(), 65536);
        let entries = SockDiag::open_in(&netns).unwrap().udp_sockets().unwrap();
        assert_eq!(
            entries.len(),
            2,
            "only the new namespace's sockets: {entries:?}"
        );
        for socket in &sockets {
            let entry = find(&entries, inode_of(socket.as_raw_fd()));
            assert_eq!(entry.local, socket.local_addr().unwrap());
        }
        assert_eq!(
            find(&entries, inode_of(sockets[0].as_raw_fd())).rcvbuf,
            Some(rcvbuf)
        );
        let host = listed("/proc/self/ns/net");
        assert!(
            !host.iter().any(|entry| entries.contains(entry)),
            "the namespace's sockets are listed in ours: {host:?}"
        );
    }

    #[test]
    fn explains_mismatches() {
        let connected = UdpSocketEntry {
            local: "198.51.100.1:4000".parse().unwrap(),
            peer: Some("198.51.100.2:40000".parse().unwrap()),
            rx_queue: 0,
            inode: 1,
            uid: 0,
            drops: 0,
            rcvbuf: None,
        };
        let from = "198.51.100.2:40000".parse().unwrap();
        let to_uplink = "192.0.2.1:4000".parse().unwrap();
        assert!(!connected.accepts(from, to_uplink));
        assert_eq!(
            connected.mismatch(from, to_uplink),
            Some(Mismatch::Address {
                bound: "198.51.100.1".parse().unwrap(),
                addressed: "192.0.2.1".parse().unwrap()
            })
        );
        let other = "198.51.100.3:1".parse().unwrap();
        assert_eq!(
            connected.mismatch(other, "198.51.100.1:4000".parse().unwrap()),
            Some(Mismatch::Peer {
                connected: "198.51.100.2:40000".parse().unwrap(),
                source: other
            })
        );
        assert_eq!(
            connected.mismatch(from, "198.51.100.1:4001".parse().unwrap()),
            Some(Mismatch::Port { listens: 4000 })
        );
        let wildcard = UdpSocketEntry {
            local: "0.0.0.0:4000".parse().unwrap(),
            peer: None,
            ..connected
        };
        assert!(wildcard.accepts(other, to_uplink));
        assert_eq!(wildcard.mismatch(other, to_uplink), None);
    }
}
