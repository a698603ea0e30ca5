//! The Docker incidents with a real Docker (Debian's docker.io): a private dockerd running
//! inside a network namespace of the lab (`DockerHost`), so that its bridge docker0, its
//! iptables rules and its docker-proxy processes live there and vanish with it; containers
//! made from an empty imported image with the host's binaries bind-mounted read-only (no
//! registry is reachable), talking with netcat. Addresses are documentation ranges: docker0
//! 198.51.100.1/24, address pools in 203.0.113.0/24, the "host address" clients use
//! 192.0.2.1 on the namespace's loopback.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::unix::fs::MetadataExt as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::{
    dockerd::{self, Network, PrivateDocker},
    netns::{Netns, NetnsInfo},
    peers::{Server, ServerMode, ServerReport},
    scenarios::{PEER_LIFETIME, SETTLE},
};

/// The address containers write to: the host's, not the bridge's.
pub const HOST_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// docker0's address (`--bip`): what the kernel picks as the source of a reply routed out of
/// docker0 (net/ipv4/route.c `inet_select_addr` through the route's preferred source).
pub const BRIDGE_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const BIP: &str = "198.51.100.1/24";
const ADDRESS_POOL: &str = "203.0.113.0/24";
/// The image: an empty root file system; the containers bind-mount the host's binaries.
pub const IMAGE: &str = "udptrace-lab:empty";
/// Mounted read-only into every lab container (the image is empty): /bin/sh, nc and their
/// libraries. The runtime tests' Podman and containerd containers mount the same.
pub const HOST_BINARIES: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/sbin",
    "/etc/alternatives",
];
/// The port a published server container listens on inside its namespace.
const CONTAINER_PORT: u16 = 5000;
/// Requests each client container sends.
pub const REQUESTS: usize = 3;
/// Bound on waiting for a container's socket to exist.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// A private dockerd in its own network namespace. Dropping it removes the containers, stops
/// the daemon (and with it containerd and docker-proxy), then deletes the namespace, taking
/// docker0, the veth pairs and every iptables rule with it.
pub struct DockerHost {
    // Field order is drop order: the daemon before its namespace.
    pub docker: PrivateDocker,
    pub netns: Netns,
}

impl DockerHost {
    /// What is missing on this machine for the Docker lab, if anything (one line).
    pub fn missing() -> Option<String> {
        dockerd::missing().or_else(|| {
            ["/usr/sbin/docker-proxy", "/usr/bin/nc"]
                .into_iter()
                .find(|p| !std::path::Path::new(p).exists())
                .map(|p| format!("{p} is missing: install docker.io and netcat-openbsd"))
        })
    }

    /// Creates the namespace, starts dockerd in it (about 0.6 s) and imports the image.
    pub fn start() -> anyhow::Result<Self> {
        if let Some(missing) = Self::missing() {
            bail!(missing);
        }
        let netns = Netns::create("dockerhost")?;
        netns.addr("lo", &format!("{HOST_ADDRESS}/32"))?;
        // Every request is answered even when some ICMP error came just before.
        netns.sysctl("net.ipv4.icmp_ratelimit", "0")?;
        let dir = std::env::temp_dir().join(format!("{}-docker", netns.name));
        let docker = PrivateDocker::start(
            &dir,
            &Network::Bridge {
                netns: &netns.path,
                bip: BIP,
                pool: ADDRESS_POOL,
            },
        )?;
        docker.import(IMAGE, &[])?;
        Ok(Self { docker, netns })
    }

    /// `docker run -d --name NAME [EXTRA...] IMAGE /bin/sh -c SCRIPT`, with the host's
    /// binaries mounted read-only; the container's facts once it runs.
    pub fn run(&self, name: &str, extra: &[&str], script: &str) -> anyhow::Result<Container> {
        let mounts: Vec<String> = HOST_BINARIES
            .iter()
            .map(|dir| format!("{dir}:{dir}:ro"))
            .collect();
        let mut args = vec!["run", "-d", "--name", name];
        for mount in &mounts {
            args.extend(["-v", mount]);
        }
        args.extend(extra);
        args.extend([IMAGE, "/bin/sh", "-c", script]);
        let id = self.docker.run(&args)?;
        self.facts(name, id)
    }

    /// `docker restart`: the same container with a new first process in a new network
    /// namespace; its facts then. Killed at once (`-t 0`: a shell as a namespace's first
    /// process ignores SIGTERM).
    pub fn restart(&self, container: &Container) -> anyhow::Result<Container> {
        self.docker.run(&["restart", "-t", "0", &container.id])?;
        self.facts(&container.name, container.id.clone())
    }

    /// A running container's pid and network namespace.
    fn facts(&self, name: &str, id: String) -> anyhow::Result<Container> {
        let pid: u32 = self
            .docker
            .run(&["inspect", "-f", "{{.State.Pid}}", &id])?
            .parse()
            .context("container pid")?;
        let netns_inode = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .with_context(|| format!("network namespace of container {name}"))?
            .ino() as u32;
        Ok(Container {
            name: name.to_owned(),
            id,
            pid,
            netns_inode,
        })
    }

    pub fn remove(&self, container: &Container) -> anyhow::Result<()> {
        self.docker.run(&["rm", "-f", &container.id]).map(drop)
    }
}

/// A container of a scenario, as udptrace's output can be checked against.
#[derive(Clone, Debug, Serialize)]
pub struct Container {
    pub name: String,
    /// The full id (udptrace shows its first 12 characters, as `docker ps` does).
    pub id: String,
    /// Its first process, on the host.
    pub pid: u32,
    /// `net->ns.inum` of its network namespace.
    pub netns_inode: u32,
}

/// Who answers the client container.
#[derive(Clone, Copy, Debug)]
enum Replier {
    /// The lab's server on the Docker host's wildcard address (seeds 000/003).
    HostServer(ServerMode),
    /// A netcat echo server in a container publishing its port on `host_ip` with the
    /// userland proxy: docker-proxy listens on `host_ip:PORT` and relays (seed 004).
    Published { host_ip: &'static str },
}

pub struct DockerScenario {
    pub name: &'static str,
    pub description: &'static str,
    pub diagnosis: &'static str,
    pub expected: &'static [&'static str],
    /// The port the client container writes to on the host address.
    pub port: u16,
    replier: Replier,
}

pub const DOCKER_SCENARIOS: &[DockerScenario] = &[
    DockerScenario {
        name: "docker-wildcard-reply",
        description: "seeds 000/003 with a real Docker: a server bound to 0.0.0.0:5020 on the Docker host answers a netcat container that wrote to the host address 192.0.2.1 with recvfrom/sendto",
        diagnosis: "the reply leaves docker0 from docker0's address 198.51.100.1, the container's connected socket drops it NO_SOCKET; fix: bind to 192.0.2.1 or reply with IP_PKTINFO",
        expected: &["reply_source_mismatch"],
        port: 5020,
        replier: Replier::HostServer(ServerMode::Echo),
    },
    DockerScenario {
        name: "docker-wildcard-pktinfo",
        description: "healthy control: the same wildcard server on the Docker host replying with IP_PKTINFO",
        diagnosis: "no verdict: every reply comes from 192.0.2.1, the address the container wrote to",
        expected: &[],
        port: 5021,
        replier: Replier::HostServer(ServerMode::EchoPktinfo),
    },
    DockerScenario {
        name: "docker-proxy-reply",
        description: "seed 004's proxy with a real Docker: a netcat server container publishes 5022/udp (`-p 5022:5000/udp`, userland proxy on); a netcat client container writes to the host address 192.0.2.1:5022, which Docker does not DNAT from docker0, so docker-proxy on 0.0.0.0:5022 relays",
        diagnosis: "docker-proxy relays the reply from its wildcard socket, so it leaves docker0 from 198.51.100.1, the client container's connected socket drops it NO_SOCKET; fix: publish on the host address (-p 192.0.2.1:5022:5000/udp), userland proxy off, or address the container",
        expected: &["reply_source_mismatch"],
        port: 5022,
        replier: Replier::Published { host_ip: "0.0.0.0" },
    },
    DockerScenario {
        name: "docker-published-host-address",
        description: "healthy control: the netcat server container publishes its port on the host address (`-p 192.0.2.1:5023:5000/udp`), so docker-proxy's socket is bound to it",
        diagnosis: "no verdict: docker-proxy replies from 192.0.2.1, the address the client container wrote to",
        expected: &[],
        port: 5023,
        replier: Replier::Published {
            host_ip: "192.0.2.1",
        },
    },
];

pub fn find(name: &str) -> Option<&'static DockerScenario> {
    DOCKER_SCENARIOS.iter().find(|s| s.name == name)
}

/// What happened in a Docker scenario.
#[derive(Debug, Serialize)]
pub struct DockerOutcome {
    pub scenario: &'static str,
    pub host: NetnsInfo,
    /// Where the client container wrote.
    pub target: SocketAddr,
    pub client: Container,
    /// The server container (published scenarios).
    pub server: Option<Container>,
    /// The server on the host (wildcard scenarios).
    pub host_server: Option<ServerReport>,
    /// Pids of the docker-proxy processes of the published port.
    pub proxies: Vec<u32>,
    /// Lines the client container's netcat printed: the replies its socket accepted.
    pub replies: Vec<String>,
}

impl DockerOutcome {
    pub fn describe(&self) -> String {
        let mut text = format!(
            "container {} ({}) → {}: {REQUESTS} requests, {} replies accepted",
            self.client.name,
            &self.client.id[..12],
            self.target,
            self.replies.len()
        );
        if let Some(server) = &self.server {
            text.push_str(&format!(
                "; server container {} ({}) behind docker-proxy {:?}",
                server.name,
                &server.id[..12],
                self.proxies
            ));
        }
        if let Some(server) = &self.host_server {
            text.push_str(&format!(
                "; host server {} received {}, sent {} replies",
                server.local, server.received, server.replies_sent
            ));
        }
        text
    }
}

impl DockerScenario {
    /// The tracer filter that selects the scenario's traffic: the port the client writes to,
    /// and for a published port the container's port behind docker-proxy too.
    pub fn filter(&self) -> Vec<String> {
        let mut filter = vec!["port".to_owned(), self.port.to_string()];
        if let Replier::Published { .. } = self.replier {
            filter.extend(["or".into(), "port".into(), CONTAINER_PORT.to_string()]);
        }
        filter
    }

    pub fn description(&self) -> String {
        format!(
            "{}. Correct diagnosis: {}.",
            self.description, self.diagnosis
        )
    }

    /// Runs the scenario on `host` (a few seconds); its containers are removed afterwards,
    /// also when it fails.
    pub fn exercise(&self, host: &DockerHost) -> anyhow::Result<DockerOutcome> {
        let target = SocketAddr::V4(SocketAddrV4::new(HOST_ADDRESS, self.port));
        // The client idles until the requests are sent by `docker exec`, so that its
        // namespace can be looked at before it sends.
        let client = host.run(&format!("{}-client", self.name), &[], "exec sleep 30")?;
        let result = self.exchange(host, &client, target);
        let removed = host.remove(&client);
        let outcome = result?;
        removed?;
        Ok(outcome)
    }

    fn exchange(
        &self,
        host: &DockerHost,
        client: &Container,
        target: SocketAddr,
    ) -> anyhow::Result<DockerOutcome> {
        let mut outcome = DockerOutcome {
            scenario: self.name,
            host: host.netns.info(),
            target,
            client: client.clone(),
            server: None,
            host_server: None,
            proxies: Vec::new(),
            replies: Vec::new(),
        };
        match self.replier {
            Replier::HostServer(mode) => {
                let bind = SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.port));
                let server = Server::start(&host.netns, bind, mode, PEER_LIFETIME)?;
                outcome.replies = send_requests(host, client, target)?;
                std::thread::sleep(SETTLE);
                outcome.host_server = Some(server.stop()?);
            }
            Replier::Published { host_ip } => {
                // netcat-openbsd's `-u -l` connect()s to its first peer (docker-proxy's
                // socket towards it); the fifo turns it into an echo server.
                let publish = format!("{host_ip}:{}:{CONTAINER_PORT}/udp", self.port);
                let server = host.run(
                    &format!("{}-server", self.name),
                    &["-p", &publish],
                    &format!("mkfifo /echo; nc -u -l {CONTAINER_PORT} < /echo | cat > /echo"),
                )?;
                let result = wait_for_socket(server.pid, CONTAINER_PORT).and_then(|()| {
                    outcome.proxies = docker_proxies(self.port);
                    send_requests(host, client, target)
                });
                std::thread::sleep(SETTLE);
                let removed = host.remove(&server);
                outcome.replies = result?;
                removed?;
                outcome.server = Some(server);
            }
        }
        Ok(outcome)
    }
}

/// The client container's netcat (`nc -u`: a connected socket, as in the seeds) sends
/// `REQUESTS` lines 200 ms apart, waits a second for the last replies, and prints the
/// replies its socket accepted.
fn send_requests(
    host: &DockerHost,
    client: &Container,
    target: SocketAddr,
) -> anyhow::Result<Vec<String>> {
    let script = format!(
        "for i in $(seq {REQUESTS}); do echo request-$i; sleep 0.2; done | nc -u -q 1 {} {}",
        target.ip(),
        target.port()
    );
    let printed = host
        .docker
        .run(&["exec", &client.id, "/bin/sh", "-c", &script])?;
    Ok(printed.lines().map(str::to_owned).collect())
}

/// Waits (bounded) until a UDP socket on `port` exists in the network namespace of `pid`.
fn wait_for_socket(pid: u32, port: u16) -> anyhow::Result<()> {
    let started = Instant::now();
    let wanted = format!(":{port:04X}");
    loop {
        // /proc/PID/net/udp: that process's namespace's sockets (local_address is the 2nd
        // field, hex address:port).
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/udp"))?;
        if table.lines().skip(1).any(|line| {
            line.split_whitespace()
                .nth(1)
                .is_some_and(|l| l.ends_with(&wanted))
        }) {
            return Ok(());
        }
        if started.elapsed() > SOCKET_TIMEOUT {
            bail!("no UDP socket on port {port} in the server container after {SOCKET_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of the docker-proxy processes listening on host port `port`.
fn docker_proxies(port: u16) -> Vec<u32> {
    let wanted = ["-host-port".to_owned(), port.to_string()];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (args.first()?.ends_with("docker-proxy") && args.windows(2).any(|pair| pair == wanted))
                .then_some(pid)
        })
        .collect()
}
