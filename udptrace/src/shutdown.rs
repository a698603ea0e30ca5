//! SIGINT/SIGTERM end a run cleanly: programs detach when the tracer is dropped, the summary is
//! printed, and lab namespaces are removed.

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT and SIGTERM, caught from the moment this is created. Create it before anything is
/// attached, built or announced: tokio installs the process-wide handler when the
/// first `Signal` is made, so a signal that came between the `ready` line and the first wait
/// would otherwise meet the default action and kill udptrace without its summary. Each
/// `Signal` remembers a delivery made before it is awaited.
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    /// Needs a tokio runtime with its signal driver (`#[tokio::main]` enables it).
    pub fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// Completes on the next (or an already delivered, not yet awaited) SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    /// Completes on a stop signal or when nobody reads standard output any more (see
    /// `render::stdout_closed`): what ends a trace that has no `--count` or `--duration`.
    pub async fn or_stdout_closed(&mut self) {
        tokio::select! {
            () = self.recv() => {}
            () = crate::render::stdout_closed() => {}
        }
    }
}
