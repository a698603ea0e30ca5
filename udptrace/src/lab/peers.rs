//! Built-in UDP peers, each on a thread inside a lab namespace (`Netns::spawn`: the thread
//! `setns()`s, then creates its socket, which stays in that namespace), bounded in count and
//! time: no external tool, and nothing that needs `ip netns exec` (which remounts /sys and
//! would hide tracefs from a tracer in the same process).
//!
//! - `Server`: `Echo`, `EchoPktinfo`, `ConnectFirstPeer` (netcat `-u -l`), `Sink`.
//! - `run_client`: N datagrams, connected or not, replies and errno values observed.
//! - `Proxy`: a userland UDP proxy in the manner of docker-proxy (seed 004).
//! - `Witness`: a raw socket that sees UDP datagrams reaching a namespace whether or not a UDP
//!   socket takes them (which source a dropped reply really came from).
//! - `udp_counters`: a namespace's Udp/Udp6 SNMP counters, to compare with the kernel.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;

use super::netns::Netns;

/// No peer lives longer than this, whatever it was asked.
pub const MAX_PEER_TIME: Duration = Duration::from_secs(30);
/// No client sends more than this many datagrams.
pub const MAX_DATAGRAMS: usize = 100_000;
/// Per-datagram records (sources, errors) kept per peer; counts go on.
const MAX_RECORDS: usize = 10_000;
/// How often a waiting peer looks at its stop flag.
const TICK: Duration = Duration::from_millis(20);

/// How a server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ServerMode {
    /// `recvfrom` + `sendto` the sender: the kernel picks the reply's source address by route
    /// lookup, so a wildcard-bound server on a multi-homed host may answer from another
    /// address than the one it was asked on (seeds 000/003).
    Echo,
    /// IP_PKTINFO / IPV6_RECVPKTINFO: `recvmsg` learns the request's destination and `sendmsg`
    /// carries it back as the reply's source (what dnsmasq does: seed 000, the healthy way).
    EchoPktinfo,
    /// netcat `-u -l`: after the first datagram, `connect()`s to its sender (the kernel picks
    /// the local address by route lookup, `__ip4_datagram_connect`), then echoes with `send`.
    /// The socket now only accepts datagrams to that local address from that peer (seed 001).
    ConnectFirstPeer,
    /// SO_RCVBUF set to `rcvbuf` (the kernel doubles it); with `read: false` nothing is read
    /// until the server stops, so the buffer overflows (what is queued is counted then).
    Sink { rcvbuf: usize, read: bool },
    /// Answers every request with `bytes` bytes (`sendto`), as a DNS server answering over
    /// EDNS with a large buffer does: bigger than the path MTU, so the kernel fragments it,
    /// unless `dont_fragment` (IP_MTU_DISCOVER / IPV6_MTU_DISCOVER = PMTUDISC_DO, ip(7)): then
    /// DF is set and a send larger than the path MTU the kernel knows fails with EMSGSIZE.
    Answer { bytes: usize, dont_fragment: bool },
}

/// What a server saw.
#[derive(Clone, Debug, Serialize)]
pub struct ServerReport {
    pub mode: ServerMode,
    /// The socket's address after bind (the port filled in if 0 was asked).
    pub local: SocketAddr,
    /// Its address at the end: `ConnectFirstPeer`'s connect() pins it to one local address.
    pub local_after: Option<SocketAddr>,
    /// The peer it is connected to at the end (`ConnectFirstPeer`).
    pub peer_after: Option<SocketAddr>,
    /// This process: the socket's owner as `ss -p` or the tracer names it.
    pub pid: u32,
    pub socket_inode: u64,
    /// The effective SO_RCVBUF.
    pub rcvbuf: u32,
    /// Datagrams read (for a non-reading `Sink`, what was still queued when it stopped).
    pub received: usize,
    /// Of `received`, those read only when a non-reading `Sink` stopped.
    pub queued_at_end: usize,
    pub sources: Vec<SocketAddr>,
    /// Replies whose send succeeded.
    pub replies_sent: usize,
    /// errno values from recv/send (a connected socket reports ICMP errors, ECONNREFUSED).
    pub errors: Vec<i32>,
}

/// A peer's thread: asked to stop through `stop`, joined on drop (so a failing test never
/// leaves a thread holding a namespace).
struct Worker<R> {
    handle: Option<JoinHandle<anyhow::Result<R>>>,
    stop: Arc<AtomicBool>,
}

impl<R> Worker<R> {
    fn finish(&mut self, stop_now: bool) -> anyhow::Result<R> {
        if stop_now {
            self.stop.store(true, Ordering::Relaxed);
        }
        self.handle
            .take()
            .context("peer already joined")?
            .join()
            .map_err(|_| anyhow!("peer thread panicked"))?
    }
}

impl<R> Drop for Worker<R> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// A peer's stop condition: its own flag, or `netns::cleanup_all` (Ctrl-C) since it started.
struct Stop {
    flag: Arc<AtomicBool>,
    epoch: u64,
}

impl Stop {
    fn requested(&self) -> bool {
        self.flag.load(Ordering::Relaxed) || super::netns::epoch() != self.epoch
    }
}

/// What a peer reports once its socket exists.
#[derive(Clone, Copy, Debug)]
struct Started {
    local: SocketAddr,
    socket_inode: u64,
}

/// Runs `body` on a thread in `netns` and waits until it reports its socket ready (or fails).
fn launch<R: Send + 'static>(
    netns: &Netns,
    what: &str,
    body: impl FnOnce(&mpsc::Sender<Started>, &Stop) -> anyhow::Result<R> + Send + 'static,
) -> anyhow::Result<(Worker<R>, Started)> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let epoch = super::netns::epoch();
    let handle = netns.spawn(move || body(&ready_tx, &Stop { flag, epoch }))?;
    let mut worker = Worker {
        handle: Some(handle),
        stop,
    };
    match ready_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(started) => Ok((worker, started)),
        Err(RecvTimeoutError::Disconnected) => {
            // The thread ended before its socket was ready: its error says why.
            let error = worker
                .finish(true)
                .err()
                .unwrap_or_else(|| anyhow!("it ended at once"));
            Err(error.context(format!("{what} in {} did not start", netns.name)))
        }
        Err(RecvTimeoutError::Timeout) => {
            bail!("{what} in {} did not start within 5 s", netns.name)
        }
    }
}

/// A UDP server on a thread in a namespace.
/// A peer on its thread: its socket's address and inode, and its report when it ends.
pub struct Peer<R> {
    worker: Worker<R>,
    local: SocketAddr,
    socket_inode: u64,
}

impl<R> Peer<R> {
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    pub fn socket_inode(&self) -> u64 {
        self.socket_inode
    }

    /// Waits until the peer's deadline and returns its report.
    pub fn join(mut self) -> anyhow::Result<R> {
        self.worker.finish(false)
    }

    /// Stops the peer now (within ~20 ms) and returns its report.
    pub fn stop(mut self) -> anyhow::Result<R> {
        self.worker.finish(true)
    }
}

pub type Server = Peer<ServerReport>;

impl Peer<ServerReport> {
    /// Binds a server in `netns` (`bind` may be the wildcard, 0.0.0.0 or [::]); returns once
    /// the socket exists. It runs until `duration` (at most `MAX_PEER_TIME`) has passed or
    /// `stop` is called.
    pub fn start(
        netns: &Netns,
        bind: SocketAddr,
        mode: ServerMode,
        duration: Duration,
    ) -> anyhow::Result<Self> {
        let deadline = Instant::now() + duration.min(MAX_PEER_TIME);
        let (worker, started) = launch(netns, "server", move |ready, stop| {
            let socket = UdpSocket::bind(bind).with_context(|| format!("binding {bind}"))?;
            if let ServerMode::Sink { rcvbuf, .. } = mode {
                set_int_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf as i32)?;
            }
            if mode == ServerMode::EchoPktinfo {
                enable_pktinfo(&socket, bind.is_ipv6())?;
            }
            if let ServerMode::Answer {
                dont_fragment: true,
                ..
            } = mode
            {
                if bind.is_ipv6() {
                    set_int_option(
                        &socket,
                        libc::IPPROTO_IPV6,
                        libc::IPV6_MTU_DISCOVER,
                        libc::IPV6_PMTUDISC_DO,
                    )?;
                } else {
                    set_int_option(
                        &socket,
                        libc::IPPROTO_IP,
                        libc::IP_MTU_DISCOVER,
                        libc::IP_PMTUDISC_DO,
                    )?;
                }
            }
            let local = socket.local_addr()?;
            let socket_inode = socket_inode(&socket)?;
            let mut report = ServerReport {
                mode,
                local,
                local_after: None,
                peer_after: None,
                pid: std::process::id(),
                socket_inode,
                rcvbuf: get_int_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF)? as u32,
                received: 0,
                queued_at_end: 0,
                sources: Vec::new(),
                replies_sent: 0,
                errors: Vec::new(),
            };
            let _ = ready.send(Started {
                local,
                socket_inode,
            });
            serve(&socket, deadline, stop, &mut report)?;
            report.local_after = socket.local_addr().ok();
            report.peer_after = socket.peer_addr().ok();
            Ok(report)
        })?;
        Ok(Self {
            worker,
            local: started.local,
            socket_inode: started.socket_inode,
        })
    }
}

fn push_bounded<T>(records: &mut Vec<T>, record: T) {
    if records.len() < MAX_RECORDS {
        records.push(record);
    }
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The payload `ServerMode::Answer` sends (a prefix of it).
static ANSWER: [u8; 8_192] = [b'a'; 8_192];

fn serve(
    socket: &UdpSocket,
    deadline: Instant,
    stop: &Stop,
    report: &mut ServerReport,
) -> anyhow::Result<()> {
    let mode = report.mode;
    let running = || Instant::now() < deadline && !stop.requested();
    if let ServerMode::Sink { read: false, .. } = mode {
        while running() {
            std::thread::sleep(TICK);
        }
        // Count what the buffer held (each datagram is either here or a RcvbufErrors drop).
        socket.set_nonblocking(true)?;
        let mut buffer = [0u8; 2048];
        for _ in 0..MAX_DATAGRAMS {
            match socket.recv_from(&mut buffer) {
                Ok((_, from)) => {
                    report.received += 1;
                    report.queued_at_end += 1;
                    push_bounded(&mut report.sources, from);
                }
                Err(error) if is_timeout(&error) => break,
                Err(error) => push_bounded(&mut report.errors, error.raw_os_error().unwrap_or(0)),
            }
        }
        return Ok(());
    }
    socket.set_read_timeout(Some(TICK))?;
    let mut buffer = [0u8; 2048];
    let mut connected = false;
    while running() {
        let received = if mode == ServerMode::EchoPktinfo {
            recv_with_destination(socket, &mut buffer).map(|(n, from, to)| (n, from, Some(to)))
        } else {
            socket
                .recv_from(&mut buffer)
                .map(|(n, from)| (n, from, None))
        };
        let (len, from, to) = match received {
            Ok(received) => received,
            Err(error) if is_timeout(&error) => continue,
            // A connected socket reports ICMP errors about its peer here: keep serving.
            Err(error) => {
                push_bounded(&mut report.errors, error.raw_os_error().unwrap_or(0));
                continue;
            }
        };
        report.received += 1;
        push_bounded(&mut report.sources, from);
        let payload = &buffer[..len];
        let sent = match mode {
            ServerMode::Echo => socket.send_to(payload, from),
            ServerMode::EchoPktinfo => match to {
                Some(to) => send_from(socket, payload, from, to),
                None => continue,
            },
            ServerMode::ConnectFirstPeer => {
                if !connected {
                    // netcat: recvfrom, then connect() to the sender (seed 001's strace).
                    socket.connect(from)?;
                    connected = true;
                }
                socket.send(payload)
            }
            ServerMode::Answer { bytes, .. } => {
                socket.send_to(&ANSWER[..bytes.min(ANSWER.len())], from)
            }
            ServerMode::Sink { .. } => continue,
        };
        match sent {
            Ok(_) => report.replies_sent += 1,
            Err(error) => push_bounded(&mut report.errors, error.raw_os_error().unwrap_or(0)),
        }
    }
    Ok(())
}

/// What a client does.
#[derive(Clone, Debug, Serialize)]
pub struct ClientSpec {
    /// Local address to bind; the unspecified address with port 0 leaves both to the kernel.
    pub bind: SocketAddr,
    pub target: SocketAddr,
    /// connect() first (as netcat and most clients do), so that ICMP errors surface as errno
    /// values and only replies from `target` are accepted.
    pub connect: bool,
    /// Datagrams to send (at most `MAX_DATAGRAMS`).
    pub count: usize,
    /// Pause between datagrams.
    pub interval: Duration,
    /// How long to wait for a reply after each datagram (zero: do not wait).
    pub reply_timeout: Duration,
    /// IP_RECVERR/IPV6_RECVERR (as resolvers set it): every ICMP error becomes an errno, also
    /// those a connected socket otherwise ignores, such as host unreachable
    /// (`__udp4_lib_err`, net/ipv4/udp.c: only "hard" errors without it).
    pub recverr: bool,
    /// After the last datagram, keep reading replies and errors this long (zero: close at
    /// once), for errors that come late (a neighbour resolution that gives up).
    pub linger: Duration,
}

impl ClientSpec {
    /// One connected datagram to `target` from an unbound socket, 300 ms for the reply.
    pub fn new(target: SocketAddr) -> Self {
        Self {
            bind: unspecified(target),
            target,
            connect: true,
            count: 1,
            interval: Duration::ZERO,
            reply_timeout: Duration::from_millis(300),
            recverr: false,
            linger: Duration::ZERO,
        }
    }
}

/// The wildcard address with port 0 of `like`'s family.
pub fn unspecified(like: SocketAddr) -> SocketAddr {
    if like.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ClientReport {
    pub local: Option<SocketAddr>,
    pub pid: u32,
    pub socket_inode: u64,
    pub sent: usize,
    /// Sources of the replies received, in order.
    pub replies: Vec<SocketAddr>,
    /// errno values seen by send/recv (`libc::ECONNREFUSED` = 111).
    pub errors: Vec<i32>,
}

impl ClientReport {
    pub fn received(&self) -> usize {
        self.replies.len()
    }

    pub fn refused(&self) -> bool {
        self.errors.contains(&libc::ECONNREFUSED)
    }
}

/// Runs a client in `netns` to completion (bounded by `MAX_DATAGRAMS` and `MAX_PEER_TIME`).
pub fn run_client(netns: &Netns, spec: &ClientSpec) -> anyhow::Result<ClientReport> {
    let spec = spec.clone();
    let epoch = super::netns::epoch();
    netns.enter(move || {
        let deadline = Instant::now() + MAX_PEER_TIME;
        let socket =
            UdpSocket::bind(spec.bind).with_context(|| format!("binding {}", spec.bind))?;
        // A connect() the kernel refuses (no route: ENETUNREACH) is the client's error, as a
        // failed send is.
        let connected = if spec.connect {
            socket.connect(spec.target)
        } else {
            Ok(())
        };
        if spec.recverr {
            let (level, name) = if spec.target.is_ipv4() {
                (libc::IPPROTO_IP, libc::IP_RECVERR)
            } else {
                (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
            };
            set_int_option(&socket, level, name, 1)?;
        }
        socket.set_read_timeout(Some(spec.reply_timeout.max(Duration::from_millis(1))))?;
        let mut report = ClientReport {
            local: socket.local_addr().ok(),
            pid: std::process::id(),
            socket_inode: socket_inode(&socket)?,
            ..ClientReport::default()
        };
        if let Err(error) = connected {
            let errno = error
                .raw_os_error()
                .with_context(|| format!("connecting to {}: {error}", spec.target))?;
            push_bounded(&mut report.errors, errno);
            return Ok(report);
        }
        let mut buffer = [0u8; 2048];
        for index in 0..spec.count.min(MAX_DATAGRAMS) {
            if Instant::now() >= deadline || super::netns::epoch() != epoch {
                break;
            }
            let payload = format!("udptrace lab datagram {index}");
            let sent = if spec.connect {
                socket.send(payload.as_bytes())
            } else {
                socket.send_to(payload.as_bytes(), spec.target)
            };
            match sent {
                Ok(_) => report.sent += 1,
                Err(error) => push_bounded(&mut report.errors, error.raw_os_error().unwrap_or(0)),
            }
            if !spec.reply_timeout.is_zero() {
                read_reply(&socket, &mut buffer, &mut report);
            }
            if !spec.interval.is_zero() {
                std::thread::sleep(spec.interval);
            }
        }
        let linger_end = (Instant::now() + spec.linger).min(deadline);
        while let Some(left) = linger_end.checked_duration_since(Instant::now())
            && !left.is_zero()
        {
            socket.set_read_timeout(Some(left))?;
            if !read_reply(&socket, &mut buffer, &mut report) {
                break;
            }
        }
        Ok(report)
    })
}

/// Reads one reply, or the error the socket reports instead, into `report`; `false` when the
/// read timed out.
fn read_reply(socket: &UdpSocket, buffer: &mut [u8], report: &mut ClientReport) -> bool {
    match socket.recv_from(buffer) {
        Ok((_, from)) => push_bounded(&mut report.replies, from),
        Err(error) if is_timeout(&error) => return false,
        Err(error) => push_bounded(&mut report.errors, error.raw_os_error().unwrap_or(0)),
    }
    true
}

/// Source port of `send_with_bad_checksum`'s datagrams.
pub const BAD_CHECKSUM_PORT: u16 = 40_013;

/// Sends `count` IPv4 UDP datagrams from `netns` to `target` whose UDP checksum is wrong: a
/// raw socket writes the UDP header itself (the kernel adds the IP header, raw(7)), and veth
/// leaves such packets `CHECKSUM_NONE`, so the receiver verifies the checksum in
/// `__udp4_lib_rcv` (net/ipv4/udp.c, `csum_error`) and drops them UDP_CSUM.
///
/// `min_payload` pads each payload (to at most 1,400 bytes): the kernel checks the checksum of a UDP packet of up to
/// 76 bytes (`CHECKSUM_BREAK`, include/linux/skbuff.h) on arrival in `__udp4_lib_rcv`, and
/// leaves a longer one's to the socket's reader (`udp_recvmsg`) when a socket takes it.
pub fn send_with_bad_checksum(
    netns: &Netns,
    target: SocketAddr,
    count: usize,
    min_payload: usize,
) -> anyhow::Result<ClientReport> {
    let SocketAddr::V4(target) = target else {
        bail!("bad-checksum datagrams are IPv4 only");
    };
    netns.enter(move || {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) };
        if raw < 0 {
            bail!("raw UDP socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new, valid descriptor nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(raw) };
        // The source the kernel will choose: a UDP socket connected to the target asks the
        // same route lookup, and the pseudo-header of the checksum needs it.
        let probe = UdpSocket::bind("0.0.0.0:0")?;
        probe.connect(target)?;
        let SocketAddr::V4(source) = probe.local_addr()? else {
            bail!("an IPv4 socket with a non-IPv4 address");
        };
        let mut report = ClientReport {
            local: Some(SocketAddr::V4(SocketAddrV4::new(
                *source.ip(),
                BAD_CHECKSUM_PORT,
            ))),
            pid: std::process::id(),
            socket_inode: socket_inode(&socket)?,
            ..ClientReport::default()
        };
        let destination = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(target.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        for index in 0..count.min(MAX_DATAGRAMS) {
            let mut payload = format!("udptrace lab datagram {index}").into_bytes();
            payload.resize(payload.len().max(min_payload.min(1_400)), b'.');
            let datagram = udp_with_wrong_checksum(
                SocketAddrV4::new(*source.ip(), BAD_CHECKSUM_PORT),
                target,
                &payload,
            );
            // SAFETY: valid descriptor, buffer and address of the stated lengths.
            let sent = unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    datagram.as_ptr().cast(),
                    datagram.len(),
                    0,
                    std::ptr::from_ref(&destination).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if sent < 0 {
                let error = std::io::Error::last_os_error();
                push_bounded(&mut report.errors, error.raw_os_error().unwrap_or(0));
            } else {
                report.sent += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(report)
    })
}

/// A UDP header and payload whose checksum (RFC 768) is off by one, and never 0 (which means
/// "no checksum" over IPv4 and would be accepted).
fn udp_with_wrong_checksum(source: SocketAddrV4, target: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    // Lab payloads are at most 1,400 bytes.
    let length = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
    let mut datagram = Vec::with_capacity(usize::from(length));
    datagram.extend_from_slice(&source.port().to_be_bytes());
    datagram.extend_from_slice(&target.port().to_be_bytes());
    datagram.extend_from_slice(&length.to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12 + datagram.len());
    pseudo.extend_from_slice(&source.ip().octets());
    pseudo.extend_from_slice(&target.ip().octets());
    pseudo.extend_from_slice(&[0, libc::IPPROTO_UDP as u8]);
    pseudo.extend_from_slice(&length.to_be_bytes());
    pseudo.extend_from_slice(&datagram);
    let correct = internet_checksum(&pseudo);
    let wrong = match correct.wrapping_add(1) {
        0 => 1,
        wrong => wrong,
    };
    datagram[6..8].copy_from_slice(&wrong.to_be_bytes());
    datagram
}

/// RFC 1071 one's-complement sum, complemented.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What the userland proxy did.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyReport {
    /// The listening socket (bound to the wildcard, like docker-proxy's `-host-ip 0.0.0.0`).
    pub listen: SocketAddr,
    pub socket_inode: u64,
    pub pid: u32,
    pub backend: SocketAddr,
    /// Datagrams received from clients.
    pub received: usize,
    /// The clients, as the proxy saw them (after any NAT on the way).
    pub clients: Vec<SocketAddr>,
    /// Local addresses of the per-client sockets connected to the backend.
    pub backend_sockets: Vec<SocketAddr>,
    /// Datagrams sent to the backend.
    pub forwarded: usize,
    /// Replies relayed back to clients from the listening socket.
    pub relayed: usize,
    pub errors: Vec<i32>,
}

/// A userland UDP proxy in the manner of docker-proxy (seed 004): receives on its listening
/// socket, forwards each client's datagrams to the backend from a new socket connected to it,
/// and relays the backend's replies with `sendto` on the wildcard-bound listening socket, so
/// the kernel picks their source address by route lookup: on a bridge host, the bridge's
/// address, not the address the client sent to.
pub type Proxy = Peer<ProxyReport>;

/// Clients one proxy tracks.
const MAX_PROXY_CLIENTS: usize = 64;

impl Peer<ProxyReport> {
    pub fn start(
        netns: &Netns,
        listen: SocketAddr,
        backend: SocketAddr,
        duration: Duration,
    ) -> anyhow::Result<Self> {
        let deadline = Instant::now() + duration.min(MAX_PEER_TIME);
        let (worker, started) = launch(netns, "proxy", move |ready, stop| {
            let listener = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
            listener.set_nonblocking(true)?;
            let local = listener.local_addr()?;
            let socket_inode = socket_inode(&listener)?;
            let mut report = ProxyReport {
                listen: local,
                socket_inode,
                pid: std::process::id(),
                backend,
                received: 0,
                clients: Vec::new(),
                backend_sockets: Vec::new(),
                forwarded: 0,
                relayed: 0,
                errors: Vec::new(),
            };
            let _ = ready.send(Started {
                local,
                socket_inode,
            });
            proxy(&listener, backend, deadline, stop, &mut report)?;
            Ok(report)
        })?;
        Ok(Self {
            worker,
            local: started.local,
            socket_inode: started.socket_inode,
        })
    }
}

fn proxy(
    listener: &UdpSocket,
    backend: SocketAddr,
    deadline: Instant,
    stop: &Stop,
    report: &mut ProxyReport,
) -> anyhow::Result<()> {
    // (client, socket connected to the backend for it)
    let mut sessions: Vec<(SocketAddr, UdpSocket)> = Vec::new();
    let mut buffer = [0u8; 2048];
    while Instant::now() < deadline && !stop.requested() {
        let mut fds: Vec<libc::pollfd> = std::iter::once(listener.as_raw_fd())
            .chain(sessions.iter().map(|(_, socket)| socket.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let ready = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                TICK.as_millis() as i32,
            )
        };
        if ready <= 0 {
            continue;
        }
        if fds[0].revents != 0 {
            loop {
                let (len, client) = match listener.recv_from(&mut buffer) {
                    Ok(received) => received,
                    Err(error) if is_timeout(&error) => break,
                    Err(error) => {
                        push_bounded(&mut report.errors, error.raw_os_error().unwrap_or(0));
                        break;
                    }
                };
                report.received += 1;
                let index = match sessions.iter().position(|(known, _)| *known == client) {
                    Some(index) => index,
                    None if sessions.len() < MAX_PROXY_CLIENTS => {
                        let socket = UdpSocket::bind(unspecified(backend))?;
                        socket.connect(backend)?;
                        socket.set_nonblocking(true)?;
                        push_bounded(&mut report.clients, client);
                        push_bounded(&mut report.backend_sockets, socket.local_addr()?);
                        sessions.push((client, socket));
                        sessions.len() - 1
                    }
                    None => continue,
                };
                match sessions[index].1.send(&buffer[..len]) {
                    Ok(_) => report.forwarded += 1,
                    Err(error) => {
                        push_bounded(&mut report.errors, error.raw_os_error().unwrap_or(0));
                    }
                }
            }
        }
        for (pollfd, (client, socket)) in fds[1..].iter().zip(&sessions) {
            if pollfd.revents == 0 {
                continue;
            }
            loop {
                let len = match socket.recv(&mut buffer) {
                    Ok(len) => len,
                    Err(error) if is_timeout(&error) => break,
                    Err(error) => {
                        push_bounded(&mut report.errors, error.raw_os_error().unwrap_or(0));
                        break;
                    }
                };
                // The relay: sendto from the wildcard listener, no source given.
                match listener.send_to(&buffer[..len], client) {
                    Ok(_) => report.relayed += 1,
                    Err(error) => {
                        push_bounded(&mut report.errors, error.raw_os_error().unwrap_or(0));
                    }
                }
            }
        }
    }
    Ok(())
}

/// A UDP datagram seen arriving in a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SeenDatagram {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub len: usize,
}

/// A raw IPPROTO_UDP socket in a namespace: the kernel hands it a copy of every UDP datagram
/// delivered locally (raw_local_deliver / raw6_local_deliver run before the UDP socket
/// lookup), so it sees the replies a connected socket then drops NO_SOCKET, and their real
/// source. It reads everything it is given and drains its queue before closing, so the
/// tracer never sees its copies freed as drops.
pub struct Witness {
    worker: Worker<Vec<SeenDatagram>>,
}

impl Witness {
    /// Records datagrams of the family `ipv6` whose source port is `sport` (all if `None`).
    pub fn start(
        netns: &Netns,
        ipv6: bool,
        sport: Option<u16>,
        duration: Duration,
    ) -> anyhow::Result<Self> {
        let deadline = Instant::now() + duration.min(MAX_PEER_TIME);
        let (worker, _) = launch(netns, "witness", move |ready, stop| {
            let socket = raw_udp_socket(ipv6)?;
            let _ = ready.send(Started {
                local: if ipv6 {
                    SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
                } else {
                    SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
                },
                socket_inode: socket_inode(&socket)?,
            });
            let mut seen = Vec::new();
            let mut buffer = [0u8; 2048];
            let mut watching = true;
            loop {
                if watching && (Instant::now() >= deadline || stop.requested()) {
                    // One last pass without waiting: drain, then close.
                    watching = false;
                }
                let timeout = if watching { TICK.as_millis() as i32 } else { 0 };
                let mut pollfd = libc::pollfd {
                    fd: socket.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let ready = unsafe { libc::poll(&raw mut pollfd, 1, timeout) };
                if ready <= 0 {
                    if watching {
                        continue;
                    }
                    break;
                }
                let datagram = if ipv6 {
                    recv_with_destination(&socket, &mut buffer)
                        .ok()
                        .and_then(|(len, from, to)| parse_udp6(&buffer[..len], from.ip(), to))
                } else {
                    // SAFETY: the buffer is valid for its length.
                    let len = unsafe {
                        libc::recv(
                            socket.as_raw_fd(),
                            buffer.as_mut_ptr().cast(),
                            buffer.len(),
                            libc::MSG_DONTWAIT,
                        )
                    };
                    usize::try_from(len)
                        .ok()
                        .and_then(|len| parse_udp4(&buffer[..len]))
                };
                if let Some(datagram) = datagram
                    && sport.is_none_or(|port| datagram.source.port() == port)
                {
                    push_bounded(&mut seen, datagram);
                }
            }
            Ok(seen)
        })?;
        Ok(Self { worker })
    }

    /// Stops (after draining what arrived) and returns the datagrams seen.
    pub fn stop(mut self) -> anyhow::Result<Vec<SeenDatagram>> {
        self.worker.finish(true)
    }
}

fn raw_udp_socket(ipv6: bool) -> anyhow::Result<OwnedFd> {
    let family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_UDP,
        )
    };
    if fd < 0 {
        bail!("raw UDP socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    if ipv6 {
        // An IPv6 raw socket gets no IP header: the destination comes as IPV6_PKTINFO.
        set_int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
    }
    Ok(socket)
}

/// An IPv4 packet (header included, as raw IPv4 sockets receive it) carrying UDP.
fn parse_udp4(packet: &[u8]) -> Option<SeenDatagram> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let udp = packet.get(ihl..ihl + 8)?;
    let address = |at: usize| -> Option<IpAddr> {
        let bytes: [u8; 4] = packet.get(at..at + 4)?.try_into().ok()?;
        Some(IpAddr::from(bytes))
    };
    Some(SeenDatagram {
        source: SocketAddr::new(address(12)?, u16::from_be_bytes([udp[0], udp[1]])),
        destination: SocketAddr::new(address(16)?, u16::from_be_bytes([udp[2], udp[3]])),
        len: usize::from(u16::from_be_bytes([udp[4], udp[5]])).saturating_sub(8),
    })
}

/// A UDP header and payload as raw IPv6 sockets receive it, with the addresses from the
/// socket address and IPV6_PKTINFO.
fn parse_udp6(udp: &[u8], source: IpAddr, destination: IpAddr) -> Option<SeenDatagram> {
    let header = udp.get(..8)?;
    Some(SeenDatagram {
        source: SocketAddr::new(source, u16::from_be_bytes([header[0], header[1]])),
        destination: SocketAddr::new(destination, u16::from_be_bytes([header[2], header[3]])),
        len: udp.len() - 8,
    })
}

/// A namespace's UDP counters: /proc/net/snmp `Udp:` and /proc/net/snmp6 `Udp6*` (names
/// without the `Udp6` prefix), e.g. `InDatagrams`, `NoPorts`, `InErrors`, `RcvbufErrors`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UdpCounters {
    pub udp: BTreeMap<String, u64>,
    pub udp6: BTreeMap<String, u64>,
}

impl UdpCounters {
    pub fn parse(snmp: &str, snmp6: &str) -> Self {
        let mut counters = Self::default();
        let mut rows = snmp.lines().filter(|line| line.starts_with("Udp: "));
        if let (Some(names), Some(values)) = (rows.next(), rows.next()) {
            for (name, value) in names
                .split_whitespace()
                .zip(values.split_whitespace())
                .skip(1)
            {
                if let Ok(value) = value.parse() {
                    counters.udp.insert(name.to_owned(), value);
                }
            }
        }
        for line in snmp6.lines() {
            let mut fields = line.split_whitespace();
            if let (Some(name), Some(value)) = (fields.next(), fields.next())
                && let Some(name) = name.strip_prefix("Udp6")
                && let Ok(value) = value.parse()
            {
                counters.udp6.insert(name.to_owned(), value);
            }
        }
        counters
    }

    pub fn get(&self, ipv6: bool, counter: &str) -> Option<u64> {
        if ipv6 { &self.udp6 } else { &self.udp }
            .get(counter)
            .copied()
    }

    /// How much `counter` grew since `before` (0 if absent).
    pub fn since(&self, before: &Self, ipv6: bool, counter: &str) -> u64 {
        self.get(ipv6, counter)
            .unwrap_or(0)
            .saturating_sub(before.get(ipv6, counter).unwrap_or(0))
    }
}

/// Reads `netns`'s UDP and UDP6 counters from a thread inside it (through
/// /proc/thread-self/net: /proc/net follows the thread group leader's namespace).
pub fn udp_counters(netns: &Netns) -> anyhow::Result<UdpCounters> {
    netns.enter(|| {
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")
            .context("reading /proc/thread-self/net/snmp")?;
        // Absent when IPv6 is disabled.
        let snmp6 = std::fs::read_to_string("/proc/thread-self/net/snmp6").unwrap_or_default();
        Ok(UdpCounters::parse(&snmp, &snmp6))
    })
}

fn set_int_option(socket: &impl AsRawFd, level: i32, name: i32, value: i32) -> anyhow::Result<()> {
    // SAFETY: valid fd, pointer to an int of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!(
            "setsockopt({level}, {name}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn get_int_option(socket: &impl AsRawFd, level: i32, name: i32) -> anyhow::Result<i32> {
    let mut value = 0i32;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: valid fd, pointers to an int and its length.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        bail!(
            "getsockopt({level}, {name}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(value)
}

/// The socket's inode (`socket:[N]` in /proc/PID/fd, `ino` in `ss -e`, what the tracer reads
/// from `sk->sk_socket->file`).
fn socket_inode(socket: &impl AsRawFd) -> anyhow::Result<u64> {
    // SAFETY: zeroed stat is valid; fstat fills it for a valid fd.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(socket.as_raw_fd(), &raw mut stat) } != 0 {
        bail!("fstat: {}", std::io::Error::last_os_error());
    }
    Ok(stat.st_ino)
}

fn enable_pktinfo(socket: &UdpSocket, ipv6: bool) -> anyhow::Result<()> {
    if ipv6 {
        set_int_option(socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
        // A dual-stack [::] socket receives IPv4 as mapped addresses with IP_PKTINFO.
        let _ = set_int_option(socket, libc::IPPROTO_IP, libc::IP_PKTINFO, 1);
        Ok(())
    } else {
        set_int_option(socket, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
    }
}

/// `recvmsg` returning the datagram's destination address from its IP_PKTINFO /
/// IPV6_PKTINFO control message.
fn recv_with_destination(
    socket: &impl AsRawFd,
    buffer: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, IpAddr)> {
    // SAFETY: zeroed sockaddr_storage/msghdr are valid; the iovec and control buffer outlive
    // the call; CMSG macros walk the control buffer the kernel filled.
    unsafe {
        let mut from: libc::sockaddr_storage = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: buffer.len(),
        };
        let mut control = [0u64; 16];
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_name = (&raw mut from).cast();
        message.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
        message.msg_iov = &raw mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        // socklen_t on musl, size_t on glibc.
        message.msg_controllen = size_of_val(&control) as _;
        let n = libc::recvmsg(socket.as_raw_fd(), &raw mut message, 0);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let source = sockaddr_to_std(&from).ok_or_else(|| std::io::Error::other("bad source"))?;
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const message);
        while !cmsg.is_null() {
            let header = &*cmsg;
            if header.cmsg_level == libc::IPPROTO_IP && header.cmsg_type == libc::IP_PKTINFO {
                let info = libc::CMSG_DATA(cmsg)
                    .cast::<libc::in_pktinfo>()
                    .read_unaligned();
                let destination = IpAddr::from(u32::from_be(info.ipi_addr.s_addr).to_be_bytes());
                return Ok((n as usize, source, destination));
            }
            if header.cmsg_level == libc::IPPROTO_IPV6 && header.cmsg_type == libc::IPV6_PKTINFO {
                let info = libc::CMSG_DATA(cmsg)
                    .cast::<libc::in6_pktinfo>()
                    .read_unaligned();
                return Ok((n as usize, source, IpAddr::from(info.ipi6_addr.s6_addr)));
            }
            cmsg = libc::CMSG_NXTHDR(&raw const message, cmsg);
        }
        Err(std::io::Error::other("no pktinfo control message"))
    }
}

/// `sendmsg` to `to` with `source` as the datagram's source address (IP_PKTINFO
/// `ipi_spec_dst` / IPV6_PKTINFO `ipi6_addr`, man 7 ip / RFC 3542).
fn send_from(
    socket: &UdpSocket,
    payload: &[u8],
    to: SocketAddr,
    source: IpAddr,
) -> std::io::Result<usize> {
    // An IPv4 request on a dual-stack [::] socket: the reply goes out as IPv6 with a mapped
    // source, which IPV6_PKTINFO accepts.
    let source = match (to, source) {
        (SocketAddr::V6(_), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
        _ => source,
    };
    // SAFETY: as in recv_with_destination; the control buffer is sized and aligned for one
    // cmsg carrying a pktinfo struct.
    unsafe {
        let (mut name, name_len) = std_to_sockaddr(to);
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr().cast_mut().cast(),
            iov_len: payload.len(),
        };
        let mut control = [0u64; 8];
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_name = (&raw mut name).cast();
        message.msg_namelen = name_len;
        message.msg_iov = &raw mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        match source {
            IpAddr::V4(v4) => {
                message.msg_controllen =
                    libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as _;
                let cmsg = libc::CMSG_FIRSTHDR(&raw const message);
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
                let mut info: libc::in_pktinfo = std::mem::zeroed();
                info.ipi_spec_dst.s_addr = u32::from_ne_bytes(v4.octets());
                libc::CMSG_DATA(cmsg)
                    .cast::<libc::in_pktinfo>()
                    .write_unaligned(info);
            }
            IpAddr::V6(v6) => {
                message.msg_controllen =
                    libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as _;
                let cmsg = libc::CMSG_FIRSTHDR(&raw const message);
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as _;
                let mut info: libc::in6_pktinfo = std::mem::zeroed();
                info.ipi6_addr.s6_addr = v6.octets();
                libc::CMSG_DATA(cmsg)
                    .cast::<libc::in6_pktinfo>()
                    .write_unaligned(info);
            }
        }
        let n = libc::sendmsg(socket.as_raw_fd(), &raw const message, 0);
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: the family field says which struct the storage holds.
    unsafe {
        match i32::from(storage.ss_family) {
            libc::AF_INET => {
                let v4 = &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in>();
                Some(SocketAddr::from((
                    u32::from_be(v4.sin_addr.s_addr).to_be_bytes(),
                    u16::from_be(v4.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let v6 = &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in6>();
                Some(SocketAddr::from((
                    v6.sin6_addr.s6_addr,
                    u16::from_be(v6.sin6_port),
                )))
            }
            _ => None,
        }
    }
}

fn std_to_sockaddr(address: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed storage is valid; we write the matching struct into it.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        match address {
            SocketAddr::V4(v4) => {
                let sin = &mut *(&raw mut storage).cast::<libc::sockaddr_in>();
                sin.sin_family = libc::AF_INET as u16;
                sin.sin_port = v4.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                (storage, size_of::<libc::sockaddr_in>() as u32)
            }
            SocketAddr::V6(v6) => {
                let sin6 = &mut *(&raw mut storage).cast::<libc::sockaddr_in6>();
                sin6.sin6_family = libc::AF_INET6 as u16;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_addr.s6_addr = v6.ip().octets();
                (storage, size_of::<libc::sockaddr_in6>() as u32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{netns::veth, root_or_skip};

    fn address(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn parses_udp_counters() {
        let snmp = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                    Udp: 10 2 3 4 5\nUdpLite: InDatagrams NoPorts\nUdpLite: 7 8\n";
        let snmp6 = "Udp6InDatagrams \t7\nUdp6NoPorts \t1\nUdpLite6InDatagrams \t3\n";
        let counters = UdpCounters::parse(snmp, snmp6);
        assert_eq!(counters.get(false, "NoPorts"), Some(2));
        assert_eq!(counters.get(false, "RcvbufErrors"), Some(5));
        assert_eq!(counters.get(true, "InDatagrams"), Some(7));
        assert_eq!(counters.get(true, "NoPorts"), Some(1));
        assert_eq!(counters.udp6.len(), 2, "UdpLite6 is not Udp6");
        let mut later = counters.clone();
        later.udp.insert("NoPorts".into(), 9);
        assert_eq!(later.since(&counters, false, "NoPorts"), 7);
        assert_eq!(later.since(&counters, false, "Missing"), 0);
    }

    #[test]
    fn parses_raw_datagrams() {
        let mut packet = vec![0x45, 0, 0, 31, 0, 0, 0, 0, 64, 17, 0, 0];
        packet.extend([192, 0, 2, 1, 192, 0, 2, 2]);
        packet.extend([0x13, 0x89, 0x9c, 0x40, 0, 11, 0, 0, b'a', b'b', b'c']);
        assert_eq!(
            parse_udp4(&packet),
            Some(SeenDatagram {
                source: address("192.0.2.1:5001"),
                destination: address("192.0.2.2:40000"),
                len: 3,
            })
        );
        assert_eq!(parse_udp4(&packet[..20]), None);
        let udp = [0x13, 0x89, 0x9c, 0x40, 0, 9, 0, 0, b'x'];
        let seen = parse_udp6(
            &udp,
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(seen.source, address("[2001:db8::1]:5001"));
        assert_eq!(seen.destination, address("[2001:db8::2]:40000"));
        assert_eq!(seen.len, 1);
    }

    /// Two namespaces over a veth: 203.0.113.1 / 2001:db8:5::1 (a) and 203.0.113.2 /
    /// 2001:db8:5::2 (b).
    fn pair() -> (Netns, Netns) {
        let a = Netns::create("peer-a").unwrap();
        let b = Netns::create("peer-b").unwrap();
        veth(&a, "eth0", &b, "eth0").unwrap();
        a.addr("eth0", "203.0.113.1/24").unwrap();
        b.addr("eth0", "203.0.113.2/24").unwrap();
        a.addr("eth0", "2001:db8:5::1/64").unwrap();
        b.addr("eth0", "2001:db8:5::2/64").unwrap();
        (a, b)
    }

    #[test]
    fn echo_servers_answer_and_report_their_socket() {
        if !root_or_skip() {
            return;
        }
        let (a, b) = pair();
        for (mode, bind, target) in [
            (ServerMode::Echo, "0.0.0.0:6001", "203.0.113.2:6001"),
            (ServerMode::EchoPktinfo, "0.0.0.0:6002", "203.0.113.2:6002"),
            (ServerMode::EchoPktinfo, "[::]:6003", "[2001:db8:5::2]:6003"),
            // A dual-stack [::] socket answering IPv4 with IPV6_PKTINFO (mapped addresses).
            (ServerMode::EchoPktinfo, "[::]:6004", "203.0.113.2:6004"),
        ] {
            let server = Server::start(&b, address(bind), mode, Duration::from_secs(3)).unwrap();
            assert_eq!(server.local().port(), address(bind).port());
            assert!(server.socket_inode() > 0);
            let mut spec = ClientSpec::new(address(target));
            spec.count = 2;
            let client = run_client(&a, &spec).unwrap();
            let report = server.stop().unwrap();
            assert_eq!(client.sent, 2);
            assert_eq!(client.received(), 2, "{mode:?} {target}: {client:?}");
            // Replies come from the address asked, also from a dual-stack [::] socket
            // answering IPv4 (the mapped source given back with IPV6_PKTINFO).
            assert!(
                client.replies.iter().all(|from| *from == address(target)),
                "{mode:?} {target}: {client:?}"
            );
            assert_eq!(report.received, 2);
            assert_eq!(report.replies_sent, 2);
            assert_eq!(report.pid, std::process::id());
            assert!(report.socket_inode > 0);
            assert_eq!(report.sources.len(), 2);
            assert!(client.socket_inode > 0 && client.socket_inode != report.socket_inode);
        }
    }

    #[test]
    fn a_server_that_cannot_bind_says_why() {
        if !root_or_skip() {
            return;
        }
        let (_a, b) = pair();
        // 192.0.2.99 is not an address of b.
        let error = Server::start(
            &b,
            address("192.0.2.99:6010"),
            ServerMode::Echo,
            Duration::from_secs(1),
        )
        .err()
        .unwrap();
        assert!(
            format!("{error:#}").contains("binding 192.0.2.99:6010"),
            "{error:#}"
        );
    }

    #[test]
    fn a_reading_sink_reads_without_answering() {
        if !root_or_skip() {
            return;
        }
        let (a, b) = pair();
        let server = Server::start(
            &b,
            address("203.0.113.2:6020"),
            ServerMode::Sink {
                rcvbuf: 65_536,
                read: true,
            },
            Duration::from_secs(3),
        )
        .unwrap();
        let mut spec = ClientSpec::new(address("203.0.113.2:6020"));
        spec.count = 5;
        spec.reply_timeout = Duration::from_millis(20);
        let client = run_client(&a, &spec).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let report = server.stop().unwrap();
        assert_eq!(report.received, 5);
        assert_eq!(report.queued_at_end, 0);
        assert_eq!(report.replies_sent, 0);
        assert!(report.rcvbuf >= 65_536, "the kernel doubles SO_RCVBUF");
        assert_eq!(client.received(), 0);
        assert!(client.errors.is_empty());
    }

    #[test]
    fn counters_match_the_kernel_and_the_witness_sees_drops() {
        if !root_or_skip() {
            return;
        }
        let (a, b) = pair();
        b.sysctl("net.ipv4.icmp_ratelimit", "0").unwrap();
        let before = udp_counters(&b).unwrap();
        let witness = Witness::start(&b, false, None, Duration::from_secs(3)).unwrap();
        let mut spec = ClientSpec::new(address("203.0.113.2:6030"));
        spec.count = 3;
        spec.reply_timeout = Duration::from_millis(100);
        let client = run_client(&a, &spec).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let seen = witness.stop().unwrap();
        let after = udp_counters(&b).unwrap();
        assert!(client.refused(), "{client:?}");
        assert_eq!(after.since(&before, false, "NoPorts"), 3);
        let to_port: Vec<_> = seen
            .iter()
            .filter(|d| d.destination == address("203.0.113.2:6030"))
            .collect();
        assert_eq!(to_port.len(), 3, "{seen:?}");
        assert!(to_port.iter().all(|d| Some(d.source) == client.local));
    }

    /// `cleanup_all` deletes every namespace of the process, so it runs in a child process
    /// (this test binary, re-run on `child_cleanup_all` alone) where no other test can lose
    /// its namespaces.
    #[test]
    fn cleanup_all_removes_namespaces_and_stops_peers() {
        if !root_or_skip() {
            return;
        }
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "lab::peers::tests::child_cleanup_all",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("UDPT_LAB_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }

    #[test]
    #[ignore = "run by cleanup_all_removes_namespaces_and_stops_peers in a child process"]
    fn child_cleanup_all() {
        if std::env::var_os("UDPT_LAB_CHILD").is_none() {
            return;
        }
        let (a, b) = pair();
        let server = Server::start(
            &b,
            address("203.0.113.2:6050"),
            ServerMode::Echo,
            Duration::from_secs(20),
        )
        .unwrap();
        let started = Instant::now();
        let mut removed = crate::lab::cleanup_all();
        removed.sort();
        let mut expected = vec![a.name.clone(), b.name.clone()];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(!a.path.exists() && !b.path.exists());
        // The server noticed (the Ctrl-C path must not wait for the peers' deadlines).
        server.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        // A lab started afterwards runs normally.
        let (c, d) = pair();
        let server = Server::start(
            &d,
            address("203.0.113.2:6051"),
            ServerMode::Echo,
            Duration::from_secs(3),
        )
        .unwrap();
        let client = run_client(&c, &ClientSpec::new(address("203.0.113.2:6051"))).unwrap();
        assert_eq!(client.received(), 1);
        assert_eq!(server.stop().unwrap().received, 1);
    }

    #[test]
    fn the_proxy_relays_from_its_listening_socket() {
        if !root_or_skip() {
            return;
        }
        let (a, b) = pair();
        // The backend on b's loopback, the proxy on b's veth address.
        let backend = Server::start(
            &b,
            address("127.0.0.1:6040"),
            ServerMode::Echo,
            Duration::from_secs(3),
        )
        .unwrap();
        let proxy = Proxy::start(
            &b,
            address("0.0.0.0:6041"),
            address("127.0.0.1:6040"),
            Duration::from_secs(3),
        )
        .unwrap();
        let mut spec = ClientSpec::new(address("203.0.113.2:6041"));
        spec.count = 2;
        let client = run_client(&a, &spec).unwrap();
        let proxied = proxy.stop().unwrap();
        let served = backend.stop().unwrap();
        assert_eq!(client.received(), 2, "{client:?} {proxied:?}");
        assert_eq!(proxied.received, 2);
        assert_eq!(proxied.forwarded, 2);
        assert_eq!(proxied.relayed, 2);
        assert_eq!(proxied.clients, vec![client.local.unwrap()]);
        assert_eq!(served.received, 2);
        assert_eq!(served.sources, vec![proxied.backend_sockets[0]; 2]);
    }

    #[test]
    fn internet_checksum_of_rfc_1071s_example() {
        // RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    #[test]
    fn corrupted_datagrams_fail_the_receivers_check() {
        let source = SocketAddrV4::new([192, 0, 2, 1].into(), BAD_CHECKSUM_PORT);
        let target = SocketAddrV4::new([192, 0, 2, 2].into(), 5013);
        for payload in [&b""[..], b"x", b"udptrace lab datagram 0"] {
            let datagram = udp_with_wrong_checksum(source, target, payload);
            assert_eq!(datagram.len(), 8 + payload.len());
            assert_ne!(&datagram[6..8], &[0, 0], "0 would mean no checksum");
            // The receiver sums pseudo-header and datagram, checksum included: a correct one
            // sums to 0xffff (its complement, what `internet_checksum` returns, is 0).
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&[192, 0, 2, 1, 192, 0, 2, 2, 0, 17]);
            pseudo.extend_from_slice(&u16::try_from(datagram.len()).unwrap().to_be_bytes());
            pseudo.extend_from_slice(&datagram);
            assert_ne!(internet_checksum(&pseudo), 0, "{payload:?}");
            // And it is off by exactly one from the correct checksum.
            let mut fixed = datagram.clone();
            let wrong = u16::from_be_bytes([datagram[6], datagram[7]]);
            fixed[6..8].copy_from_slice(&wrong.wrapping_sub(1).to_be_bytes());
            let mut pseudo = pseudo[..12].to_vec();
            pseudo.extend_from_slice(&fixed);
            if wrong != 1 {
                assert_eq!(internet_checksum(&pseudo), 0, "{payload:?}");
            }
        }
    }
}
