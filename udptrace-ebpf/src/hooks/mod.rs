//! One file per hook family. Each exposes the same logic through every attach mechanism the
//! hook has; the mechanism-specific entry points only fetch arguments.

pub mod connect;
pub mod drop;
pub mod icmp;
pub mod lookup;
pub mod path;
pub mod sock;

use udptrace_common::{
    event::Counter,
    offsets::{CLASSIC_TRACEPOINT_ARGS, ClassicTracepoint},
};

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_smp_processor_id},
    programs::ProbeContext,
};

use crate::{
    ENTRY_ARGS,
    emit::count,
    kernel::{ReadError, offset, record_field},
};

/// Program return value after a hook ran; a failed kernel read is counted, never fatal.
#[inline(always)]
fn finish(result: Result<(), ReadError>) -> u32 {
    if result.is_err() {
        count(Counter::ReadErrors);
    }
    0
}

/// Reads from a classic tracepoint record the fields standing in for the raw tracepoint's
/// arguments, at the offsets userspace took from the event's format file and with the widths
/// userspace checked them against (`ClassicTracepoint::read_sizes`); unused trailing args are 0.
#[inline(always)]
fn classic_args(
    record: u64,
    tracepoint: ClassicTracepoint,
) -> Result<[u64; CLASSIC_TRACEPOINT_ARGS], ReadError> {
    let sizes = tracepoint.read_sizes();
    let mut args = [0; CLASSIC_TRACEPOINT_ARGS];
    let mut index = 0;
    while index < CLASSIC_TRACEPOINT_ARGS {
        if sizes[index] != 0 {
            let off = offset(|o| &o.tracepoint_args[tracepoint as usize][index]);
            args[index] = record_field(record, off, sizes[index])?;
        }
        index += 1;
    }
    Ok(args)
}

/// Functions whose kprobe hands its arguments to the kretprobe.
#[derive(Clone, Copy)]
pub enum Probed {
    SendV4 = 1,
    SendV6 = 2,
    Connect = 3,
    LookupV4 = 4,
    LookupV6 = 5,
    Recv = 6,
    Enqueue = 7,
    RouteInput = 8,
    /// Not a probed function: the destination of this task's last failed output route lookup,
    /// for the send hook that reports the failure (`path::on_route`, `sock::on_result`).
    FailedRoute = 9,
}

/// Which call a saved entry belongs to: the task, and for functions that run in softirq the
/// CPU too (softirqs interrupt whatever task runs, and every idle CPU's task is pid 0). A
/// process-context call may sleep and resume on another CPU, so its key has no CPU.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EntryKey {
    pid_tgid: u64,
    cpu: u32,
    function: u32,
}

#[inline(always)]
fn entry_key(function: Probed) -> EntryKey {
    let softirq = matches!(
        function,
        Probed::LookupV4 | Probed::LookupV6 | Probed::Enqueue | Probed::RouteInput
    );
    EntryKey {
        pid_tgid: bpf_get_current_pid_tgid(),
        // SAFETY: no preconditions.
        cpu: if softirq {
            unsafe { bpf_get_smp_processor_id() }
        } else {
            u32::MAX
        },
        function: function as u32,
    }
}

/// kprobe side: remembers the arguments for the kretprobe of the same call.
#[inline(always)]
fn save_entry(function: Probed, args: [u64; 4]) -> u32 {
    // A failed insert loses this call's event; the LRU cannot be full.
    let _ = ENTRY_ARGS.insert(&entry_key(function), &args, 0);
    0
}

/// kretprobe side: the arguments the kprobe saved for this call, removed.
#[inline(always)]
fn take_entry(function: Probed) -> Option<[u64; 4]> {
    let key = entry_key(function);
    // SAFETY: copied out of map memory before the removal.
    let args = unsafe { ENTRY_ARGS.get(&key) }.copied();
    if args.is_some() {
        let _ = ENTRY_ARGS.remove(&key);
    }
    args
}

/// The `n`th register argument of a kprobe (0 when the platform has no such register).
#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg(n).unwrap_or(0)
}
