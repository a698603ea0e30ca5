//! The lab: private network namespaces, built-in UDP peers and the incidents udptrace exists
//! to explain (`udptrace lab list`, `udptrace lab run NAME --trace`).
//!
//! - `netns`: namespaces (named `udpt-<pid>-<n>-<role>`, deleted on drop, `cleanup_all` for
//!   Ctrl-C, `cleanup_stale` for crashed runs), veth pairs, bridges, addresses, routes,
//!   sysctls, nftables.
//! - `peers`: UDP servers, clients, a userland proxy and a raw-socket witness, each on a
//!   thread inside a namespace, bounded in count and time; SNMP UDP counters.
//! - `storm`: storms of distinct flows from a raw socket (the scale tests and the bench).
//! - `dockerd`: a private dockerd (own roots, socket and pid file), also compiled into xtask
//!   for `dist --check`.
//! - `docker`: the Docker incidents with a real dockerd in a lab namespace (`docker-...`).
//! - `scenarios`: the incidents, each `setup()` (topology) then `exercise()` (traffic), so a
//!   tracer can start in between; the `Outcome` holds the facts to check its output against.

pub mod docker;
pub mod dockerd;
pub mod netns;
pub mod peers;
pub mod scenarios;
pub mod storm;

pub use netns::{Netns, cleanup_all, cleanup_stale};
pub use scenarios::{Lab, Outcome, Scenario};

/// Whether a test that needs root may run: true as root; false (the test returns early, with
/// a note) when not root, unless `CI` is set, where a skipped network test would hide a broken
/// setup, so it panics instead.
#[cfg(test)]
pub(crate) fn root_or_skip() -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    assert!(
        !ci,
        "this test needs root (CI is set: failing instead of skipping)"
    );
    eprintln!("skipped: needs root");
    false
}
