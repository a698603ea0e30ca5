//! SIGINT/SIGTERM end a run cleanly: programs detach when the tracer is dropped, the summary is
//! printed, and lab namespaces are removed.

/// Completes on the first SIGINT or SIGTERM.
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers the default action (exit) still stops udptrace; the kernel
        // detaches the programs when the process dies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}
