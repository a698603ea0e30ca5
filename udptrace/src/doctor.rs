//! `udptrace doctor`: is this host able to trace, and with what. Attaches every hook for real
//! (then detaches) so that what it reports is what a trace would get.

use std::fmt::Write as _;

use serde_json::json;
use udptrace_common::{drops::InferredReason, event::Mechanism};

use crate::{
    host::{effective_capabilities, missing_capabilities},
    probes::{
        attach::{AttemptError, HookOutcome},
        plan::Hook,
    },
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

/// A capability the running kernel gives only in part, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Degraded {
    /// `drop reasons`, or a hook's name.
    pub capability: &'static str,
    /// What is lost or replaced.
    pub degraded: String,
    pub why: String,
}

/// What is degraded on this kernel: drop reasons inferred (kfree_skb without a reason), hooks
/// with no mechanism (except those this kernel does not need), sends seen without their
/// function probe.
pub fn degraded(reasons_inferred: bool, probes: &[HookOutcome]) -> Vec<Degraded> {
    let mut found = Vec::new();
    if reasons_inferred {
        found.push(Degraded {
            capability: "drop reasons",
            degraded: "inferred from the drop location and the hooks before it, shown as \
                       `REASON (inferred)`"
                .into(),
            why: "kernel before 5.17: kfree_skb passes no reason".into(),
        });
    }
    for outcome in probes {
        let errors: Vec<&AttemptError> = outcome
            .attempts
            .iter()
            .filter_map(|attempt| attempt.result.as_ref().err())
            .collect();
        let not_needed = !errors.is_empty()
            && errors
                .iter()
                .all(|error| **error == AttemptError::DropReasonArgument(false));
        match outcome.attached {
            None if not_needed => {}
            None => found.push(Degraded {
                capability: outcome.hook.name,
                degraded: format!("not observed: {}", outcome.hook.description),
                why: reasons(&errors),
            }),
            Some(mechanism) if function_probe_lost(outcome.hook, mechanism) => {
                found.push(Degraded {
                    capability: outcome.hook.name,
                    degraded: "no destination, IP_PKTINFO or connected state: seen at \
                               sock:sock_send_length, not in udp_sendmsg"
                        .into(),
                    why: reasons(&errors),
                });
            }
            Some(_) => {}
        }
    }
    found
}

/// The attempts' errors, each said once (a hook tries one mechanism on several functions).
fn reasons(errors: &[&AttemptError]) -> String {
    let mut said: Vec<String> = Vec::new();
    for error in errors {
        let text = error.to_string();
        if !said.contains(&text) {
            said.push(text);
        }
    }
    said.join("; ")
}

/// The send hook says what the sender asked for only from its function probes.
fn function_probe_lost(hook: &Hook, mechanism: Mechanism) -> bool {
    hook.name == "send" && !matches!(mechanism, Mechanism::Fentry | Mechanism::Kprobe)
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
    let degraded = tracer
        .as_ref()
        .ok()
        .map(|t| degraded(t.knowledge().reasons.are_inferred(), &t.probes));
    // The reasons udptrace infers here, none where the kernel gives them.
    let inferred_reasons: Vec<&str> = if tracer
        .as_ref()
        .is_ok_and(|t| t.knowledge().reasons.are_inferred())
    {
        InferredReason::ALL.iter().map(|r| r.name()).collect()
    } else {
        Vec::new()
    };
    if json_output {
        let report = json!({
            "degraded": degraded,
            "inferred_reasons": inferred_reasons,
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
    match degraded.as_deref() {
        None => {}
        Some([]) => {
            let _ = writeln!(
                text,
                "degraded    nothing: every capability works in full here"
            );
        }
        Some(found) => {
            let _ = writeln!(text, "degraded");
            for item in found {
                let _ = writeln!(
                    text,
                    "  {}: {} ({})",
                    item.capability, item.degraded, item.why
                );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::{
        attach::{Attempt, Links},
        plan::HOOKS,
    };

    fn hook(name: &str) -> &'static Hook {
        HOOKS.iter().find(|h| h.name == name).unwrap()
    }

    fn outcome(name: &str, attached: Option<Mechanism>, errors: Vec<AttemptError>) -> HookOutcome {
        let mut attempts: Vec<Attempt> = errors
            .into_iter()
            .map(|error| Attempt {
                mechanism: Mechanism::Fentry,
                result: Err(error),
            })
            .collect();
        if let Some(mechanism) = attached {
            attempts.push(Attempt {
                mechanism,
                result: Ok(()),
            });
        }
        HookOutcome {
            hook: hook(name),
            attached,
            attempts,
            parked: false,
            links: Links::default(),
        }
    }

    /// What Debian 11's 5.10 gives: no reasons, no inet_sk_error_report, sends through fexit.
    #[test]
    fn a_kernel_before_5_17() {
        let probes = [
            outcome(
                "drop",
                Some(Mechanism::TpBtf),
                vec![AttemptError::DropReasonArgument(true)],
            ),
            outcome(
                "sock_error",
                None,
                vec![AttemptError::Kernel {
                    chain: "no tracepoint inet_sk_error_report".into(),
                }],
            ),
            outcome("send", Some(Mechanism::Fentry), vec![]),
            outcome("enqueue", Some(Mechanism::Fentry), vec![]),
        ];
        let found = degraded(true, &probes);
        let capabilities: Vec<&str> = found.iter().map(|d| d.capability).collect();
        assert_eq!(capabilities, ["drop reasons", "sock_error"]);
        assert!(
            found[0]
                .degraded
                .starts_with("inferred from the drop location")
        );
        assert_eq!(
            found[0].why,
            "kernel before 5.17: kfree_skb passes no reason"
        );
        assert!(
            found[1]
                .degraded
                .starts_with("not observed: errors reported")
        );
        assert_eq!(found[1].why, "no tracepoint inet_sk_error_report");
    }

    /// A 5.17+ kernel without function probes (this development machine): the reasons are the
    /// kernel's, the enqueue evidence is not needed, sends lose what only udp_sendmsg tells.
    #[test]
    fn a_recent_kernel_without_function_probes() {
        let probes = [
            outcome("drop", Some(Mechanism::TpBtf), vec![]),
            outcome(
                "enqueue",
                None,
                vec![
                    AttemptError::DropReasonArgument(false),
                    AttemptError::DropReasonArgument(false),
                ],
            ),
            outcome(
                "send",
                Some(Mechanism::TpBtf),
                vec![AttemptError::NoKprobes],
            ),
            outcome("lookup", None, vec![AttemptError::NoKprobes]),
        ];
        let found = degraded(false, &probes);
        let capabilities: Vec<&str> = found.iter().map(|d| d.capability).collect();
        assert_eq!(capabilities, ["send", "lookup"]);
        assert!(found[0].degraded.starts_with("no destination"));
        assert_eq!(found[1].why, "kernel has no kprobes (no kprobe PMU)");
        assert!(degraded(false, &[outcome("drop", Some(Mechanism::TpBtf), vec![])]).is_empty());
    }
}
