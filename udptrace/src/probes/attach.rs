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
    programs::{
        Program, ProgramError, kprobe::KProbeLinkId, raw_trace_point::RawTracePointLinkId,
        tp_btf::BtfTracePointLinkId, trace_point::TracePointLinkId,
    },
};
use udptrace_common::{
    event::Mechanism,
    offsets::{KernelOffsets, OFFSET_MISSING},
};

use super::plan::{Attachment, HOOKS, Hook, Target, needs_drop_reason};

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
    /// Whether the kernel's kfree_skb passes a drop reason (Linux 5.17+; `Knowledge::load`).
    pub kfree_skb_reason: bool,
}

/// One mechanism tried (or skipped) for one hook.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub mechanism: Mechanism,
    /// `Ok` when attached; otherwise why not (its message is what `doctor` and the `ready`
    /// record show).
    pub result: Result<(), AttemptError>,
}

/// Why a mechanism was not used for a hook: known before touching the kernel (the prechecks),
/// or the kernel's refusal to load or attach.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    #[error("not tried: --probes {}", forced.name())]
    NotTried { forced: Mechanism },
    #[error("needs kernel BTF (/sys/kernel/btf/vmlinux)")]
    NeedsBtf,
    #[error("kernel has no function {0}")]
    NoFunction(&'static str),
    #[error("kernel has no kprobes (no kprobe PMU)")]
    NoKprobes,
    #[error("tracefs is not mounted")]
    NoTracefs,
    #[error("{group}:{event} is missing or its format has no field `{field}`")]
    MissingField {
        group: &'static str,
        event: &'static str,
        field: &'static str,
    },
    #[error("{group}:{event} is missing or its format lacks fields")]
    MissingRouteFields {
        group: &'static str,
        event: &'static str,
    },
    /// The program is for kernels whose kfree_skb has (`true`) or lacks a reason argument:
    /// Linux 5.17 and later, or earlier ones.
    #[error("{}", if *.0 {
        "for Linux 5.17+ (kfree_skb's reason argument, bpf_get_func_ret)"
    } else {
        "not needed: for kernels before 5.17 (kfree_skb without a reason)"
    })]
    DropReasonArgument(bool),
    #[error("program {0} missing from the embedded object")]
    ProgramMissing(&'static str),
    /// A trampoline (fentry/fexit) for a function with more arguments than this kernel's
    /// trampolines pass: ENOTSUPP (524, kernel-internal; 6 arguments on x86-64 before Linux
    /// 6.6). `chain`: aya's error with its causes.
    #[error(
        "not supported for this function here (ENOTSUPP; e.g. more arguments than this \
         kernel's trampolines pass) ({chain})"
    )]
    TooManyArguments { chain: String },
    /// A kernel that refuses trampolines answers EPERM to BPF_PROG_LOAD.
    #[error("refused by the kernel (EPERM at BPF_PROG_LOAD): no BPF trampolines here ({chain})")]
    TrampolinesRefused { chain: String },
    /// Any other load or attach failure, in aya's words with their causes.
    #[error("{chain}")]
    Kernel { chain: String },
}

/// Why kprobes cannot be attached here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "no kprobe PMU (/sys/bus/event_source/devices/kprobe is missing: kernel built without \
     CONFIG_KPROBES)"
)]
pub struct NoKprobePmu;

#[derive(Debug)]
pub struct HookOutcome {
    pub hook: &'static Hook,
    /// The mechanism it attached with at start (also while parked).
    pub attached: Option<Mechanism>,
    pub attempts: Vec<Attempt>,
    /// Detached for now by [`detach`] (`udptrace watch` between escalations, the interactive
    /// tracer's hop hooks while its filter matches nothing), until [`reattach`].
    pub parked: bool,
    /// The links of its programs while attached (none while parked).
    pub links: Links,
}

/// The links a hook's programs hold: parking drops them and leaves the programs loaded, so
/// attaching again needs no second load and verification (seconds per program under TCG).
/// Trampoline programs (fentry/fexit) are unloaded instead: a tracing program re-attaches
/// only from Linux 5.12 on (before, its trampoline target is consumed by the first attach:
/// ENOENT on Debian 11's 5.10, kernel/bpf/syscall.c `bpf_tracing_prog_attach`).
#[derive(Debug, Default)]
pub struct Links(Vec<(&'static str, Link)>);

/// One program's link, in the type of its program (aya's link ids are per program type).
#[derive(Debug)]
enum Link {
    /// fentry/fexit: the program holds its link and loses it when unloaded.
    Trampoline,
    KProbe(KProbeLinkId),
    BtfTracePoint(BtfTracePointLinkId),
    RawTracePoint(RawTracePointLinkId),
    TracePoint(TracePointLinkId),
}

/// Why kprobes are or are not usable: perf's kprobe PMU is what attaching needs.
pub fn kprobe_status() -> Result<(), NoKprobePmu> {
    if std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
        Ok(())
    } else {
        Err(NoKprobePmu)
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

impl HookOutcome {
    /// The attachment that attached (the last one tried: attaching stops at the first success).
    fn attachment(&self) -> Option<&'static Attachment> {
        self.attached?;
        self.hook
            .attachments
            .get(self.attempts.len().checked_sub(1)?)
    }
}

/// Detaches the programs of a hook that attached (parks it); [`reattach`] attaches them again
/// with the same mechanism. They stay loaded, but for trampolines (see [`Links`]).
pub fn detach(ebpf: &mut Ebpf, outcome: &mut HookOutcome) {
    if outcome.attached.is_none() || outcome.parked {
        return;
    }
    outcome.parked = true;
    drop_links(ebpf, std::mem::take(&mut outcome.links));
}

/// Attaches again, with the mechanism it attached with at start, a hook [`detach`] took off
/// (loading what it unloaded).
pub fn reattach(
    ebpf: &mut Ebpf,
    outcome: &mut HookOutcome,
    context: &AttachContext<'_>,
) -> Result<(), AttemptError> {
    if !outcome.parked {
        return Ok(());
    }
    let Some(attachment) = outcome.attachment() else {
        return Ok(());
    };
    // `attach` loads only what is not loaded (the trampolines parking unloaded), and is all or
    // nothing, as at start: a hook half attached would report half a path.
    outcome.links = attach(ebpf, attachment, context)?;
    outcome.parked = false;
    Ok(())
}

fn drop_links(ebpf: &mut Ebpf, links: Links) {
    for (name, link) in links.0 {
        if let Some(program) = ebpf.program_mut(name) {
            // Fails only for a program no longer loaded or a link it no longer holds: then it
            // is detached already.
            let _ = match link {
                Link::Trampoline => unload(program),
                link => detach_link(program, link),
            };
        }
    }
}

fn attach_hook(ebpf: &mut Ebpf, hook: &'static Hook, context: &AttachContext<'_>) -> HookOutcome {
    let mut attempts = Vec::new();
    for attachment in hook.attachments {
        let result = match context.forced {
            Some(forced) if forced != attachment.mechanism => {
                Err(AttemptError::NotTried { forced })
            }
            _ => precheck(attachment, context).and_then(|()| attach(ebpf, attachment, context)),
        };
        let (result, links) = match result {
            Ok(links) => (Ok(()), Some(links)),
            Err(error) => (Err(error), None),
        };
        attempts.push(Attempt {
            mechanism: attachment.mechanism,
            result,
        });
        if let Some(links) = links {
            return HookOutcome {
                hook,
                attached: Some(attachment.mechanism),
                attempts,
                parked: false,
                links,
            };
        }
    }
    HookOutcome {
        hook,
        attached: None,
        attempts,
        parked: false,
        links: Links::default(),
    }
}

/// Reasons known without touching the kernel, worded better than the load error would be.
fn precheck(attachment: &Attachment, context: &AttachContext<'_>) -> Result<(), AttemptError> {
    for (name, target) in attachment.programs {
        if let Some(needed) = needs_drop_reason(name)
            && needed != context.kfree_skb_reason
        {
            return Err(AttemptError::DropReasonArgument(needed));
        }
        match target {
            Target::Fexit(function) | Target::Fentry(function) => {
                if context.btf.is_none() {
                    return Err(AttemptError::NeedsBtf);
                }
                if !(context.has_function)(function) {
                    return Err(AttemptError::NoFunction(function));
                }
            }
            Target::Kprobe(function) | Target::Kretprobe(function) => {
                if !context.kprobes {
                    return Err(AttemptError::NoKprobes);
                }
                if context.btf.is_some() && !(context.has_function)(function) {
                    return Err(AttemptError::NoFunction(function));
                }
            }
            Target::TpBtf(_) => {
                if context.btf.is_none() {
                    return Err(AttemptError::NeedsBtf);
                }
            }
            Target::RawTp(_) => {}
            Target::Tracepoint(event) => {
                let (group, name) = event.event();
                if !context.tracefs {
                    return Err(AttemptError::NoTracefs);
                }
                let args = context.offsets.tracepoint_args[*event as usize];
                if let Some(missing) = event
                    .fields()
                    .iter()
                    .zip(args)
                    .find(|(_, offset)| *offset == OFFSET_MISSING)
                {
                    return Err(AttemptError::MissingField {
                        group,
                        event: name,
                        field: missing.0,
                    });
                }
            }
            Target::RouteTracepoint { ipv6 } => {
                let (group, name) = Target::route_event(*ipv6);
                if !context.tracefs {
                    return Err(AttemptError::NoTracefs);
                }
                let fields = if *ipv6 {
                    context.offsets.fib6
                } else {
                    context.offsets.fib4
                };
                if fields.name == OFFSET_MISSING {
                    return Err(AttemptError::MissingRouteFields { group, event: name });
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
) -> Result<Links, AttemptError> {
    let mut loaded = Vec::new();
    let mut links = Links::default();
    for (name, target) in attachment.programs {
        let Some(program) = ebpf.program_mut(name) else {
            return Err(AttemptError::ProgramMissing(name));
        };
        let result =
            load(program, *target, context.btf).and_then(|()| attach_loaded(program, *target));
        loaded.push(*name);
        match result {
            Ok(link) => links.0.push((name, link)),
            Err(error) => {
                for name in loaded {
                    if let Some(program) = ebpf.program_mut(name) {
                        // Unloading a program that never loaded fails harmlessly; unloading
                        // detaches its links.
                        let _ = unload(program);
                    }
                }
                return Err(describe(*target, &error));
            }
        }
    }
    Ok(links)
}

/// Loads the program for `target` unless it is loaded: one kprobe program serves several
/// functions and is loaded at its first attachment.
fn load(program: &mut Program, target: Target, btf: Option<&Btf>) -> Result<(), ProgramError> {
    if program.fd().is_ok() {
        return Ok(());
    }
    match (target, program) {
        (Target::Fexit(function), Program::FExit(program)) => {
            program.load(function, btf.ok_or(ProgramError::NotLoaded)?)
        }
        (Target::Fentry(function), Program::FEntry(program)) => {
            program.load(function, btf.ok_or(ProgramError::NotLoaded)?)
        }
        (Target::TpBtf(tracepoint), Program::BtfTracePoint(program)) => {
            program.load(tracepoint, btf.ok_or(ProgramError::NotLoaded)?)
        }
        (Target::Kprobe(_) | Target::Kretprobe(_), Program::KProbe(program)) => program.load(),
        (Target::RawTp(_), Program::RawTracePoint(program)) => program.load(),
        (Target::Tracepoint(_) | Target::RouteTracepoint { .. }, Program::TracePoint(program)) => {
            program.load()
        }
        _ => Err(ProgramError::UnexpectedProgramType),
    }
}

/// Attaches a loaded program to `target`.
fn attach_loaded(program: &mut Program, target: Target) -> Result<Link, ProgramError> {
    Ok(match (target, program) {
        (Target::Fexit(_), Program::FExit(program)) => {
            program.attach()?;
            Link::Trampoline
        }
        (Target::Fentry(_), Program::FEntry(program)) => {
            program.attach()?;
            Link::Trampoline
        }
        (Target::Kprobe(function) | Target::Kretprobe(function), Program::KProbe(program)) => {
            Link::KProbe(program.attach(function, 0)?)
        }
        (Target::TpBtf(_), Program::BtfTracePoint(program)) => {
            Link::BtfTracePoint(program.attach()?)
        }
        (Target::RawTp(tracepoint), Program::RawTracePoint(program)) => {
            Link::RawTracePoint(program.attach(tracepoint)?)
        }
        (Target::Tracepoint(event), Program::TracePoint(program)) => {
            let (group, name) = event.event();
            Link::TracePoint(program.attach(group, name)?)
        }
        (Target::RouteTracepoint { ipv6 }, Program::TracePoint(program)) => {
            let (group, name) = Target::route_event(ipv6);
            Link::TracePoint(program.attach(group, name)?)
        }
        _ => return Err(ProgramError::UnexpectedProgramType),
    })
}

/// Drops the link of a program that stays loaded (trampolines are unloaded instead, see
/// [`Links`]).
fn detach_link(program: &mut Program, link: Link) -> Result<(), ProgramError> {
    match (program, link) {
        (Program::KProbe(program), Link::KProbe(link)) => program.detach(link),
        (Program::BtfTracePoint(program), Link::BtfTracePoint(link)) => program.detach(link),
        (Program::RawTracePoint(program), Link::RawTracePoint(link)) => program.detach(link),
        (Program::TracePoint(program), Link::TracePoint(link)) => program.detach(link),
        _ => Err(ProgramError::UnexpectedProgramType),
    }
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

/// The load/attach error with its errno chain, told apart for the common cases (a kernel that
/// refuses trampolines answers EPERM to the load).
fn describe(target: Target, error: &ProgramError) -> AttemptError {
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
            AttemptError::TooManyArguments { chain: text }
        }
        Target::Fexit(_) | Target::Fentry(_) if refused => {
            AttemptError::TrampolinesRefused { chain: text }
        }
        _ => AttemptError::Kernel { chain: text },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages are an interface (`doctor`, the `ready` record's `attempts[].error`,
    /// scripts matching them): each variant reads as the sentence it replaced.
    #[test]
    fn attempt_errors_read_as_before() {
        for (error, text) in [
            (
                AttemptError::NotTried {
                    forced: Mechanism::RawTracepoint,
                },
                "not tried: --probes raw_tp",
            ),
            (
                AttemptError::NoFunction("udp_sendmsg"),
                "kernel has no function udp_sendmsg",
            ),
            (
                AttemptError::MissingField {
                    group: "skb",
                    event: "kfree_skb",
                    field: "reason",
                },
                "skb:kfree_skb is missing or its format has no field `reason`",
            ),
            (
                AttemptError::MissingRouteFields {
                    group: "fib",
                    event: "fib_table_lookup",
                },
                "fib:fib_table_lookup is missing or its format lacks fields",
            ),
            (
                AttemptError::TrampolinesRefused {
                    chain: "the BPF_PROG_LOAD syscall failed: Operation not permitted".into(),
                },
                "refused by the kernel (EPERM at BPF_PROG_LOAD): no BPF trampolines here \
                 (the BPF_PROG_LOAD syscall failed: Operation not permitted)",
            ),
            (
                AttemptError::TooManyArguments {
                    chain: "os error 524".into(),
                },
                "not supported for this function here (ENOTSUPP; e.g. more arguments than \
                 this kernel's trampolines pass) (os error 524)",
            ),
        ] {
            assert_eq!(error.to_string(), text);
        }
        assert_eq!(
            NoKprobePmu.to_string(),
            "no kprobe PMU (/sys/bus/event_source/devices/kprobe is missing: kernel built \
             without CONFIG_KPROBES)"
        );
    }
}
