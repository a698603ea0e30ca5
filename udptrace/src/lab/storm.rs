//! Storms of distinct flows, for the scale tests and the bench: one datagram per flow, IPv4
//! and UDP headers written here and sent from a raw socket in a lab namespace, the sources
//! taken from 198.51.100.0/24 and 203.0.113.0/24 and a range of ports (documentation
//! addresses only). The receiving namespace must not reverse-path filter them (they have no
//! route back) and the sender must have resolved the receiver's link address already (while
//! ARP is pending the kernel queues three packets and frees the rest).

use std::{
    net::Ipv4Addr,
    ops::Range,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::netns::Netns;

/// Readies `rx`, which holds `destination`, to receive storms from `tx`: reverse-path
/// filtering off (the kernel's default in a new namespace; said explicitly) and the link
/// address resolved by a first datagram (to port 9, closed: it counts in `NoPorts`).
pub fn prepare(tx: &Netns, rx: &Netns, destination: Ipv4Addr) -> anyhow::Result<()> {
    for key in [
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.default.rp_filter",
        "net.ipv4.conf.eth0.rp_filter",
    ] {
        rx.sysctl(key, "0")?;
    }
    let before = rx.snmp("Udp", "NoPorts")?;
    tx.enter(move || {
        std::net::UdpSocket::bind("0.0.0.0:0")?
            .send_to(b"arp", (destination, 9))
            .context("the warm-up datagram")?;
        Ok(())
    })?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while rx.snmp("Udp", "NoPorts")? == before {
        if Instant::now() > deadline {
            bail!("the warm-up datagram to {destination}:9 never arrived");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Source addresses cycled through: hosts 1-250 of 198.51.100.0/24 and of 203.0.113.0/24.
pub const SOURCES: u32 = 500;
/// Datagrams per `sendmmsg`.
const BATCH: usize = 64;
/// IPv4 header (20) + UDP header (8) + 8 bytes of payload.
const PACKET: usize = 36;

/// The `index`-th flow's source: address `index % SOURCES`, port 10000 + `index / SOURCES`.
pub fn source(index: u32) -> (Ipv4Addr, u16) {
    let host = index % SOURCES;
    let address = if host < 250 {
        Ipv4Addr::new(198, 51, 100, (host + 1) as u8)
    } else {
        Ipv4Addr::new(203, 0, 113, (host - 249) as u8)
    };
    let port = 10_000 + index / SOURCES;
    (
        address,
        u16::try_from(port).expect("at most 27 million flows"),
    )
}

/// One datagram of flow `index` to `destination`:`dport`. The kernel fills in the total length,
/// the identification and the header checksum for an `IPPROTO_RAW` socket (raw(7)); a zero
/// UDP checksum means none (RFC 768).
fn packet(index: u32, destination: Ipv4Addr, dport: u16) -> [u8; PACKET] {
    let (address, sport) = source(index);
    let mut packet = [0u8; PACKET];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(PACKET as u16).to_be_bytes());
    packet[8] = 64;
    packet[9] = libc::IPPROTO_UDP as u8;
    packet[12..16].copy_from_slice(&address.octets());
    packet[16..20].copy_from_slice(&destination.octets());
    packet[20..22].copy_from_slice(&sport.to_be_bytes());
    packet[22..24].copy_from_slice(&dport.to_be_bytes());
    packet[24..26].copy_from_slice(&((PACKET - 20) as u16).to_be_bytes());
    packet
}

/// An iovec over `buffer`.
pub fn iovec(buffer: &mut [u8]) -> libc::iovec {
    libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    }
}

/// Headers for sendmmsg(2)/recvmmsg(2), here and in the bench: one single-buffer message per
/// iovec, sent to `destination` when given (a socket that is not connected). The headers point
/// at `iovecs` and `destination`: both must stay alive, unmoved, while the headers are used.
pub fn message_headers(
    iovecs: &mut [libc::iovec],
    destination: Option<&libc::sockaddr_in>,
) -> Vec<libc::mmsghdr> {
    iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero mmsghdr is valid (null pointers, zero lengths).
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            if let Some(destination) = destination {
                header.msg_hdr.msg_name = std::ptr::from_ref(destination).cast_mut().cast();
                header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
            }
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
            header
        })
        .collect()
}

/// Sends one datagram for each flow of `flows` to `destination`:`dport` from a raw socket in
/// `tx`, at most `per_second` a second when given; the thread returns how many the kernel
/// accepted. Bounded: fails after a minute.
pub fn send_flows(
    tx: &Netns,
    destination: Ipv4Addr,
    dport: u16,
    flows: Range<u32>,
    per_second: Option<u32>,
) -> anyhow::Result<thread::JoinHandle<anyhow::Result<u64>>> {
    tx.spawn(move || {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        anyhow::ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: a descriptor we just created and nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let address = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(destination.octets()),
            },
            sin_zero: [0; 8],
        };
        let started = Instant::now();
        let deadline = started + Duration::from_mins(1);
        let mut sent = 0u64;
        let mut next = flows.start;
        while next < flows.end {
            if Instant::now() > deadline {
                bail!("sending took over a minute");
            }
            let count = (flows.end - next).min(BATCH as u32);
            let mut packets: Vec<[u8; PACKET]> = (next..next + count)
                .map(|index| packet(index, destination, dport))
                .collect();
            let mut iovecs: Vec<libc::iovec> =
                packets.iter_mut().map(|packet| iovec(packet)).collect();
            let mut headers = message_headers(&mut iovecs, Some(&address));
            let mut offset = 0;
            while offset < headers.len() {
                // SAFETY: the headers point at `address`, `iovecs` and `packets`, alive
                // for the call.
                let done = unsafe {
                    libc::sendmmsg(
                        socket.as_raw_fd(),
                        headers[offset..].as_mut_ptr(),
                        (headers.len() - offset) as u32,
                        0,
                    )
                };
                if done < 0 {
                    let error = std::io::Error::last_os_error();
                    anyhow::ensure!(
                        error.raw_os_error() == Some(libc::ENOBUFS) && Instant::now() < deadline,
                        "sendmmsg: {error}"
                    );
                    thread::sleep(Duration::from_millis(1));
                    continue;
                }
                offset += done as usize;
            }
            sent += u64::from(count);
            next += count;
            if let Some(rate) = per_second {
                let due = started + Duration::from_secs_f64(sent as f64 / f64::from(rate));
                thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
        Ok(sent)
    })
}
