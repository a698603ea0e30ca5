//! Kernel code addresses → `symbol+0xoff`, from /proc/kallsyms.
//!
//! Why: `skb:kfree_skb` records where an skb was freed (`location`, a return address inside
//! the function that dropped it). `__udp4_lib_rcv+0x1a2` tells NO_SOCKET-on-receive apart from
//! the same reason elsewhere.
//!
//! /proc/kallsyms lists `<address> <type> <name>[\t[module]]` per line, not necessarily sorted
//! (module and BPF symbols follow the core kernel's). Addresses read as zero when
//! `kernel.kptr_restrict` hides them from the reader (Documentation/admin-guide/sysctl/
//! kernel.rst, "kptr_restrict": 1 hides them without CAP_SYSLOG, 2 from everyone); a table of
//! zeros would name every address after one arbitrary symbol, so it is refused.

use std::io::BufRead as _;

/// A function longer than this is implausible (the largest in vmlinux are some tens of KiB):
/// an address further than this past the nearest symbol is not one kallsyms can name (data,
/// a gap before module space, a stale pointer).
const MAX_OFFSET: u64 = 1 << 20;

/// Why /proc/kallsyms gave no table.
#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    #[error("reading /proc/kallsyms: {0}")]
    Read(std::io::Error),
    #[error("/proc/kallsyms: {0}")]
    Parse(ParseError),
}

/// Why a kallsyms text names no code address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no code symbols listed")]
    NoCodeSymbols,
    #[error(
        "kernel addresses are hidden (all zero): kernel.kptr_restrict is set, or this process \
         lacks CAP_SYSLOG; drop locations cannot be named"
    )]
    AddressesHidden,
}

use udptrace_common::drops::{DropSite, DropSiteKind, DropSites};

/// Text symbols sorted by address.
#[derive(Clone, Debug, Default)]
pub struct Kallsyms {
    /// One entry per address, naming the first symbol /proc/kallsyms gives it: (address, start
    /// and length of the name in `names`). A whole kernel lists some 120 000 code symbols:
    /// one string for all the names keeps them at about 5 MiB instead of 10.
    symbols: Vec<(u64, u32, u32)>,
    names: String,
    /// Addresses of the per-CPU `runqueues` and `__preempt_count`, which /proc/kallsyms lists
    /// with CONFIG_KALLSYMS_ALL (Debian's kernels; not this machine's 6.18).
    runqueues: Option<u64>,
    preempt_count: Option<u64>,
}

impl Kallsyms {
    /// The running kernel's symbols, read line by line (the file is some 5 MiB of text).
    pub fn from_proc() -> Result<Self, KallsymsError> {
        let file = std::fs::File::open("/proc/kallsyms").map_err(KallsymsError::Read)?;
        let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
        let mut table = Self::default();
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => table.add_line(&line),
                Err(error) => return Err(KallsymsError::Read(error)),
            }
        }
        table.finish().map_err(KallsymsError::Parse)
    }

    /// Parses kallsyms text, keeping code symbols (types `t`/`T`, and weak `w`/`W`, which are
    /// code in practice); lines that do not parse are skipped.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut table = Self::default();
        for line in text.lines() {
            table.add_line(line);
        }
        table.finish()
    }

    /// Adds one `<address> <type> <name>[\t[module]]` line if it names code.
    fn add_line(&mut self, line: &str) {
        let mut parts = line.split_whitespace();
        let (Some(address), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        if let (Ok(address), "runqueues" | "__preempt_count") =
            (u64::from_str_radix(address, 16), name)
        {
            *if name == "runqueues" {
                &mut self.runqueues
            } else {
                &mut self.preempt_count
            } = Some(address);
            return;
        }
        let (Ok(address), true) = (
            u64::from_str_radix(address, 16),
            matches!(kind, "t" | "T" | "w" | "W"),
        ) else {
            return;
        };
        // Names are at most KSYM_NAME_LEN (512) bytes and the whole text some MiB: both fit.
        let (Ok(start), Ok(len)) = (u32::try_from(self.names.len()), u32::try_from(name.len()))
        else {
            return;
        };
        self.names.push_str(name);
        self.symbols.push((address, start, len));
    }

    /// Sorts the collected symbols and checks that they can name anything.
    fn finish(mut self) -> Result<Self, ParseError> {
        if self.symbols.is_empty() {
            return Err(ParseError::NoCodeSymbols);
        }
        if self.symbols.iter().all(|&(address, ..)| address == 0) {
            return Err(ParseError::AddressesHidden);
        }
        // Stable: among aliases of one address (`_stext`, `_text`, ...) the first listed stays.
        self.symbols.sort_by_key(|&(address, ..)| address);
        self.symbols.dedup_by_key(|(address, ..)| *address);
        // A few symbols are legitimately 0 in a readable table (none of type t/T on x86_64
        // today, but per-CPU or absolute ones on other configurations): they name nothing.
        self.symbols.retain(|&(address, ..)| address != 0);
        self.symbols.shrink_to_fit();
        self.names.shrink_to_fit();
        Ok(self)
    }

    /// `symbol+0xoff` for a code address; `None` below the first symbol, or too far past the
    /// nearest one to belong to it (more than 1 MiB past it).
    pub fn symbolize(&self, address: u64) -> Option<String> {
        let index = self
            .symbols
            .partition_point(|&(start, ..)| start <= address);
        let &(start, name_start, len) = self.symbols.get(index.checked_sub(1)?)?;
        let name = self.name(name_start, len)?;
        let offset = address - start;
        (offset < MAX_OFFSET).then(|| format!("{name}+{offset:#x}"))
    }

    /// The name stored at `start` for `len` bytes in `names`.
    fn name(&self, start: u32, len: u32) -> Option<&str> {
        self.names.get(start as usize..(start + len) as usize)
    }

    /// The code ranges of the functions whose drops are told apart on kernels without drop
    /// reasons (`udptrace_common::drops`), each from its address to the next symbol's, in one
    /// pass over the table; functions this kernel lacks are left out. A function counts under
    /// its compiler clones' names too: GCC renames a specialized copy
    /// (`ip_rcv_finish_core.constprop.0` on Debian 11's 5.10) and may move its unlikely paths,
    /// drops among them, into a separate `.cold` symbol.
    pub fn drop_sites(&self) -> DropSites {
        let mut sites = DropSites::EMPTY;
        let found = self.symbols.windows(2).filter_map(|pair| {
            let [(start, name_start, len), (end, ..)] = *pair else {
                return None;
            };
            let name = self.name(name_start, len)?;
            let base = name.split_once('.').map_or(name, |(base, _)| base);
            let kind = DropSiteKind::ALL
                .into_iter()
                .find(|kind| kind.functions().contains(&base))?;
            Some(DropSite {
                start,
                end,
                kind: kind as u32,
                padding: 0,
            })
        });
        for (slot, site) in sites.sites.iter_mut().zip(found) {
            *slot = site;
        }
        sites
    }

    /// Where this CPU's preempt count is relative to its run queue, for kernels whose BTF
    /// lists no per-CPU variables (Debian 11's 5.10): `KernelOffsets::percpu_runqueues` and
    /// `percpu_preempt_count` from the two symbols' addresses, rebased on the lower one (only
    /// their difference matters: every CPU's copy of the per-CPU section keeps its layout).
    /// `None` unless both are listed, nonzero (hidden addresses read 0) and within 4 GiB.
    pub fn percpu_preempt_count(&self) -> Option<(u32, u32)> {
        let (runqueues, preempt) = (self.runqueues?, self.preempt_count?);
        if runqueues == 0 || preempt == 0 {
            return None;
        }
        let base = runqueues.min(preempt);
        Some((
            u32::try_from(runqueues - base).ok()?,
            u32::try_from(preempt - base).ok()?,
        ))
    }

    /// Number of distinct symbol addresses.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines in the shape of this machine's /proc/kallsyms (Linux 6.18, x86_64; addresses of
    /// `__pfx___udp4_lib_rcv`, `__udp4_lib_rcv`, `udp_sendmsg`, `_stext` copied from it),
    /// with data, module and BPF symbols, out of order as the real file is.
    const SAMPLE: &str = "\
ffffffff81000000 T srso_alias_untrain_ret
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81b31c40 t skb_release_data
ffffffff81b31f00 T skb_release_head_state
ffffffff82043c00 T udp_sendmsg
ffffffff82046280 T __pfx___udp4_lib_rcv
ffffffff82046290 T __udp4_lib_rcv
ffffffff82046e20 t udp_unicast_rcv_skb
ffffffff82100000 t ip_rcv_finish_core.constprop.0
ffffffff82100800 t ip_rcv_finish
ffffffff821ff000 t ip_rcv_finish_core.constprop.0.cold
ffffffff821ff040 t ip_rcv_finish_cored
ffffffff822090c8 T _etext
ffffffff83000000 D some_data
ffffffff83100000 R some_rodata
ffffffffc0030000 t veth_xmit\t[veth]
ffffffffc00310b8 t bpf_prog_1e51484531ca865f_send_raw_tp\t[bpf]
ffffffff81c00000 W weak_function
not a line
zzzz T bad_address
";

    /// A kernel like Debian 11's 5.10 (CONFIG_KALLSYMS_ALL, BTF without per-CPU variables;
    /// addresses made up in the shape of zero-based x86-64 per-CPU symbols): the preempt
    /// count relative to the run queues, from kallsyms alone; without both symbols, nothing.
    #[test]
    fn the_per_cpu_preempt_count_comes_from_its_symbols() {
        let listed =
            format!("{SAMPLE}000000000002bc40 D runqueues\n0000000000017bc0 D __preempt_count\n");
        let symbols = Kallsyms::parse(&listed).unwrap();
        assert_eq!(symbols.percpu_preempt_count(), Some((0x2bc40 - 0x17bc0, 0)));
        assert_eq!(symbols.symbolize(0x2bc40), None, "data is not code");
        assert_eq!(
            Kallsyms::parse(SAMPLE).unwrap().percpu_preempt_count(),
            None
        );
    }

    #[test]
    fn symbolizes_inside_functions() {
        let symbols = Kallsyms::parse(SAMPLE).unwrap();
        assert_eq!(
            symbols.symbolize(0xffff_ffff_8204_6290 + 0x1a2).as_deref(),
            Some("__udp4_lib_rcv+0x1a2")
        );
        assert_eq!(
            symbols.symbolize(0xffff_ffff_8204_3c00).as_deref(),
            Some("udp_sendmsg+0x0")
        );
        // Function padding before __udp4_lib_rcv belongs to its __pfx_ symbol.
        assert_eq!(
            symbols.symbolize(0xffff_ffff_8204_6288).as_deref(),
            Some("__pfx___udp4_lib_rcv+0x8")
        );
        assert_eq!(
            symbols.symbolize(0xffff_ffff_c003_0040).as_deref(),
            Some("veth_xmit+0x40")
        );
        assert_eq!(
            symbols.symbolize(0xffff_ffff_81c0_0010).as_deref(),
            Some("weak_function+0x10")
        );
        // The first alias listed for an address names it.
        assert_eq!(
            symbols.symbolize(0xffff_ffff_8100_0004).as_deref(),
            Some("srso_alias_untrain_ret+0x4")
        );
        // Below every symbol, and far past the last core one (in data, 0x83000000 is D).
        assert_eq!(symbols.symbolize(0x1000), None);
        assert_eq!(symbols.symbolize(0xffff_ffff_8300_0000), None);
        assert_eq!(symbols.symbolize(u64::MAX), None);
        // Seventeen code symbols at fifteen addresses: the three aliases at _stext are one.
        assert_eq!(symbols.len(), 15);
    }

    #[test]
    fn drop_sites_are_the_functions_ranges() {
        let sites = Kallsyms::parse(SAMPLE).unwrap().drop_sites();
        // Of the listed functions, the sample has __udp4_lib_rcv, skb_release_data, and
        // ip_rcv_finish_core as a clone with a cold part: each up to the next symbol.
        assert_eq!(
            sites.kind_of(0xffff_ffff_8204_6290 + 0x9a3),
            Some(DropSiteKind::UdpReceive)
        );
        assert_eq!(sites.kind_of(0xffff_ffff_8204_6e20), None);
        assert_eq!(
            sites.kind_of(0xffff_ffff_8204_6280),
            None,
            "its __pfx_ stub"
        );
        assert_eq!(
            sites.kind_of(0xffff_ffff_8210_020e),
            Some(DropSiteKind::RouteInput)
        );
        assert_eq!(sites.kind_of(0xffff_ffff_8210_0800), None);
        assert_eq!(
            sites.kind_of(0xffff_ffff_821f_f010),
            Some(DropSiteKind::RouteInput)
        );
        assert_eq!(
            sites.kind_of(0xffff_ffff_821f_f040),
            None,
            "a longer name is another function"
        );
        assert_eq!(sites.sites.iter().filter(|s| s.kind != 0).count(), 4);
        assert_eq!(
            sites.kind_of(0xffff_ffff_81b3_1c40 + 0x1d7),
            Some(DropSiteKind::FragList)
        );
    }

    #[test]
    fn hidden_addresses_are_reported() {
        // What an unprivileged reader gets with kptr_restrict=1: every address zero.
        let hidden = SAMPLE
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(_, rest)| format!("0000000000000000 {rest}"))
            .collect::<Vec<_>>()
            .join("\n");
        let error = Kallsyms::parse(&hidden).unwrap_err();
        assert_eq!(error, ParseError::AddressesHidden);
        assert!(error.to_string().contains("kptr_restrict"), "{error}");
        assert_eq!(Kallsyms::parse("").unwrap_err(), ParseError::NoCodeSymbols);
        assert_eq!(
            Kallsyms::parse("ffffffff83000000 D only_data\n").unwrap_err(),
            ParseError::NoCodeSymbols
        );
    }

    /// The live table: readable (a full table) or refused for the one expected reason, which
    /// depends on the sysctl and the caller's capabilities, not on udptrace.
    #[test]
    fn live_kallsyms() {
        match Kallsyms::from_proc() {
            Ok(symbols) => assert!(symbols.len() > 1000, "{} symbols", symbols.len()),
            Err(error) => assert!(
                matches!(error, KallsymsError::Parse(ParseError::AddressesHidden)),
                "{error}"
            ),
        }
    }
}
