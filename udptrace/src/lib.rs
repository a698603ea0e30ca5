//! udptrace: what happens to UDP datagrams inside the Linux kernel, and why they die.
//!
//! Data flows one way through these modules:
//! kernel hooks (`udptrace-ebpf`) → `probes` (load/attach) → `stream` (ring buffer, counters)
//! → `decode` (raw records → the typed events of `model`) → `reorder` (back in kernel-time order) → `flows`
//! (flow table, verdicts) → `render` (text / JSON); `metrics` counts the same events and
//! verdicts for Prometheus.
//! `kernel` holds everything learnt from the running kernel at start-up (BTF offsets, tracefs
//! formats, drop-reason names, symbols); `filter` compiles expressions for the kernel; `lab`
//! builds private namespaces and peers that reproduce incidents.
pub mod cli;
pub mod clock;
pub mod conntrack;
pub mod container_filter;
pub mod containers;
pub mod debug_bpf;
pub mod decode;
pub mod doctor;
pub mod escalation;
pub mod filter;
pub mod firewall;
pub mod flows;
pub mod host;
pub mod icmp_limits;
pub mod kernel;
pub mod knowledge;
pub mod lab;
pub mod lab_command;
pub mod logfile;
pub mod manual;
pub mod metrics;
pub mod model;
pub mod namespaces;
pub mod pcapng;
pub mod probes;
pub mod procs;
pub mod qdiscs;
pub mod recording;
pub mod render;
pub mod reorder;
pub mod replay;
pub mod sanitize;
pub mod session;
pub mod shutdown;
pub mod sockets;
pub mod stream;
