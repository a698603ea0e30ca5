//! Everything learnt from the running kernel at start-up, in one place: struct offsets from
//! BTF, classic tracepoint layouts from tracefs, drop-reason names, kernel symbols.

use std::{collections::BTreeSet, path::Path, rc::Rc};

use aya::maps::{MapData, StackTraceMap};

use udptrace_common::drops::DropSites;
use udptrace_common::offsets::{ClassicTracepoint, KernelOffsets, OFFSET_MISSING};

use crate::{
    containers::{Container, ContainerNames},
    decode::KernelNames,
    kernel::{
        btf::Btf,
        kallsyms::{Kallsyms, KallsymsError},
        offsets::resolve_offsets,
        reasons::DropReasons,
        tracefs::{Tracefs, TracefsError},
    },
    model::{DropReason, Process},
    probes::plan::btf_attach_names,
    procs::Processes,
};

pub struct Knowledge {
    /// The functions programs attach to that the kernel's BTF lists (not inlined away).
    functions: BTreeSet<&'static str>,
    /// aya's view of the attach targets in the same BTF, which it needs to load tp_btf and
    /// fexit programs ([`Btf::attach_targets`]).
    pub attach_btf: Option<aya::Btf>,
    pub offsets: KernelOffsets,
    /// Fields this kernel lacks, and why; each disables only what reads it.
    pub missing: Vec<(String, String)>,
    pub tracefs: Result<Tracefs, TracefsError>,
    pub reasons: DropReasons,
    pub symbols: Result<Kallsyms, KallsymsError>,
    pub processes: Rc<Processes>,
    /// `--stack`: the programs' `STACKS` map, once loaded.
    pub stacks: Option<StackTraceMap<MapData>>,
}

impl Knowledge {
    /// Reads BTF, tracefs and kallsyms, and starts following the container runtimes' APIs
    /// (Docker's: `docker_socket`, else DOCKER_HOST's or the default socket; Podman's). Only a kernel without BTF
    /// is fatal: without struct offsets no program can read an skb.
    pub fn load(docker_socket: Option<&Path>) -> anyhow::Result<Self> {
        // Reading /proc/kallsyms costs the kernel some tens of milliseconds of formatting:
        // done beside the BTF parse, it adds nothing to the time to ready.
        let symbols = std::thread::spawn(Kallsyms::from_proc);
        let btf = Btf::from_sys_fs().map_err(|error| {
            anyhow::anyhow!(
                "no usable kernel BTF ({error}); udptrace needs CONFIG_DEBUG_INFO_BTF=y \
                 (/sys/kernel/btf/vmlinux)"
            )
        })?;
        let tracefs = Tracefs::find_or_mount();
        let report = resolve_offsets(&btf, tracefs.as_ref().ok());
        // Drop reasons came with kfree_skb's third argument (Linux 5.17): its prototype in
        // BTF says, else the format file; without it the drop programs infer reasons.
        let kfree_skb_reason = btf.tracepoint_arguments("kfree_skb").map_or(
            report.offsets.tracepoint_args[ClassicTracepoint::KfreeSkb as usize][2]
                != OFFSET_MISSING,
            |arguments| arguments >= 3,
        );
        let reasons = if kfree_skb_reason {
            DropReasons::from_btf(&btf)
        } else {
            DropReasons::inferred()
        };
        let (typedefs, functions) = btf_attach_names();
        let typedefs: Vec<&str> = typedefs.iter().map(String::as_str).collect();
        let attach_blob = btf.attach_targets(&typedefs, &functions);
        let functions = functions
            .into_iter()
            .filter(|name| btf.has_function(name))
            .collect();
        // Everything needed from our parse is taken: free it before aya's view is built, so
        // that the two are never held at once (peak RSS).
        drop(btf);
        let attach_btf = aya::Btf::parse(&attach_blob, aya::Endianness::default()).ok();
        let symbols = symbols
            .join()
            .map_err(|_| anyhow::anyhow!("reading /proc/kallsyms panicked"))?;
        let (mut offsets, mut missing) = (report.offsets, report.missing);
        // BTF without per-CPU variables (pahole before 1.18 wrote none: Debian 11's 5.10):
        // kallsyms may list them.
        if (offsets.percpu_runqueues == OFFSET_MISSING
            || offsets.percpu_preempt_count == OFFSET_MISSING)
            && let Some((runqueues, preempt)) = symbols
                .as_ref()
                .ok()
                .and_then(Kallsyms::percpu_preempt_count)
        {
            offsets.percpu_runqueues = runqueues;
            offsets.percpu_preempt_count = preempt;
            missing.retain(|(name, _)| !name.starts_with("per-CPU "));
        }
        Ok(Self {
            offsets,
            missing,
            functions,
            attach_btf,
            tracefs,
            reasons,
            symbols,
            // Container names from the runtimes on this host, followed in the background.
            processes: Rc::new(Processes::with_containers(ContainerNames::connect(
                docker_socket,
            ))),
            stacks: None,
        })
    }

    pub fn tracefs_mounted(&self) -> bool {
        self.tracefs.is_ok()
    }

    /// Where drops happen, by kind of function (empty without kallsyms: drops whose reasons
    /// are inferred are then NOT_SPECIFIED, and a reader's drop is placed like the others).
    /// The two-argument drop programs infer reasons from it; every drop program tells a
    /// reader's drop (`DropSiteKind::Reader`) from it, and the fragments freed with their
    /// reassembled datagram (`DropSiteKind::FragList`), which none reports.
    pub fn drop_sites(&self) -> DropSites {
        match &self.symbols {
            Ok(symbols) => symbols.drop_sites(),
            Err(_) => DropSites::EMPTY,
        }
    }

    pub fn has_function(&self, name: &str) -> bool {
        self.functions.contains(name)
    }
}

impl KernelNames for Knowledge {
    fn drop_reason(&self, value: u32) -> DropReason {
        DropReason {
            name: self.reasons.name(value),
            value: Some(value),
        }
    }

    fn reasons_inferred(&self) -> bool {
        self.reasons.are_inferred()
    }

    fn symbol(&self, address: u64) -> Option<String> {
        self.symbols.as_ref().ok()?.symbolize(address)
    }

    fn socket_owner(&self, inode: u64) -> Option<Process> {
        self.processes.socket_owner(inode)
    }

    fn netns_name(&self, inode: u32) -> Option<String> {
        self.processes.netns_name(inode)
    }

    fn stack(&self, id: u32) -> Option<Vec<String>> {
        // Kept, not deleted: later events with the same stack name the same id.
        let trace = self.stacks.as_ref()?.get(&id, 0).ok()?;
        let frames = trace
            .frames()
            .iter()
            .map(|frame| (frame.ip, self.symbol(frame.ip)));
        Some(traced_frames(frames))
    }

    fn container(&self, inode: u32) -> Option<Container> {
        self.processes.container(inode)
    }
}

/// The frames of a stack from the traced kernel function on, as text (`symbol+0xoff`, the
/// address where kallsyms names none): `bpf_get_stackid` walks from inside the program, so
/// the stack starts with the program itself (JIT code, which kallsyms names `bpf_prog_*` or
/// not at all) and the tracing machinery that ran it (`bpf_trace_run3` for tp_btf and raw
/// tracepoints, kernel/trace/bpf_trace.c; `perf_trace_*` and `trace_call_bpf` for classic
/// ones; `kprobe_*` for kprobes).
fn traced_frames(frames: impl Iterator<Item = (u64, Option<String>)>) -> Vec<String> {
    const MACHINERY: [&str; 8] = [
        "bpf_prog_",
        "bpf_trace_run",
        "__bpf_trace_",
        "trace_call_bpf",
        "perf_trace_",
        "kprobe_",
        "__traceiter_",
        "bpf_trampoline_",
    ];
    frames
        .skip_while(|(_, name)| {
            name.as_ref()
                .is_none_or(|name| MACHINERY.iter().any(|prefix| name.starts_with(prefix)))
        })
        .map(|(ip, name)| name.unwrap_or_else(|| format!("{ip:#x}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::traced_frames;

    #[test]
    fn stacks_start_at_the_traced_function() {
        let frames = [
            (1, None),
            (2, Some("bpf_trace_run4+0x10d")),
            (3, Some("sk_skb_reason_drop+0x5c")),
            (4, Some("__udp4_lib_rcv+0x4bc")),
            (0xffff_ffff_c000_0010, None),
            (6, Some("ip_local_deliver_finish+0x81")),
        ]
        .map(|(ip, name)| (ip, name.map(str::to_owned)));
        assert_eq!(
            traced_frames(frames.into_iter()),
            [
                "sk_skb_reason_drop+0x5c",
                "__udp4_lib_rcv+0x4bc",
                "0xffffffffc0000010",
                "ip_local_deliver_finish+0x81"
            ]
        );
        let machinery = [(1, None), (2, Some("perf_trace_kfree_skb+0x1".to_owned()))];
        assert!(traced_frames(machinery.into_iter()).is_empty());
    }
}
