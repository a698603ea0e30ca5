//! The probe engine: for each hook, try its mechanisms best first by really loading and
//! attaching the programs, and record every outcome so `doctor` and the `ready` record can say
//! what is in use and why the better mechanisms were not.
//!
//! Probing by attaching is the only reliable test: `aya::sys::is_program_supported` checks
//! trampolines with `bpf_fentry_test1`, which says "no" on kernels that refuse fentry but
//! accept tp_btf (../shared/notes/environment.md).

use std::error::Error as _;

use aya::{
    Btf, Ebpf,
    programs::{Program, ProgramError},
};
use udptrace_common::{
    event::Mechanism,
    offsets::{KernelOffsets, OFFSET_MISSING},
};

use super::plan::{Attachment, HOOKS, Hook, Target};

/// What the engine may use, learnt before any attempt.
pub struct AttachContext<'a> {
    pub btf: Option<&'a Btf>,
    pub offsets: &'a KernelOffsets,
    /// Whether tracefs is mounted (classic tracepoints need it).
    pub tracefs: bool,
    /// Whether kprobes can be attached ([`kprobe_status`]).
    pub kprobes: bool,
    /// Kernel functions the BTF lists (None without BTF).
    pub has_function: &'a dyn Fn(&str) -> bool,
    /// `--probes MECH`: only this mechanism is tried.
    pub forced: Option<Mechanism>,
}

/// One mechanism tried (or skipped) for one hook.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub mechanism: Mechanism,
    /// `Ok` when attached; otherwise why not, in words for `doctor`.
    pub result: Result<(), String>,
}

#[derive(Clone, Debug)]
pub struct HookOutcome {
    pub hook: &'static Hook,
    pub attached: Option<Mechanism>,
    pub attempts: Vec<Attempt>,
}

/// Why kprobes are or are not usable: perf's kprobe PMU is what attaching needs.
pub fn kprobe_status() -> Result<(), String> {
    if std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
        Ok(())
    } else {
        Err("no kprobe PMU (/sys/bus/event_source/devices/kprobe is missing: kernel built without CONFIG_KPROBES)".into())
    }
}

/// Attaches every hook of the plan; never fails as a whole: a hook without a mechanism is
/// reported in its outcome.
pub fn attach_all(ebpf: &mut Ebpf, context: &AttachContext<'_>) -> Vec<HookOutcome> {
    HOOKS
        .iter()
        .map(|hook| attach_hook(ebpf, hook, context))
        .collect()
}

fn attach_hook(ebpf: &mut Ebpf, hook: &'static Hook, context: &AttachContext<'_>) -> HookOutcome {
    let mut attempts = Vec::new();
    for attachment in hook.attachments {
        let result = match context.forced {
            Some(forced) if forced != attachment.mechanism => {
                Err(format!("not tried: --probes {}", forced.name()))
            }
            _ => precheck(attachment, context).and_then(|()| attach(ebpf, attachment, context)),
        };
        let attached = result.is_ok();
        attempts.push(Attempt {
            mechanism: attachment.mechanism,
            result,
        });
        if attached {
            return HookOutcome {
                hook,
                attached: Some(attachment.mechanism),
                attempts,
            };
        }
    }
    HookOutcome {
        hook,
        attached: None,
        attempts,
    }
}

/// Reasons known without touching the kernel, worded better than the load error would be.
fn precheck(attachment: &Attachment, context: &AttachContext<'_>) -> Result<(), String> {
    for (_, target) in attachment.programs {
        match target {
            Target::Fexit(function) | Target::Fentry(function) => {
                if context.btf.is_none() {
                    return Err("needs kernel BTF (/sys/kernel/btf/vmlinux)".into());
                }
                if !(context.has_function)(function) {
                    return Err(format!("kernel has no function {function}"));
                }
            }
            Target::Kprobe(function) | Target::Kretprobe(function) => {
                if !context.kprobes {
                    return Err("kernel has no kprobes (no kprobe PMU)".into());
                }
                if context.btf.is_some() && !(context.has_function)(function) {
                    return Err(format!("kernel has no function {function}"));
                }
            }
            Target::TpBtf(_) => {
                if context.btf.is_none() {
                    return Err("needs kernel BTF (/sys/kernel/btf/vmlinux)".into());
                }
            }
            Target::RawTp(_) => {}
            Target::Tracepoint(event) => {
                let (group, name) = event.event();
                if !context.tracefs {
                    return Err("tracefs is not mounted".into());
                }
                let args = context.offsets.tracepoint_args[*event as usize];
                if let Some(missing) = event
                    .fields()
                    .iter()
                    .zip(args)
                    .find(|(_, offset)| *offset == OFFSET_MISSING)
                {
                    return Err(format!(
                        "{group}:{name} is missing or its format has no field `{}`",
                        missing.0
                    ));
                }
            }
            Target::RouteTracepoint { ipv6 } => {
                let (group, name) = Target::route_event(*ipv6);
                if !context.tracefs {
                    return Err("tracefs is not mounted".into());
                }
                let fields = if *ipv6 {
                    context.offsets.fib6
                } else {
                    context.offsets.fib4
                };
                if fields.name == OFFSET_MISSING {
                    return Err(format!(
                        "{group}:{name} is missing or its format lacks fields"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Loads and attaches every program of `attachment`; on any failure unloads what it loaded,
/// so a half-attached mechanism never keeps running next to its fallback.
fn attach(
    ebpf: &mut Ebpf,
    attachment: &Attachment,
    context: &AttachContext<'_>,
) -> Result<(), String> {
    let mut loaded = Vec::new();
    for (name, target) in attachment.programs {
        let Some(program) = ebpf.program_mut(name) else {
            return Err(format!("program {name} missing from the embedded object"));
        };
        let result = load_and_attach(program, *target, context.btf);
        loaded.push(*name);
        if let Err(error) = result {
            for name in loaded {
                if let Some(program) = ebpf.program_mut(name) {
                    // Unloading a program that never loaded fails harmlessly.
                    let _ = unload(program);
                }
            }
            return Err(describe(*target, &error));
        }
    }
    Ok(())
}

fn load_and_attach(
    program: &mut Program,
    target: Target,
    btf: Option<&Btf>,
) -> Result<(), ProgramError> {
    match (target, program) {
        (Target::Fexit(function), Program::FExit(program)) => {
            program.load(function, btf.ok_or(ProgramError::NotLoaded)?)?;
            program.attach()?;
        }
        (Target::Fentry(function), Program::FEntry(program)) => {
            program.load(function, btf.ok_or(ProgramError::NotLoaded)?)?;
            program.attach()?;
        }
        (Target::Kprobe(function) | Target::Kretprobe(function), Program::KProbe(program)) => {
            // One program serves several functions: loaded at its first attachment.
            if program.fd().is_err() {
                program.load()?;
            }
            program.attach(function, 0)?;
        }
        (Target::TpBtf(tracepoint), Program::BtfTracePoint(program)) => {
            program.load(tracepoint, btf.ok_or(ProgramError::NotLoaded)?)?;
            program.attach()?;
        }
        (Target::RawTp(tracepoint), Program::RawTracePoint(program)) => {
            program.load()?;
            program.attach(tracepoint)?;
        }
        (Target::Tracepoint(event), Program::TracePoint(program)) => {
            let (group, name) = event.event();
            program.load()?;
            program.attach(group, name)?;
        }
        (Target::RouteTracepoint { ipv6 }, Program::TracePoint(program)) => {
            let (group, name) = Target::route_event(ipv6);
            program.load()?;
            program.attach(group, name)?;
        }
        _ => return Err(ProgramError::UnexpectedProgramType),
    }
    Ok(())
}

fn unload(program: &mut Program) -> Result<(), ProgramError> {
    match program {
        Program::FExit(program) => program.unload(),
        Program::FEntry(program) => program.unload(),
        Program::KProbe(program) => program.unload(),
        Program::BtfTracePoint(program) => program.unload(),
        Program::RawTracePoint(program) => program.unload(),
        Program::TracePoint(program) => program.unload(),
        _ => Ok(()),
    }
}

/// The load/attach error in words, with the errno chain, plus what it means for the common
/// cases (a kernel that refuses trampolines answers EPERM to the load).
fn describe(target: Target, error: &ProgramError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    let refused = text.contains("Operation not permitted") || text.contains("os error 1)");
    // ENOTSUPP (524, kernel-internal) from a trampoline: the function has more arguments than
    // this kernel's trampolines pass (6 on x86-64 before Linux 6.6).
    let too_many_args = text.contains("os error 524");
    match target {
        Target::Fexit(_) | Target::Fentry(_) if too_many_args => {
            format!(
                "not supported for this function here (ENOTSUPP; e.g. more arguments than this kernel's trampolines pass) ({text})"
            )
        }
        Target::Fexit(_) | Target::Fentry(_) if refused => {
            format!(
                "refused by the kernel (EPERM at BPF_PROG_LOAD): no BPF trampolines here ({text})"
            )
        }
        _ => text,
    }
}
