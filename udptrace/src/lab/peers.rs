//! Built-in UDP peers, each on a thread inside a lab namespace, bounded in time and count.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::netns::Netns;

/// How a server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerMode {
    /// `recvfrom` + `sendto` the sender: the kernel picks the reply's source address.
    Echo,
    /// IP_PKTINFO / IPV6_RECVPKTINFO: replies from the address the request was sent to (the
    /// correct way for a wildcard-bound server).
    EchoPktinfo,
    /// netcat `-u -l`: `connect()`s to its first peer, then echoes with `send`.
    ConnectFirstPeer,
    /// Never reads, with a small receive buffer: overflows.
    Sink { rcvbuf: usize },
}

#[derive(Clone, Debug, Default)]
pub struct ServerReport {
    pub received: usize,
    pub sources: Vec<SocketAddr>,
    /// Local address of the socket at the end (changed by `connect()` in ConnectFirstPeer).
    pub local_after: Option<SocketAddr>,
}

pub struct Server {
    handle: JoinHandle<anyhow::Result<ServerReport>>,
}

impl Server {
    /// Binds a server in `netns`; returns once the socket exists, runs for `duration`.
    pub fn start(
        netns: &Netns,
        bind: SocketAddr,
        mode: ServerMode,
        duration: Duration,
    ) -> anyhow::Result<Self> {
        let (bound, ready) = mpsc::channel();
        let handle = netns.spawn(move || {
            let socket = UdpSocket::bind(bind).with_context(|| format!("binding {bind}"));
            let socket = match socket {
                Ok(socket) => socket,
                Err(error) => {
                    let _ = bound.send(Err(error.to_string()));
                    return Err(error);
                }
            };
            if let ServerMode::Sink { rcvbuf } = mode {
                set_int_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf as i32)?;
            }
            if mode == ServerMode::EchoPktinfo {
                enable_pktinfo(&socket, bind.is_ipv6())?;
            }
            let _ = bound.send(Ok(()));
            serve(&socket, mode, Instant::now() + duration)
        })?;
        match ready.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(Self { handle }),
            Ok(Err(error)) => bail!("server did not start: {error}"),
            Err(_) => bail!("server did not start within 5 s"),
        }
    }

    pub fn join(self) -> anyhow::Result<ServerReport> {
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("server thread panicked"))?
    }
}

fn serve(socket: &UdpSocket, mode: ServerMode, deadline: Instant) -> anyhow::Result<ServerReport> {
    let mut report = ServerReport::default();
    if let ServerMode::Sink { .. } = mode {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        report.local_after = socket.local_addr().ok();
        return Ok(report);
    }
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buffer = [0u8; 2048];
    let mut connected = false;
    while Instant::now() < deadline {
        let received = if mode == ServerMode::EchoPktinfo {
            recv_with_destination(socket, &mut buffer).map(|(n, from, to)| (n, from, Some(to)))
        } else {
            socket
                .recv_from(&mut buffer)
                .map(|(n, from)| (n, from, None))
        };
        let (len, from, to) = match received {
            Ok(received) => received,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            // A connected socket reports ICMP errors about its peer here: keep serving.
            Err(_) => continue,
        };
        report.received += 1;
        report.sources.push(from);
        let payload = &buffer[..len];
        let _ = match mode {
            ServerMode::Echo => socket.send_to(payload, from),
            ServerMode::EchoPktinfo => send_from(socket, payload, from, to.expect("pktinfo")),
            ServerMode::ConnectFirstPeer => {
                if !connected {
                    // netcat: after the first datagram, connect() to its sender. The kernel
                    // picks the local address by route lookup (__ip4_datagram_connect).
                    socket.connect(from)?;
                    connected = true;
                }
                socket.send(payload)
            }
            ServerMode::Sink { .. } => unreachable!("handled above"),
        };
    }
    report.local_after = socket.local_addr().ok();
    Ok(report)
}

fn set_int_option(socket: &UdpSocket, level: i32, name: i32, value: i32) -> anyhow::Result<()> {
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

fn enable_pktinfo(socket: &UdpSocket, ipv6: bool) -> anyhow::Result<()> {
    if ipv6 {
        set_int_option(socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)
    } else {
        set_int_option(socket, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
    }
}

/// `recvmsg` returning the datagram's destination address from its IP_PKTINFO /
/// IPV6_PKTINFO control message.
fn recv_with_destination(
    socket: &UdpSocket,
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
        message.msg_controllen = size_of_val(&control);
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
/// `ipi_spec_dst` / IPV6_PKTINFO `ipi6_addr`).
fn send_from(
    socket: &UdpSocket,
    payload: &[u8],
    to: SocketAddr,
    source: IpAddr,
) -> std::io::Result<usize> {
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
        let cmsg_space;
        match source {
            IpAddr::V4(v4) => {
                cmsg_space = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32);
                message.msg_controllen = cmsg_space as usize;
                let cmsg = libc::CMSG_FIRSTHDR(&raw const message);
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize;
                let mut info: libc::in_pktinfo = std::mem::zeroed();
                info.ipi_spec_dst.s_addr = u32::from_ne_bytes(v4.octets());
                libc::CMSG_DATA(cmsg)
                    .cast::<libc::in_pktinfo>()
                    .write_unaligned(info);
            }
            IpAddr::V6(v6) => {
                cmsg_space = libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32);
                message.msg_controllen = cmsg_space as usize;
                let cmsg = libc::CMSG_FIRSTHDR(&raw const message);
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as usize;
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

/// What a client does.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    pub bind: SocketAddr,
    pub target: SocketAddr,
    /// connect() first (as netcat and most clients do), so that ICMP errors surface.
    pub connect: bool,
    pub count: usize,
    /// Pause between datagrams.
    pub interval: Duration,
    /// How long to wait for each reply.
    pub reply_timeout: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct ClientReport {
    pub local: Option<SocketAddr>,
    pub sent: usize,
    /// Sources of the replies received.
    pub replies: Vec<SocketAddr>,
    /// errno values seen by send/recv (111 = ECONNREFUSED).
    pub errors: Vec<i32>,
}

/// Runs a client in `netns` to completion.
pub fn run_client(netns: &Netns, spec: &ClientSpec) -> anyhow::Result<ClientReport> {
    let spec = spec.clone();
    netns.enter(move || {
        let socket =
            UdpSocket::bind(spec.bind).with_context(|| format!("binding {}", spec.bind))?;
        if spec.connect {
            socket.connect(spec.target)?;
        }
        socket.set_read_timeout(Some(spec.reply_timeout.max(Duration::from_millis(1))))?;
        let mut report = ClientReport {
            local: socket.local_addr().ok(),
            ..ClientReport::default()
        };
        let mut buffer = [0u8; 2048];
        for index in 0..spec.count {
            let payload = format!("udptrace lab datagram {index}");
            let sent = if spec.connect {
                socket.send(payload.as_bytes())
            } else {
                socket.send_to(payload.as_bytes(), spec.target)
            };
            match sent {
                Ok(_) => report.sent += 1,
                Err(error) => report.errors.extend(error.raw_os_error()),
            }
            if !spec.reply_timeout.is_zero() {
                match socket.recv_from(&mut buffer) {
                    Ok((_, from)) => report.replies.push(from),
                    Err(error) => {
                        if let Some(errno) = error.raw_os_error()
                            && errno != libc::EAGAIN
                        {
                            report.errors.push(errno);
                        }
                    }
                }
            }
            if !spec.interval.is_zero() {
                std::thread::sleep(spec.interval);
            }
        }
        Ok(report)
    })
}
