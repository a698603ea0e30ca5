//! Everything learnt from the running kernel at start-up, in one place: struct offsets from
//! BTF, classic tracepoint layouts from tracefs, drop-reason names, kernel symbols.

use std::{path::Path, rc::Rc};

use udptrace_common::offsets::KernelOffsets;

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
    procs::Processes,
};

pub struct Knowledge {
    /// Our own BTF view (offsets, enums, functions); `None` without /sys/kernel/btf/vmlinux.
    pub btf: Option<Btf>,
    /// aya's view of the same BTF, which it needs to load tp_btf and fexit programs.
    pub aya_btf: Option<aya::Btf>,
    pub offsets: KernelOffsets,
    /// Fields this kernel lacks, and why; each disables only what reads it.
    pub missing: Vec<(String, String)>,
    pub tracefs: Result<Tracefs, TracefsError>,
    pub reasons: DropReasons,
    pub symbols: Result<Kallsyms, KallsymsError>,
    pub processes: Rc<Processes>,
}

impl Knowledge {
    /// Reads BTF, tracefs and kallsyms, and starts following the container runtime
    /// (`docker_socket`, else DOCKER_HOST's or the default socket). Only a kernel without BTF
    /// is fatal: without struct offsets no program can read an skb.
    pub fn load(docker_socket: Option<&Path>) -> anyhow::Result<Self> {
        let btf = Btf::from_sys_fs().map_err(|error| {
            anyhow::anyhow!(
                "no usable kernel BTF ({error}); udptrace needs CONFIG_DEBUG_INFO_BTF=y \
                 (/sys/kernel/btf/vmlinux)"
            )
        })?;
        let aya_btf = aya::Btf::from_sys_fs().ok();
        let tracefs = Tracefs::find_or_mount();
        let report = resolve_offsets(&btf, tracefs.as_ref().ok());
        let reasons = DropReasons::from_btf(&btf);
        let symbols = Kallsyms::from_proc();
        Ok(Self {
            offsets: report.offsets,
            missing: report.missing,
            btf: Some(btf),
            aya_btf,
            tracefs,
            reasons,
            symbols,
            // Container names from the runtimes on this host, followed in the background.
            processes: Rc::new(Processes::with_containers(ContainerNames::connect(
                docker_socket,
            ))),
        })
    }

    pub fn tracefs_mounted(&self) -> bool {
        self.tracefs.is_ok()
    }

    pub fn has_function(&self, name: &str) -> bool {
        self.btf.as_ref().is_some_and(|btf| btf.has_function(name))
    }
}

impl KernelNames for Knowledge {
    fn drop_reason(&self, value: u32) -> DropReason {
        DropReason {
            name: self.reasons.name(value),
            value: Some(value),
        }
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

    fn container(&self, inode: u32) -> Option<Container> {
        self.processes.container(inode)
    }
}
