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

use std::sync::atomic::{AtomicBool, Ordering};

pub use netns::{Netns, cleanup_all, cleanup_stale};
pub use scenarios::{Lab, Outcome, Scenario};

/// Set in the QEMU guests of `cargo xtask vm-test` (their /init exports it): a private kernel
/// that boots for the tests and powers off after them.
pub const TEST_GUEST_ENV: &str = "UDPTRACE_TEST_GUEST";

/// `lab run --allow-global-changes` was given.
static GLOBAL_CHANGES_ALLOWED: AtomicBool = AtomicBool::new(false);

/// Whether this process runs in a `cargo xtask vm-test` guest.
pub fn in_test_guest() -> bool {
    std::env::var(TEST_GUEST_ENV).is_ok_and(|value| value == "1")
}

/// The user allowed scenarios that change machine-wide settings (`--allow-global-changes`).
pub fn allow_global_changes() {
    GLOBAL_CHANGES_ALLOWED.store(true, Ordering::Relaxed);
}

/// Whether a scenario may change a setting every namespace of the machine shares
/// (`Scenario::global_change`): in a test guest, or when the user said so.
pub fn global_changes_allowed() -> bool {
    in_test_guest() || GLOBAL_CHANGES_ALLOWED.load(Ordering::Relaxed)
}

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
