//! Issue 17's acceptance: udptrace's filter language against libpcap's, packet for packet.
//!
//! A sender namespace sends UDP datagrams with varied addresses (IPv4 and IPv6, several
//! networks), ports (well-known ones that libpcap's own tests use, unique source ports) and
//! sizes (datagrams larger than the 1280-byte MTU leave as fragments; their payload is made of
//! `00 35` pairs, so that a non-first fragment read as if it had a UDP header would show ports
//! 53). The real tcpdump captures the sender's device; for each expression of the corpus,
//! `tcpdump -r` gives what libpcap matches, and a udptrace run with the same expression over
//! the same traffic gives its `xmit` events on that device. The two multisets of packets agree:
//! a packet is named by its addresses and ports, a fragment without a UDP header by its
//! addresses and ports 0 (each fragmented datagram has an address pair of its own).
//!
//! Not compared, and checked separately: udptrace's documented extensions, ICMP errors matching
//! by the datagram they quote (`icmp` events; libpcap sees an ICMP packet, which `port P` does
//! not match), and fragments followed by their datagram's ports: an IPv4 fragment other than
//! the first and every IPv6 UDP fragment, which libpcap reads without ports, carry in udptrace
//! the ports their first fragment showed (same addresses and IP ID), so its filter selects a
//! datagram's fragments together. Those, and only those, are left out of the comparison on
//! both sides; the check instead is that udptrace reported every fragment of exactly the
//! fragmented datagrams the expression selects, with their ports.
//!
//! Needs tcpdump (`cargo xtask setup`); it is never skipped: without tcpdump it fails.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use udptrace::lab::netns::{Netns, veth};
use udptrace_common::event::{AF_INET, AF_INET6, IPPROTO_UDP, Tuple};

use crate::common::Traces;

/// A packet as both tools can name it: family-independent addresses, ports (0 and 0 for a
/// fragment that carries no UDP header, or whose header libpcap does not read: every IPv6
/// fragment, see `classify`).
type Key = (IpAddr, u16, IpAddr, u16);

/// libpcap's own filter tests (testprogs/TESTrun of the-tcpdump-group/libpcap, the accept and
/// apply blocks) whose expressions udptrace's language covers, verbatim.
const LIBPCAP_CORPUS: &[&str] = &[
    "udp",
    "ip",
    "ip6",
    "icmp",
    "icmp6",
    "ip and ip",
    "ip6 and ip6",
    "not ip and ip6",
    "not ip6 and not ip6",
    "port 7",
    "src port 7",
    "dst port 7",
    "portrange 1-1023",
    "src portrange 1-1023",
    "dst portrange 1-1023",
    "portrange 7-7",
    "src portrange 7-7",
    "udp port 53",
    "udp port domain",
    "udp src port 53",
    "udp dst port 53",
    "udp src port domain",
    "udp dst port domain",
    "udp portrange 53-53",
    "udp portrange 67-68",
    "udp src portrange 67-68",
    "udp dst portrange 67-68",
    "ip host 192.1.2.23",
    "ip src 10.0.0.2",
    "src host 10.0.0.2",
    "ip dst net 0.0.0.0/0",
    "ip dst net 10.0.0.0/8",
    "dst net 10.0.0.0 mask 255.0.0.0",
    "ip src net 10.0.1.0/24",
    "net 192.168.0.0/16",
    "ip net 192.168.0.0 mask 255.255.0.0",
    "host 192.168.170.211",
    "ip6 host ::1",
    "ip6 src 10::1",
    "ip6 dst ff02::12",
    "ip6 dst net ::/0",
    "ip6 src net 2000::/3",
    "src net 2000::/3",
    "ip6 dst net ff00::/8",
    "ip6 net fe80::/10",
];

/// The traffic's own cases: fragments (`port`, `not port`, ranges including 0), hosts and
/// networks on both sides, and combinations with and/or/not/parentheses (left to right, equal
/// precedence, as pcap-filter(7)).
const OWN_CORPUS: &[&str] = &[
    "port 53",
    "not port 53",
    "port 5000",
    "not port 5000",
    "portrange 0-1023",
    "not portrange 0-1023",
    "port 0",
    "not port 0",
    "host 198.51.100.2",
    "host 198.51.100.2 and port 53",
    "host 198.51.100.2 and not port 53",
    "host 192.0.2.3",
    "src host 192.0.2.1",
    "dst host 2001:db8:17::3",
    "host 2001:db8:18::2 and not port 53",
    "net 2001:db8:18::/48",
    "src net 198.51.100.0/24",
    "dst net 192.0.2.0 mask 255.255.255.0",
    "ip and (port 53 or 123)",
    "ip6 and not (port 7 or port 5000)",
    "not (src port 53 or dst portrange 60-70)",
    "(host 192.0.2.3 or host 2001:db8:17::3) and portrange 5000-5100",
    "udp and not ip6 and dst port 67",
    "ip6 or port 123",
    "port 53 or 123 or 7",
    "! port 53 && ! host 2001:db8:18::2",
    "src port 53 or dst port 53 and ip6",
    "not udp",
    "port 9",
    "dst port 9 and not ip6",
    "icmp or port 9",
];

/// Expressions traced at once, each by its own udptrace, over one run of the traffic.
const BATCH: usize = 12;

/// Payload byte pairs: a non-first fragment read as a UDP header would give ports 53 and 53.
const PAYLOAD_PAIR: [u8; 2] = [0x00, 0x35];

/// Datagrams this large leave a 1280-byte MTU as three fragments.
const LARGE: usize = 3000;

struct Datagram {
    from: SocketAddr,
    to: SocketAddr,
    size: usize,
}

/// The closed port: datagrams to it draw ICMP port unreachable errors.
const CLOSED_PORT: u16 = 9;
/// Ports the receiver listens on.
const OPEN_PORTS: [u16; 6] = [7, 53, 67, 68, 123, 5000];

/// Every datagram of one run: small ones on every address pair to every open port (source
/// ports 47300 and up, unique), a few from well-known source ports, one large datagram per
/// address pair of its own, and one to the closed port per family.
fn traffic() -> Vec<Datagram> {
    let pairs = [
        ("192.0.2.1", "192.0.2.2"),
        ("192.0.2.1", "192.0.2.3"),
        ("198.51.100.1", "198.51.100.2"),
        ("2001:db8:17::1", "2001:db8:17::2"),
        ("2001:db8:17::1", "2001:db8:17::3"),
        ("2001:db8:18::1", "2001:db8:18::2"),
    ];
    let address = |text: &str| -> IpAddr { text.parse().unwrap() };
    let mut sport = 47300;
    let mut next_sport = || {
        sport += 1;
        sport
    };
    let mut datagrams = Vec::new();
    for (from, to) in pairs {
        for dport in OPEN_PORTS {
            datagrams.push(Datagram {
                from: SocketAddr::new(address(from), next_sport()),
                to: SocketAddr::new(address(to), dport),
                size: 100,
            });
        }
    }
    // From well-known ports (a DNS or NTP answer, a DHCP client): src port tests.
    for (from, to) in [
        ("192.0.2.1", "192.0.2.2"),
        ("2001:db8:17::1", "2001:db8:17::2"),
    ] {
        for (sport, dport) in [(53, 5000), (68, 67), (123, 123), (7, 53)] {
            datagrams.push(Datagram {
                from: SocketAddr::new(address(from), sport),
                to: SocketAddr::new(address(to), dport),
                size: 60,
            });
        }
    }
    // Fragmented: one per address pair (its fragments are named by the pair).
    for (from, to, dport) in [
        ("192.0.2.11", "192.0.2.2", 53),
        ("198.51.100.11", "198.51.100.2", 5000),
        ("2001:db8:17::11", "2001:db8:17::2", 53),
        ("2001:db8:18::11", "2001:db8:18::2", 5000),
    ] {
        datagrams.push(Datagram {
            from: SocketAddr::new(address(from), next_sport()),
            to: SocketAddr::new(address(to), dport),
            size: LARGE,
        });
    }
    for (from, to) in [
        ("192.0.2.1", "192.0.2.2"),
        ("2001:db8:17::1", "2001:db8:17::2"),
    ] {
        datagrams.push(Datagram {
            from: SocketAddr::new(address(from), next_sport()),
            to: SocketAddr::new(address(to), CLOSED_PORT),
            size: 100,
        });
    }
    datagrams
}

/// The UDP packets of one run of the traffic, named as `classify` names them: one per small
/// datagram; three per large one, of which only an IPv4 first fragment has ports.
fn sent_packets() -> BTreeMap<Key, usize> {
    tally(traffic().iter().flat_map(|datagram| {
        let (from, to) = (datagram.from, datagram.to);
        let whole = (from.ip(), from.port(), to.ip(), to.port());
        let fragment = (from.ip(), 0, to.ip(), 0);
        match (datagram.size == LARGE, from.is_ipv4()) {
            (false, _) => vec![whole],
            (true, true) => vec![whole, fragment, fragment],
            (true, false) => vec![fragment; 3],
        }
    }))
}

/// The sender and the receiver, on one link of MTU 1280 (the IPv6 minimum).
fn lab() -> (Netns, Netns) {
    let sender = Netns::create("pdsend").unwrap();
    let receiver = Netns::create("pdrecv").unwrap();
    veth(&sender, "eth0", &receiver, "eth0").unwrap();
    for netns in [&sender, &receiver] {
        netns.ip(&["link", "set", "eth0", "mtu", "1280"]).unwrap();
    }
    let sides = [
        (
            &sender,
            "02:00:00:00:17:01",
            [
                "192.0.2.1/24",
                "192.0.2.11/24",
                "198.51.100.1/24",
                "198.51.100.11/24",
                "2001:db8:17::1/64",
                "2001:db8:17::11/64",
                "2001:db8:18::1/64",
                "2001:db8:18::11/64",
            ]
            .as_slice(),
        ),
        (
            &receiver,
            "02:00:00:00:17:02",
            [
                "192.0.2.2/24",
                "192.0.2.3/24",
                "198.51.100.2/24",
                "2001:db8:17::2/64",
                "2001:db8:17::3/64",
                "2001:db8:18::2/64",
            ]
            .as_slice(),
        ),
    ];
    for (netns, mac, cidrs) in sides {
        netns.ip(&["link", "set", "eth0", "address", mac]).unwrap();
        for cidr in cidrs {
            netns.addr("eth0", cidr).unwrap();
        }
    }
    // Permanent neighbours: a datagram sent while ARP or NDP resolves its next hop waits in
    // a queue that a burst overflows (NEIGH_QUEUEFULL), and it would never reach the wire.
    for ((netns, _, _), (peer, mac, cidrs)) in [(sides[0], sides[1]), (sides[1], sides[0])] {
        assert_ne!(netns.name, peer.name);
        for cidr in cidrs {
            let address = cidr.split('/').next().unwrap();
            netns
                .ip(&[
                    "neigh",
                    "replace",
                    address,
                    "lladdr",
                    mac,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ])
                .unwrap();
        }
    }
    (sender, receiver)
}

/// One run of the traffic: the receiver listens (dual-stack sockets on the open ports), the
/// sender sends each datagram from a socket bound to its source and connected to its
/// destination, once.
fn send_traffic(sender: &Netns, receiver: &Netns) {
    let listening = receiver
        .enter(|| {
            OPEN_PORTS
                .iter()
                .map(|port| Ok(UdpSocket::bind(format!("[::]:{port}"))?))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .unwrap();
    sender
        .enter(|| {
            for datagram in traffic() {
                let socket = UdpSocket::bind(datagram.from)?;
                socket.connect(datagram.to)?;
                let payload: Vec<u8> = PAYLOAD_PAIR
                    .iter()
                    .copied()
                    .cycle()
                    .take(datagram.size)
                    .collect();
                socket.send(&payload)?;
            }
            Ok(())
        })
        .unwrap();
    // The last datagrams reach the receiver (and its ICMP errors the sender) within a
    // millisecond on veth; the sockets stay open until then.
    std::thread::sleep(Duration::from_millis(100));
    drop(listening);
}

/// The real tcpdump on the sender's device, writing every packet to a pcap file.
struct Capture {
    child: Child,
    file: PathBuf,
    /// tcpdump's stderr, line by line.
    stderr: std::sync::mpsc::Receiver<String>,
}

fn tcpdump() -> Command {
    // Fails, rather than skips, where tcpdump is missing: `cargo xtask setup` installs it.
    assert!(
        Path::new("/usr/bin/tcpdump").exists() || Path::new("/usr/sbin/tcpdump").exists(),
        "tcpdump is not installed: run `cargo xtask setup` (Debian package tcpdump)"
    );
    Command::new("tcpdump")
}

impl Capture {
    fn start(netns: &Netns, name: &str) -> Self {
        let file = std::env::temp_dir().join(format!(
            "udptrace-{}-pcapdiff-{name}.pcap",
            std::process::id()
        ));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &netns.name])
            .arg(tcpdump().get_program())
            // Immediate mode: packets are handed over as they come, not in TPACKET_V3 blocks
            // retired up to a second later, which SIGINT would cut short. Its ring has a slot
            // of the snapshot length per packet: at the default 262144 bytes, the default 2 MB
            // buffer holds 8 packets, and the kernel dropped packets of a burst while tcpdump
            // shared the CPUs with a batch of udptrace runs. Frames here are at most 1294
            // bytes (MTU 1280): 2048-byte slots in 8 MB.
            .args(["-i", "eth0", "--immediate-mode", "-U", "-n"])
            .args(["-s", "2048", "-B", "8192", "-w"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tcpdump");
        // tcpdump says "listening on eth0" once its socket is bound to the device.
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("tcpdump did not start listening within 10 s");
            if line.contains("listening on") {
                break;
            }
        }
        Self {
            child,
            file,
            stderr: lines,
        }
    }

    /// Stops tcpdump once its file holds the whole run (each UDP packet sent and both ICMP
    /// errors), or after 10 s: on SIGINT tcpdump leaves the packets still in its ring
    /// unwritten, and beside a batch of udptrace runs on two CPUs it may lag by a few hundred
    /// milliseconds. Returns the file.
    fn stop(mut self) -> PathBuf {
        let sent = sent_packets();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            // -U: tcpdump writes each packet's record whole as it comes.
            let bytes = std::fs::read(&self.file).unwrap_or_default();
            let packets: Vec<Packet> = read_whole_records(&bytes)
                .iter()
                .map(|p| classify(p))
                .collect();
            let udp = udp_packets(&packets);
            let errors = packets
                .iter()
                .filter(|p| matches!(p, Packet::IcmpError { .. }))
                .count();
            if udp == sent && errors == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("waiting for tcpdump");
        // Its counts ("N packets captured", "N packets dropped by kernel"), for the record.
        for line in &self.stderr {
            eprintln!("tcpdump: {line}");
        }
        assert!(status.success(), "tcpdump exited with {status}");
        std::mem::take(&mut self.file)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.file.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.file);
        }
    }
}

/// A captured packet, as far as the comparison goes.
#[derive(Debug, PartialEq, Eq)]
enum Packet {
    Udp(Key),
    /// An ICMP or ICMPv6 destination-unreachable error quoting a UDP datagram.
    IcmpError {
        quoted: Key,
    },
    Other,
}

fn ip(bytes: &[u8]) -> IpAddr {
    match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap()),
        _ => IpAddr::from(<[u8; 16]>::try_from(bytes).unwrap()),
    }
}

fn port(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

/// What an IP packet is, as libpcap's filters see it (gencode.c): an IPv4 fragment other than
/// the first has no ports (`gen_port_common` requires `ip[6:2] & 0x1fff == 0`); an IPv6
/// fragment is UDP when its fragment header's next header is (`gen_proto`, Q_IPV6, "also check
/// for a fragment header before the final header") but has no ports, first fragment included
/// (`gen_port6_common` reads ports only right after the fixed header).
fn classify(packet: &[u8]) -> Packet {
    let Some(&first) = packet.first() else {
        return Packet::Other;
    };
    match first >> 4 {
        4 if packet.len() >= 20 => {
            let header = usize::from(first & 0x0f) * 4;
            let (saddr, daddr) = (ip(&packet[12..16]), ip(&packet[16..20]));
            let offset = port(&packet[6..8]) & 0x1fff;
            match packet[9] {
                17 if offset != 0 => Packet::Udp((saddr, 0, daddr, 0)),
                17 => Packet::Udp((
                    saddr,
                    port(&packet[header..]),
                    daddr,
                    port(&packet[header + 2..]),
                )),
                // Destination unreachable: the quoted header starts 8 bytes in.
                1 if packet[header] == 3 => quoting(&packet[header + 8..]),
                _ => Packet::Other,
            }
        }
        6 if packet.len() >= 40 => {
            let (saddr, daddr) = (ip(&packet[8..24]), ip(&packet[24..40]));
            match packet[6] {
                17 => Packet::Udp((saddr, port(&packet[40..]), daddr, port(&packet[42..]))),
                44 if packet[40] == 17 => Packet::Udp((saddr, 0, daddr, 0)),
                58 if packet[40] == 1 => quoting(&packet[48..]),
                _ => Packet::Other,
            }
        }
        _ => Packet::Other,
    }
}

fn quoting(quoted: &[u8]) -> Packet {
    match classify(quoted) {
        Packet::Udp(quoted) => Packet::IcmpError { quoted },
        _ => Packet::Other,
    }
}

/// The IP packets of a pcap file (classic format, Ethernet links, as tcpdump -w writes).
fn read_pcap(bytes: &[u8]) -> Vec<Vec<u8>> {
    let (packets, end) = records(bytes);
    assert_eq!(end, bytes.len(), "the pcap file ends with a whole record");
    packets
}

/// The packets of the whole records of a pcap file still being written (none before its
/// header).
fn read_whole_records(bytes: &[u8]) -> Vec<Vec<u8>> {
    if bytes.len() < 24 {
        return Vec::new();
    }
    records(bytes).0
}

/// pcap link type of Ethernet frames.
const DLT_EN10MB: u32 = 1;

/// The IP packets of the whole records, and where they end.
fn records(bytes: &[u8]) -> (Vec<Vec<u8>>, usize) {
    assert!(bytes.len() >= 24, "a pcap file has a 24-byte header");
    let magic = u32::from_le_bytes(bytes[..4].try_into().unwrap());
    let little = matches!(magic, 0xa1b2_c3d4 | 0xa1b2_3c4d);
    assert!(
        little || matches!(magic.swap_bytes(), 0xa1b2_c3d4 | 0xa1b2_3c4d),
        "not a pcap file (magic {magic:#x})"
    );
    let word = |at: usize| {
        let raw: [u8; 4] = bytes[at..at + 4].try_into().unwrap();
        if little {
            u32::from_le_bytes(raw)
        } else {
            u32::from_be_bytes(raw)
        }
    };
    assert_eq!(
        word(20),
        DLT_EN10MB,
        "tcpdump on a veth writes Ethernet frames"
    );
    let mut packets = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let captured = word(at + 8) as usize;
        let Some(frame) = bytes.get(at + 16..at + 16 + captured) else {
            break;
        };
        at += 16 + captured;
        // Ethernet: destination, source, EtherType; IPv4 and IPv6 only.
        if frame.len() > 14 && matches!(port(&frame[12..14]), 0x0800 | 0x86dd) {
            packets.push(frame[14..].to_vec());
        }
    }
    (packets, at)
}

/// `tcpdump -r FILE -w - EXPRESSION`: the packets libpcap's compiled filter accepts.
fn libpcap_matches(file: &Path, expression: &str) -> Vec<Vec<u8>> {
    let output = tcpdump()
        .arg("-r")
        .arg(file)
        .args(["-w", "-", expression])
        .output()
        .expect("running tcpdump -r");
    assert!(
        output.status.success(),
        "tcpdump refused `{expression}`: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    read_pcap(&output.stdout)
}

/// A multiset of packets.
fn tally(keys: impl IntoIterator<Item = Key>) -> BTreeMap<Key, usize> {
    let mut counts = BTreeMap::new();
    for key in keys {
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// The UDP packets among `packets`.
fn udp_packets(packets: &[Packet]) -> BTreeMap<Key, usize> {
    tally(packets.iter().filter_map(|p| match p {
        Packet::Udp(key) => Some(*key),
        _ => None,
    }))
}

fn key_of(event: &Value) -> Key {
    let address = |field: &str| -> IpAddr { event[field].as_str().unwrap().parse().unwrap() };
    let port = |field: &str| event[field].as_u64().unwrap() as u16;
    (
        address("saddr"),
        port("sport"),
        address("daddr"),
        port("dport"),
    )
}

/// The UDP packets udptrace reported leaving the sender's device: those libpcap reads the
/// ports of, and apart the fragments it followed (`followed`).
fn udptrace_packets(
    records: &[Value],
    sender: &Netns,
) -> (BTreeMap<Key, usize>, BTreeMap<Key, usize>) {
    let (followed, read): (Vec<&Value>, Vec<&Value>) = records
        .iter()
        .filter(|r| {
            r["type"] == "event"
                && r["kind"] == "xmit"
                && r["netns"] == sender.inode
                && r["ifname"] == "eth0"
        })
        .partition(|r| followed(r));
    (
        tally(read.into_iter().map(key_of)),
        tally(followed.into_iter().map(key_of)),
    )
}

/// Whether udptrace gave this event's packet ports that libpcap does not read (`classify`):
/// an IPv4 fragment other than the first, an IPv6 fragment.
fn followed(event: &Value) -> bool {
    let fragment = &event["fragment"];
    fragment.is_object() && (event["family"] == "ipv6" || fragment["offset"] != 0)
}

/// Without the packets libpcap names without ports (`classify`): the followed fragments.
fn with_ports(packets: BTreeMap<Key, usize>) -> BTreeMap<Key, usize> {
    packets
        .into_iter()
        .filter(|((_, sport, _, dport), _)| (*sport, *dport) != (0, 0))
        .collect()
}

/// The fragments udptrace must follow under `expression`: the later ones (IPv4: two of three)
/// or all (IPv6) of each fragmented datagram the expression selects, with its ports. Which
/// datagrams it selects is udptrace's own filter on the datagram's tuple (the program the
/// kernel runs, compared with libpcap on every other packet here); for IPv4 libpcap agrees
/// through the first fragment, which both read with ports (checked by the caller).
fn expected_followed(expression: &str) -> BTreeMap<Key, usize> {
    let filter = udptrace::filter::compile(&[expression.to_owned()]).unwrap();
    let large = traffic()
        .into_iter()
        .filter(|datagram| datagram.size == LARGE);
    tally(large.flat_map(|Datagram { from, to, .. }| {
        let mut tuple = Tuple {
            proto: IPPROTO_UDP,
            sport: from.port(),
            dport: to.port(),
            ..Tuple::default()
        };
        match (from.ip(), to.ip()) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                tuple.family = AF_INET;
                tuple.saddr[..4].copy_from_slice(&a.octets());
                tuple.daddr[..4].copy_from_slice(&b.octets());
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                tuple.family = AF_INET6;
                tuple.saddr = a.octets();
                tuple.daddr = b.octets();
            }
            _ => unreachable!("one family per pair"),
        }
        let fragments = match (filter.matches(&tuple, false), from.is_ipv4()) {
            (false, _) => 0,
            (true, true) => 2,
            (true, false) => 3,
        };
        vec![(from.ip(), from.port(), to.ip(), to.port()); fragments]
    }))
}

/// One difference, written for the failure message.
fn differences(libpcap: &BTreeMap<Key, usize>, udptrace: &BTreeMap<Key, usize>) -> Vec<String> {
    let keys: BTreeSet<&Key> = libpcap.keys().chain(udptrace.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let (a, b) = (
                libpcap.get(key).copied().unwrap_or(0),
                udptrace.get(key).copied().unwrap_or(0),
            );
            (a != b).then(|| {
                format!(
                    "{}:{} > {}:{}: libpcap {a}, udptrace {b}",
                    key.0, key.1, key.2, key.3
                )
            })
        })
        .collect()
}

#[test]
fn filters_match_the_packets_libpcap_matches() {
    let started = Instant::now();
    let (sender, receiver) = lab();
    let corpus: Vec<&str> = LIBPCAP_CORPUS.iter().chain(OWN_CORPUS).copied().collect();
    for expression in &corpus {
        assert!(
            matches!(udptrace::filter::parse(expression), Ok(Some(_))),
            "`{expression}` is not in udptrace's language"
        );
    }
    let mut mismatches = Vec::new();
    let mut icmp_checked = 0;
    let mut followed_checked = 0;
    for (batch, expressions) in corpus.chunks(BATCH).enumerate() {
        let traces = Traces::start(&expressions.iter().map(|e| vec![*e]).collect::<Vec<_>>());
        let capture = Capture::start(&sender, &batch.to_string());
        send_traffic(&sender, &receiver);
        let file = capture.stop();
        let all = read_pcap(&std::fs::read(&file).unwrap());
        let captured: Vec<Packet> = all.iter().map(|p| classify(p)).collect();
        // The capture holds the whole traffic, nothing else of UDP.
        let udp = udp_packets(&captured);
        let missing = differences(&sent_packets(), &udp);
        assert!(
            missing.is_empty(),
            "run {batch}: the capture differs from the traffic sent:\n{}",
            missing.join("\n")
        );
        let errors: Vec<Key> = captured
            .iter()
            .filter_map(|p| match p {
                Packet::IcmpError { quoted } => Some(*quoted),
                _ => None,
            })
            .collect();
        assert_eq!(
            errors.len(),
            2,
            "one ICMP and one ICMPv6 port unreachable in run {batch}: {captured:?}"
        );
        for (expression, records) in expressions.iter().zip(traces.stop()) {
            let matched: Vec<Packet> = libpcap_matches(&file, expression)
                .iter()
                .map(|p| classify(p))
                .collect();
            let libpcap = udp_packets(&matched);
            let (ours, followed) = udptrace_packets(&records, &sender);
            let wrong = differences(&with_ports(libpcap.clone()), &ours);
            if !wrong.is_empty() {
                mismatches.push(format!("`{expression}`:\n    {}", wrong.join("\n    ")));
            }
            // The extension: the followed fragments are those of the datagrams selected, each
            // IPv4 one's exactly when libpcap matched its first fragment.
            let expected = expected_followed(expression);
            let wrong = differences(&expected, &followed);
            if !wrong.is_empty() {
                mismatches.push(format!(
                    "`{expression}` (followed fragments, expected vs udptrace):\n    {}",
                    wrong.join("\n    ")
                ));
            }
            for (key, count) in expected.iter().filter(|(key, _)| key.0.is_ipv4()) {
                assert_eq!(
                    libpcap.get(key).copied().unwrap_or(0) * 2,
                    *count,
                    "`{expression}`: libpcap matched {key:?}'s first fragment as udptrace \
                     selects its datagram"
                );
            }
            followed_checked += followed.len();
            // The extension: an ICMP error matches in udptrace by the datagram it quotes, so
            // exactly the errors quoting a datagram libpcap matched (the expression's `icmp`
            // words aside, which mean those errors in udptrace and any ICMP in libpcap).
            if !expression.contains("icmp") {
                let quoted_matched: BTreeSet<Key> = errors
                    .iter()
                    .filter(|quoted| libpcap.contains_key(*quoted))
                    .copied()
                    .collect();
                // This lab's errors: udptrace traces every namespace, and other tests' labs
                // on the host send theirs at the same time.
                let reported: BTreeSet<Key> = records
                    .iter()
                    .filter(|r| {
                        r["type"] == "event"
                            && r["kind"] == "icmp"
                            && (r["netns"] == sender.inode || r["netns"] == receiver.inode)
                    })
                    .map(key_of)
                    .collect();
                assert_eq!(
                    reported, quoted_matched,
                    "`{expression}`: udptrace's ICMP errors are those quoting a datagram \
                     libpcap matched"
                );
                icmp_checked += 1;
            }
        }
        let _ = std::fs::remove_file(&file);
    }
    assert!(
        mismatches.is_empty(),
        "udptrace and libpcap disagree on {} of {} expressions:\n{}",
        mismatches.len(),
        corpus.len(),
        mismatches.join("\n")
    );
    assert!(
        icmp_checked > 30,
        "the ICMP rule was checked on most of the corpus"
    );
    assert!(
        followed_checked > 0,
        "some expressions selected fragmented datagrams"
    );
    eprintln!(
        "{} expressions agree with libpcap ({} batches) in {:.1?}",
        corpus.len(),
        corpus.len().div_ceil(BATCH),
        started.elapsed()
    );
}

/// The extension alone: under `port 9`, the ICMP port unreachable about a datagram to port 9
/// is shown by udptrace, while libpcap, which sees an ICMP packet, does not match it.
#[test]
fn icmp_errors_match_by_the_quoted_datagram_where_libpcap_does_not() {
    let (sender, receiver) = lab();
    let expression = format!("port {CLOSED_PORT}");
    let traces = Traces::start(&[vec![expression.as_str()]]);
    let capture = Capture::start(&sender, "icmp");
    send_traffic(&sender, &receiver);
    let file = capture.stop();
    let records = traces.stop().remove(0);
    let all: Vec<Packet> = read_pcap(&std::fs::read(&file).unwrap())
        .iter()
        .map(|p| classify(p))
        .collect();
    let matched: Vec<Packet> = libpcap_matches(&file, &expression)
        .iter()
        .map(|p| classify(p))
        .collect();
    let _ = std::fs::remove_file(&file);
    let errors: Vec<&Packet> = all
        .iter()
        .filter(|p| matches!(p, Packet::IcmpError { .. }))
        .collect();
    assert_eq!(errors.len(), 2, "the capture holds both errors: {all:?}");
    for error in errors {
        let Packet::IcmpError { quoted } = error else {
            unreachable!()
        };
        assert_eq!(quoted.3, CLOSED_PORT);
        assert!(
            !matched.contains(error),
            "libpcap does not match the ICMP packet under `{expression}`"
        );
        assert!(
            matched.contains(&Packet::Udp(*quoted)),
            "libpcap matches the datagram it quotes"
        );
        let shown = records
            .iter()
            .filter(|r| r["type"] == "event" && r["kind"] == "icmp")
            .any(|r| key_of(r) == *quoted);
        assert!(
            shown,
            "udptrace shows the error about {quoted:?} under `{expression}`: {records:#?}"
        );
    }
}
