//! One file per hook family. Each exposes the same logic through every attach mechanism the
//! hook has; the mechanism-specific entry points only fetch arguments.

pub mod drop;
pub mod icmp;
pub mod path;
pub mod sock;

use udptrace_common::{
    event::Counter,
    offsets::{CLASSIC_TRACEPOINT_ARGS, ClassicTracepoint},
};

use crate::{
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
/// arguments, at the offsets userspace took from the event's format file. `sizes` gives each
/// field's width (8 for pointers, 4 for ints/enums); unused trailing args use size 0.
#[inline(always)]
fn classic_args(
    record: u64,
    tracepoint: ClassicTracepoint,
    sizes: [u32; CLASSIC_TRACEPOINT_ARGS],
) -> Result<[u64; CLASSIC_TRACEPOINT_ARGS], ReadError> {
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
