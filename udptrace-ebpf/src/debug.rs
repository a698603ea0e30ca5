//! `--debug-bpf`: kernel-side diagnostics through aya-log (which tuple a hook parsed, why an
//! event was skipped), read by userspace's `aya_log::EbpfLogger` and printed to stderr.
//!
//! Off by default and free when off: `DEBUG_BPF` is an immutable global, so it lives in
//! `.rodata`, which aya freezes before load; the verifier reads a frozen map's bytes as known
//! constants, sees the logging branch never taken and removes it (kernel/bpf/verifier.c,
//! `opt_remove_dead_code`), so the filtered-out path runs the instructions it ran without
//! logging. Only when on does each call reserve an `AYA_LOGS` record (aya-and-style.md: debug
//! paths only).

use core::ptr::read_volatile;

use aya_log_ebpf::debug;
use udptrace_common::event::{AF_INET, EventKind, Tuple};

/// Set to 1 by userspace before load with `--debug-bpf` (`names::DEBUG_BPF_GLOBAL`).
#[unsafe(no_mangle)]
static DEBUG_BPF: u8 = 0;

/// Whether `--debug-bpf` is on; volatile so that the compiler cannot fold the placeholder 0.
#[inline(always)]
fn enabled() -> bool {
    // SAFETY: a read of our own static.
    unsafe { read_volatile(&raw const DEBUG_BPF) != 0 }
}

/// Logs `what` happened to an event of `kind` (the `EventKind` number) about `tuple`, when
/// `--debug-bpf` is on. The test is inlined at the call site, the logging is a BPF subprogram
/// called behind it: inlined, LLVM hoisted parts of its argument set-up above the test, onto
/// the path every filtered-out datagram takes.
#[inline(always)]
pub fn tuple(what: &'static str, kind: EventKind, tuple: &Tuple) {
    if enabled() {
        log_tuple(what, kind as u8, tuple);
    }
}

#[inline(never)]
fn log_tuple(what: &'static str, kind: u8, tuple: &Tuple) {
    if tuple.family == AF_INET {
        let [a, b, c, d, ..] = tuple.saddr;
        let [e, f, g, h, ..] = tuple.daddr;
        debug!(
            (),
            "kind {} {}: {:i}:{} > {:i}:{}",
            kind,
            what,
            [a, b, c, d],
            tuple.sport,
            [e, f, g, h],
            tuple.dport
        );
    } else {
        debug!(
            (),
            "kind {} {}: [{:i}]:{} > [{:i}]:{}",
            kind,
            what,
            tuple.saddr,
            tuple.sport,
            tuple.daddr,
            tuple.dport
        );
    }
}
