//! The classic UDP incidents, reproduced in private namespaces with documentation-range
//! addresses (../shared/seeds/). Each scenario builds its topology (`setup`), then runs its
//! peers (`exercise`, a few seconds at most) so that a tracer can attach in between. Every
//! scenario uses its own server port so that several can be traced at once.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;

use super::{
    netns::{Netns, veth},
    peers::{ClientReport, ClientSpec, Server, ServerMode, ServerReport, run_client},
};

/// A built topology; its namespaces are deleted when it is dropped.
pub struct Lab {
    pub client: Netns,
    pub server: Netns,
    /// The address:port the client sends to.
    pub target: SocketAddr,
    /// Where the server socket binds.
    pub bind: SocketAddr,
    /// The client's wildcard bind address (family of the scenario).
    pub client_bind: SocketAddr,
    /// Namespaces between client and server (routers, NAT), kept alive with the lab.
    pub middle: Vec<Netns>,
}

/// What happened, for people and tests.
#[derive(Debug)]
pub struct Outcome {
    pub client: ClientReport,
    pub server: Option<ServerReport>,
    /// Server namespace's UDP receive-buffer errors during the exercise (kernel counter).
    pub rcvbuf_errors: Option<u64>,
}

impl Outcome {
    pub fn describe(&self) -> String {
        let mut text = format!(
            "client {}: sent {}, {} replies{}, errors {:?}",
            self.client
                .local
                .map_or_else(|| "?".into(), |a| a.to_string()),
            self.client.sent,
            self.client.replies.len(),
            self.client
                .replies
                .first()
                .map_or_else(String::new, |from| format!(" (from {from})")),
            self.client
                .errors
                .iter()
                .map(|e| crate::kernel::errno_name(*e))
                .collect::<Vec<_>>()
        );
        if let Some(server) = &self.server {
            text.push_str(&format!("; server received {}", server.received));
        }
        if let Some(errors) = self.rcvbuf_errors {
            text.push_str(&format!("; kernel RcvbufErrors +{errors}"));
        }
        text
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// Client and server namespaces joined by a veth pair.
    TwoHosts,
    /// A Docker-like host: bridge `br0` (like docker0) with a container on it and an uplink
    /// `eth0`; the server runs on the host, the client in the container.
    DockerHost,
    /// Seed 004 in miniature: a client container behind a masquerading Docker-in-Docker
    /// namespace (`dind2`), a host namespace publishing port P by DNAT to a second DinD
    /// namespace (`dind1`, the server) on the same bridge. The reply is bridged straight back
    /// to `dind2` without passing the host's conntrack, so it arrives from dind1's address
    /// instead of the host's, `dind2`'s conntrack cannot undo its masquerade and the reply dies
    /// NO_SOCKET there.
    DindNat,
}

#[derive(Clone, Copy, Debug)]
enum Traffic {
    /// Nothing listens.
    ClosedPort,
    /// A server listens but nftables drops its port on input.
    Firewalled,
    /// A server that never reads, with a 4 KiB receive buffer, gets a burst of 500.
    Overflow,
    /// A request/reply exchange with the given server.
    Exchange(ServerMode),
}

pub struct Scenario {
    pub name: &'static str,
    pub description: &'static str,
    /// The verdict codes a correct diagnosis gives (none for healthy controls).
    pub expected: &'static [&'static str],
    topology: Topology,
    ipv6: bool,
    port: u16,
    /// Bind the server to the address the client targets instead of the wildcard.
    bind_specific: bool,
    traffic: Traffic,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "closed-port",
        description: "a connected client sends to a port where nothing listens: NO_SOCKET, ICMP port unreachable, ECONNREFUSED",
        expected: &["port_unreachable"],
        topology: Topology::TwoHosts,
        ipv6: false,
        port: 5001,
        bind_specific: false,
        traffic: Traffic::ClosedPort,
    },
    Scenario {
        name: "closed-port-v6",
        description: "the same over IPv6: NO_SOCKET in __udp6_lib_rcv, ICMPv6 type 1 code 4, ECONNREFUSED",
        expected: &["port_unreachable"],
        topology: Topology::TwoHosts,
        ipv6: true,
        port: 5002,
        bind_specific: false,
        traffic: Traffic::ClosedPort,
    },
    Scenario {
        name: "firewalled-port",
        description: "a server listens but an nftables rule drops its port: NETFILTER_DROP, and the client sees nothing at all",
        expected: &["firewall_drop"],
        topology: Topology::TwoHosts,
        ipv6: false,
        port: 5003,
        bind_specific: true,
        traffic: Traffic::Firewalled,
    },
    Scenario {
        name: "rcvbuf-overflow",
        description: "a burst of 500 datagrams into a socket with a 4 KiB receive buffer that nobody reads: SOCKET_RCVBUFF",
        expected: &["rcvbuf_overflow"],
        topology: Topology::TwoHosts,
        ipv6: false,
        port: 5004,
        bind_specific: true,
        traffic: Traffic::Overflow,
    },
    Scenario {
        name: "wrong-source-reply",
        description: "seeds 000/003: a server bound to 0.0.0.0 on a Docker host answers a container that wrote to the uplink address 192.0.2.1 from the bridge address 198.51.100.1; the container's connected socket drops it",
        expected: &["reply_source_mismatch"],
        topology: Topology::DockerHost,
        ipv6: false,
        port: 5005,
        bind_specific: false,
        traffic: Traffic::Exchange(ServerMode::Echo),
    },
    Scenario {
        name: "wrong-source-reply-pktinfo",
        description: "healthy control: the same wildcard server replying with IP_PKTINFO, from the address it was asked on",
        expected: &[],
        topology: Topology::DockerHost,
        ipv6: false,
        port: 5006,
        bind_specific: false,
        traffic: Traffic::Exchange(ServerMode::EchoPktinfo),
    },
    Scenario {
        name: "bound-server",
        description: "healthy control: the server bound to the uplink address 192.0.2.1 itself",
        expected: &[],
        topology: Topology::DockerHost,
        ipv6: false,
        port: 5007,
        bind_specific: true,
        traffic: Traffic::Exchange(ServerMode::Echo),
    },
    Scenario {
        name: "nc-connect-pinning",
        description: "seed 001: netcat -u -l connect()s to its first peer, pinning its socket to the bridge address; its reply comes from the wrong source and the client's next datagram finds no socket",
        expected: &["reply_source_mismatch", "connected_socket_mismatch"],
        topology: Topology::DockerHost,
        ipv6: false,
        port: 5008,
        bind_specific: false,
        traffic: Traffic::Exchange(ServerMode::ConnectFirstPeer),
    },
    Scenario {
        name: "dind-nat-hairpin",
        description: "seed 004: a client behind a masquerading DinD namespace sends to a port the host publishes by DNAT; the reply is bridged back from the server's own address, conntrack does not match it and it dies NO_SOCKET",
        expected: &["nat_reply_mismatch"],
        topology: Topology::DindNat,
        ipv6: false,
        port: 5010,
        bind_specific: false,
        traffic: Traffic::Exchange(ServerMode::Echo),
    },
    Scenario {
        name: "wrong-source-reply-v6",
        description: "the wrong-source reply over IPv6: bridge 2001:db8:1::1, uplink 2001:db8:2::1, container 2001:db8:1::2",
        expected: &["reply_source_mismatch"],
        topology: Topology::DockerHost,
        ipv6: true,
        port: 5009,
        bind_specific: false,
        traffic: Traffic::Exchange(ServerMode::Echo),
    },
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|scenario| scenario.name == name)
}

fn address(text: &str) -> SocketAddr {
    text.parse().expect("literal socket address")
}

impl Scenario {
    /// The server port, which a tracer filter can select.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn setup(&self) -> anyhow::Result<Lab> {
        super::netns::cleanup_stale();
        let mut middle = Vec::new();
        let (client, server, target, client_bind) = match self.topology {
            Topology::TwoHosts => self.two_hosts()?,
            Topology::DockerHost => self.docker_host()?,
            Topology::DindNat => self.dind_nat(&mut middle)?,
        };
        let wildcard = if self.ipv6 { "[::]" } else { "0.0.0.0" };
        let bind = if self.bind_specific {
            target
        } else {
            address(&format!("{wildcard}:{}", self.port))
        };
        if let Traffic::Firewalled = self.traffic {
            server.nft(&format!(
                "table inet udptrace_lab {{\n chain input {{\n  type filter hook input priority 0;\n  udp dport {} drop\n }}\n}}\n",
                self.port
            ))?;
        }
        Ok(Lab {
            client,
            server,
            target,
            bind,
            client_bind,
            middle,
        })
    }

    fn two_hosts(&self) -> anyhow::Result<(Netns, Netns, SocketAddr, SocketAddr)> {
        let client = Netns::create("client")?;
        let server = Netns::create("server")?;
        veth(&client, "eth0", &server, "eth0")?;
        if self.ipv6 {
            client.ip(&["addr", "add", "2001:db8::1/64", "dev", "eth0", "nodad"])?;
            server.ip(&["addr", "add", "2001:db8::2/64", "dev", "eth0", "nodad"])?;
            // ICMP errors are rate limited per destination (1/s by default): off, so every
            // datagram to a closed port gets its error.
            server.sysctl("net.ipv6.icmp.ratelimit", "0")?;
            Ok((
                client,
                server,
                address(&format!("[2001:db8::2]:{}", self.port)),
                address("[::]:0"),
            ))
        } else {
            client.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth0"])?;
            server.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"])?;
            server.sysctl("net.ipv4.icmp_ratelimit", "0")?;
            Ok((
                client,
                server,
                address(&format!("192.0.2.2:{}", self.port)),
                address("0.0.0.0:0"),
            ))
        }
    }

    fn docker_host(&self) -> anyhow::Result<(Netns, Netns, SocketAddr, SocketAddr)> {
        let host = Netns::create("host")?;
        let container = Netns::create("container")?;
        host.ip(&["link", "add", "br0", "type", "bridge"])?;
        host.ip(&["link", "set", "br0", "up"])?;
        // The uplink: its address only has to be local; a veth pair whose peer stays unused
        // stands in for it (the dummy driver is a module some kernels lack).
        host.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0-peer",
        ])?;
        host.ip(&["link", "set", "eth0", "up"])?;
        host.ip(&["link", "set", "eth0-peer", "up"])?;
        veth(&host, "veth-ctr", &container, "eth0")?;
        host.ip(&["link", "set", "veth-ctr", "master", "br0"])?;
        let target = if self.ipv6 {
            host.ip(&["addr", "add", "2001:db8:1::1/64", "dev", "br0", "nodad"])?;
            host.ip(&["addr", "add", "2001:db8:2::1/64", "dev", "eth0", "nodad"])?;
            container.ip(&["addr", "add", "2001:db8:1::2/64", "dev", "eth0", "nodad"])?;
            container.ip(&["route", "add", "default", "via", "2001:db8:1::1"])?;
            container.sysctl("net.ipv6.icmp.ratelimit", "0")?;
            address(&format!("[2001:db8:2::1]:{}", self.port))
        } else {
            host.ip(&["addr", "add", "198.51.100.1/24", "dev", "br0"])?;
            host.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth0"])?;
            container.ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"])?;
            container.ip(&["route", "add", "default", "via", "198.51.100.1"])?;
            container.sysctl("net.ipv4.icmp_ratelimit", "0")?;
            host.sysctl("net.ipv4.icmp_ratelimit", "0")?;
            address(&format!("192.0.2.1:{}", self.port))
        };
        let client_bind = if self.ipv6 { "[::]:0" } else { "0.0.0.0:0" };
        Ok((container, host, target, address(client_bind)))
    }

    fn dind_nat(
        &self,
        middle: &mut Vec<Netns>,
    ) -> anyhow::Result<(Netns, Netns, SocketAddr, SocketAddr)> {
        let host = Netns::create("host")?;
        let dind1 = Netns::create("dind1")?;
        let dind2 = Netns::create("dind2")?;
        let client = Netns::create("client")?;
        // The host's Docker network: a bridge with the host's address; both DinD namespaces
        // on it.
        host.ip(&["link", "add", "br0", "type", "bridge"])?;
        host.ip(&["link", "set", "br0", "up"])?;
        host.ip(&["addr", "add", "192.0.2.1/24", "dev", "br0"])?;
        for (netns, port, address) in [
            (&dind1, "veth-d1", "192.0.2.2/24"),
            (&dind2, "veth-d2", "192.0.2.3/24"),
        ] {
            veth(&host, port, netns, "eth0")?;
            host.ip(&["link", "set", port, "master", "br0"])?;
            netns.ip(&["addr", "add", address, "dev", "eth0"])?;
            netns.ip(&["route", "add", "default", "via", "192.0.2.1"])?;
        }
        host.sysctl("net.ipv4.ip_forward", "1")?;
        // With br_netfilter loaded, bridged frames pass the host's conntrack, which would undo
        // the DNAT on the reply (Docker relies on it); the seed's host did not have that for
        // this path. Off in this namespace (a per-namespace setting), when the module exists.
        if std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
            host.sysctl("net.bridge.bridge-nf-call-iptables", "0")?;
        }
        // The published port: DNAT host:P to dind1:P (what `docker run -p P:P/udp` installs).
        host.nft(&format!(
            "table ip udptrace_lab {{\n chain prerouting {{\n  type nat hook prerouting priority -100;\n  \
             udp dport {port} dnat to 192.0.2.2:{port}\n }}\n}}\n",
            port = self.port
        ))?;
        // dind2's own container network, masqueraded on its way out.
        veth(&dind2, "docker0", &client, "eth0")?;
        dind2.ip(&["addr", "add", "198.51.100.1/24", "dev", "docker0"])?;
        client.ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"])?;
        client.ip(&["route", "add", "default", "via", "198.51.100.1"])?;
        dind2.sysctl("net.ipv4.ip_forward", "1")?;
        dind2.sysctl("net.ipv4.icmp_ratelimit", "0")?;
        dind2.nft(
            "table ip udptrace_lab {\n chain postrouting {\n  type nat hook postrouting priority 100;\n  \
             ip saddr 198.51.100.0/24 oifname \"eth0\" masquerade\n }\n}\n",
        )?;
        middle.push(host);
        middle.push(dind2);
        Ok((
            client,
            dind1,
            address(&format!("192.0.2.1:{}", self.port)),
            address("0.0.0.0:0"),
        ))
    }

    /// Runs the scenario's traffic (bounded: at most a few seconds).
    pub fn exercise(&self, lab: &Lab) -> anyhow::Result<Outcome> {
        let client = |count, interval_ms, reply_ms| ClientSpec {
            bind: lab.client_bind,
            target: lab.target,
            connect: true,
            count,
            interval: Duration::from_millis(interval_ms),
            reply_timeout: Duration::from_millis(reply_ms),
        };
        match self.traffic {
            Traffic::ClosedPort => Ok(Outcome {
                client: run_client(&lab.client, &client(2, 50, 300))?,
                server: None,
                rcvbuf_errors: None,
            }),
            Traffic::Firewalled => {
                let server = Server::start(
                    &lab.server,
                    lab.bind,
                    ServerMode::Echo,
                    Duration::from_millis(1_200),
                )?;
                let report = run_client(&lab.client, &client(2, 50, 300))?;
                Ok(Outcome {
                    client: report,
                    server: Some(server.join()?),
                    rcvbuf_errors: None,
                })
            }
            Traffic::Overflow => {
                let (group, counter) = if self.ipv6 {
                    ("Udp6", "RcvbufErrors")
                } else {
                    ("Udp", "RcvbufErrors")
                };
                let before = lab.server.snmp(group, counter)?;
                let server = Server::start(
                    &lab.server,
                    lab.bind,
                    ServerMode::Sink { rcvbuf: 4_096 },
                    Duration::from_millis(1_500),
                )?;
                let mut spec = client(500, 0, 0);
                spec.connect = false;
                let report = run_client(&lab.client, &spec)?;
                // Let the last datagrams cross the veth before counting.
                std::thread::sleep(Duration::from_millis(200));
                let after = lab.server.snmp(group, counter)?;
                Ok(Outcome {
                    client: report,
                    server: Some(server.join()?),
                    rcvbuf_errors: Some(after - before),
                })
            }
            Traffic::Exchange(mode) => {
                let server =
                    Server::start(&lab.server, lab.bind, mode, Duration::from_millis(1_500))
                        .context("starting the lab server")?;
                let report = run_client(&lab.client, &client(3, 100, 250))?;
                Ok(Outcome {
                    client: report,
                    server: Some(server.join()?),
                    rcvbuf_errors: None,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str) -> Outcome {
        let scenario = find(name).unwrap();
        let lab = scenario.setup().expect("setup (needs root)");
        scenario.exercise(&lab).expect("exercise")
    }

    #[test]
    fn closed_port_refuses() {
        for name in ["closed-port", "closed-port-v6"] {
            let outcome = run(name);
            assert!(
                outcome.client.errors.contains(&libc::ECONNREFUSED),
                "{name}: {}",
                outcome.describe()
            );
        }
    }

    #[test]
    fn firewalled_port_is_silent() {
        let outcome = run("firewalled-port");
        assert_eq!(outcome.server.unwrap().received, 0);
        assert!(outcome.client.replies.is_empty() && outcome.client.errors.is_empty());
    }

    #[test]
    fn overflow_counts_in_the_kernel() {
        let outcome = run("rcvbuf-overflow");
        let errors = outcome.rcvbuf_errors.unwrap();
        assert_eq!(outcome.client.sent, 500);
        assert!(errors > 0, "{}", outcome.describe());
    }

    #[test]
    fn wrong_source_replies_never_arrive() {
        for name in ["wrong-source-reply", "wrong-source-reply-v6"] {
            let outcome = run(name);
            assert!(outcome.server.as_ref().unwrap().received > 0, "{name}");
            assert!(
                outcome.client.replies.is_empty(),
                "{name}: {}",
                outcome.describe()
            );
        }
    }

    #[test]
    fn healthy_controls_get_their_replies_from_the_target() {
        for name in ["wrong-source-reply-pktinfo", "bound-server"] {
            let scenario = find(name).unwrap();
            let lab = scenario.setup().unwrap();
            let outcome = scenario.exercise(&lab).unwrap();
            assert_eq!(
                outcome.client.replies.len(),
                3,
                "{name}: {}",
                outcome.describe()
            );
            assert!(
                outcome
                    .client
                    .replies
                    .iter()
                    .all(|from| *from == lab.target),
                "{name}"
            );
        }
    }

    #[test]
    fn dind_replies_are_not_translated_back() {
        let outcome = run("dind-nat-hairpin");
        assert_eq!(
            outcome.server.as_ref().unwrap().received,
            3,
            "DNAT reaches the server"
        );
        assert!(outcome.client.replies.is_empty(), "{}", outcome.describe());
    }

    #[test]
    fn netcat_pins_its_socket_to_the_bridge_address() {
        let outcome = run("nc-connect-pinning");
        let server = outcome.server.unwrap();
        assert_eq!(server.received, 1, "later datagrams find no socket");
        assert_eq!(server.local_after.unwrap().ip().to_string(), "198.51.100.1");
        assert!(outcome.client.replies.is_empty());
    }
}
