//! Root integration tests: the real binary, real BPF programs, real namespaces and packets.
//! One test binary so that the helpers in `common` are shared without duplication.

mod common;
mod conntrack;
mod debug_bpf;
mod docker;
mod doctor;
mod drops;
mod filters;
mod fragments;
mod hardening;
mod lazy_hops;
mod metrics;
mod path;
mod pcap;
mod pcap_differential;
mod real_tools;
mod recordings;
mod runtimes;
mod scale;
mod verdicts;
mod watch;
