//! `--debug-bpf`: the kernel programs' diagnostics (which tuple a hook parsed, why an event was
//! skipped; udptrace-ebpf/src/debug.rs), read from aya-log's ring buffer and written to stderr
//! through the `log` facade, one `udptrace: bpf: ...` line each. Off unless asked for: the
//! programs are then loaded with the logging compiled out by the verifier.

use std::io::Write as _;

use aya::Ebpf;
use aya_log::EbpfLogger;

use crate::sanitize::sanitize_kernel_string;

/// Writes each record's message to stderr. The message is built from kernel data (addresses,
/// and strings a program copied): sanitized like every kernel string.
pub struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args().to_string();
        let _ = writeln!(
            std::io::stderr(),
            "udptrace: bpf: {}",
            sanitize_kernel_string(message.as_bytes())
        );
    }

    fn flush(&self) {}
}

/// The reader of the programs' log records, for a tracer loaded with `--debug-bpf`.
pub type BpfLogger = EbpfLogger<StderrLog>;

/// Starts reading the loaded programs' log records; `flush` prints those waiting.
pub fn start(ebpf: &mut Ebpf) -> anyhow::Result<BpfLogger> {
    EbpfLogger::init_with_logger(ebpf, StderrLog)
        .map_err(|error| anyhow::anyhow!("reading the eBPF programs' log (--debug-bpf): {error}"))
}
