//! `udptrace doctor`: is this host able to trace, and with what. Attaches every hook for real
//! (then detaches) so that what it reports is what a trace would get.

use std::fmt::Write as _;

use serde_json::json;
use udptrace_common::event::Mechanism;

use crate::{
    host::{effective_capabilities, missing_capabilities},
    render::{json::probes_json, print_stdout},
    session::{TraceConfig, Tracer},
};

/// Kernel release and machine, from uname(2).
fn kernel_release() -> String {
    // SAFETY: uname fills the struct; zeroed is a valid initial value.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    if unsafe { libc::uname(&raw mut name) } != 0 {
        return "unknown".into();
    }
    let field = |raw: &[libc::c_char]| {
        let bytes: Vec<u8> = raw
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!(
        "{} {} {}",
        field(&name.sysname),
        field(&name.release),
        field(&name.machine)
    )
}

/// Runs the checks, prints the report, returns the exit status (0 = every core hook attached),
/// or the error writing the report.
pub fn run(json_output: bool, forced: Option<Mechanism>) -> std::io::Result<u8> {
    let kernel = kernel_release();
    let missing_caps = missing_capabilities(effective_capabilities());
    let btf = std::fs::metadata("/sys/kernel/btf/vmlinux").map(|m| m.len());
    let kprobes = crate::probes::attach::kprobe_status();
    let tracer = if missing_caps.is_empty() {
        Tracer::start(TraceConfig {
            probes: forced,
            ring_size: 1 << 16,
            diagnose_only: true,
            ..TraceConfig::default()
        })
    } else {
        Err(anyhow::anyhow!(
            "not attempted: missing {}",
            missing_caps.join(", ")
        ))
    };
    let core_ok = tracer.as_ref().is_ok_and(|t| {
        t.probes
            .iter()
            .all(|o| !o.hook.core || o.attached.is_some())
    });
    if json_output {
        let report = json!({
            "kernel": kernel,
            "missing_capabilities": missing_caps,
            "btf_bytes": btf.as_ref().ok(),
            "kprobes": kprobes.as_ref().err().map_or_else(|| "available".to_owned(), ToString::to_string),
            "tracefs": tracer.as_ref().ok().map(|t| t.knowledge().tracefs.as_ref().map_or_else(ToString::to_string, |tf| tf.root().display().to_string())),
            "missing_offsets": tracer.as_ref().ok().map(|t| t.knowledge().missing.clone()),
            "probes": tracer.as_ref().ok().map(|t| probes_json(&t.probes)),
            "error": tracer.as_ref().err().map(|e| format!("{e:#}")),
            "ok": core_ok,
        });
        print_stdout(&format!("{report}\n"))?;
        return Ok(u8::from(!core_ok));
    }
    let mut text = String::new();
    let _ = writeln!(text, "kernel      {kernel}");
    let _ = writeln!(
        text,
        "privileges  {}",
        if missing_caps.is_empty() {
            "ok (root or CAP_BPF+CAP_PERFMON+CAP_NET_ADMIN)".to_owned()
        } else {
            format!("MISSING {}: run with sudo", missing_caps.join(", "))
        }
    );
    let _ = writeln!(
        text,
        "btf         {}",
        match &btf {
            Ok(bytes) => format!("/sys/kernel/btf/vmlinux ({} KiB)", bytes / 1024),
            Err(error) => format!("MISSING ({error}): udptrace needs CONFIG_DEBUG_INFO_BTF"),
        }
    );
    let _ = writeln!(
        text,
        "kprobes     {}",
        match &kprobes {
            Ok(()) => "available".to_owned(),
            Err(reason) => format!("unavailable: {reason}"),
        }
    );
    match &tracer {
        Err(error) => {
            let _ = writeln!(text, "tracer      CANNOT START: {error:#}");
        }
        Ok(tracer) => {
            let knowledge = tracer.knowledge();
            let _ = writeln!(
                text,
                "tracefs     {}",
                match &knowledge.tracefs {
                    Ok(tracefs) => tracefs.root().display().to_string(),
                    Err(error) => format!("unavailable ({error}): classic tracepoints disabled"),
                }
            );
            let _ = writeln!(
                text,
                "symbols     {}",
                match &knowledge.symbols {
                    Ok(_) => "/proc/kallsyms".to_owned(),
                    Err(error) => format!("unavailable ({error}): locations shown as addresses"),
                }
            );
            if knowledge.missing.is_empty() {
                let _ = writeln!(
                    text,
                    "offsets     every kernel field resolved from BTF and tracefs"
                );
            } else {
                let _ = writeln!(
                    text,
                    "offsets     missing on this kernel (only what reads them is disabled):"
                );
                for (field, why) in &knowledge.missing {
                    let _ = writeln!(text, "              {field}: {why}");
                }
            }
            let _ = writeln!(text, "hooks");
            for outcome in &tracer.probes {
                let _ = writeln!(
                    text,
                    "  {:<12} {:<11} {}{}",
                    outcome.hook.name,
                    outcome.attached.map_or("NONE", Mechanism::name),
                    outcome.hook.description,
                    if outcome.hook.core { " [core]" } else { "" }
                );
                for attempt in &outcome.attempts {
                    if let Err(error) = &attempt.result {
                        let _ = writeln!(
                            text,
                            "      {:<10} not used: {error}",
                            attempt.mechanism.name()
                        );
                    }
                }
            }
        }
    }
    let _ = writeln!(
        text,
        "verdict     {}",
        if core_ok {
            "ready to trace"
        } else {
            "NOT READY: a core hook cannot be attached (see above)"
        }
    );
    print_stdout(&text)?;
    Ok(u8::from(!core_ok))
}
