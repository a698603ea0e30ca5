//! Whether the CPU is serving a softirq: `irq:softirq_entry` / `irq:softirq_exit`,
//! `TP_PROTO(unsigned int vec_nr)` (include/trace/events/irq.h), around each vector's handler
//! in `__do_softirq` / `handle_softirqs` (kernel/softirq.c), whether it runs on the way out of
//! an interrupt, in `local_bh_enable` of a sending task (veth delivers on the sender's CPU)
//! or in ksoftirqd.
//!
//! Hooks that usually run in a process's system call (device transmit, output route lookups)
//! also run in softirq: a forwarded datagram's transmit, the route lookup of an ICMP error
//! (`icmp_route_lookup`, net/ipv4/icmp.c). There the current task is whoever was interrupted,
//! so `emit` must not name its process or namespace. Softirqs do not nest on a CPU and run
//! with migration disabled, so one flag per CPU is exact (PREEMPT_RT, whose softirqs run in
//! preemptible threads, is not supported by this).

use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::IN_SOFTIRQ;

#[btf_tracepoint(function = "softirq_entry")]
pub fn softirq_entry_tp_btf(_ctx: BtfTracePointContext) -> u32 {
    serving(1)
}

#[btf_tracepoint(function = "softirq_exit")]
pub fn softirq_exit_tp_btf(_ctx: BtfTracePointContext) -> u32 {
    serving(0)
}

#[raw_tracepoint(tracepoint = "softirq_entry")]
pub fn softirq_entry_raw_tp(_ctx: RawTracePointContext) -> u32 {
    serving(1)
}

#[raw_tracepoint(tracepoint = "softirq_exit")]
pub fn softirq_exit_raw_tp(_ctx: RawTracePointContext) -> u32 {
    serving(0)
}

#[inline(always)]
fn serving(flag: u32) -> u32 {
    if let Some(slot) = IN_SOFTIRQ.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *slot = flag };
    }
    0
}

/// Whether this CPU is serving a softirq now (false when the hook is not attached).
#[inline(always)]
pub fn in_softirq() -> bool {
    // SAFETY: this CPU's slot, read only.
    IN_SOFTIRQ.get(0).is_some_and(|flag| *flag != 0)
}
