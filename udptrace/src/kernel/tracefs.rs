//! tracefs: where it is mounted, and the layout of a tracepoint's record from its `format`
//! file (Documentation/trace/events.rst, "4. Event formats"; the file is written by
//! kernel/trace/trace_events.c, `f_show`).
//!
//! Why: classic tracepoints hand a program the raw record, whose field offsets move between
//! kernels (`skb:kfree_skb`'s `reason` is at 28 on 6.1 and at 36 on 6.12+, after `rx_sk` was
//! inserted), so udptrace reads them from the running kernel instead of hard-coding them.
//!
//! A format file looks like this (the real one separates the parts of a field line with tabs):
//!
//! ```text
//! name: kfree_skb
//! ID: 2310
//! format:
//!     field:unsigned short common_type;    offset:0;    size:2;    signed:0;
//!     ...
//!
//!     field:void * skbaddr;    offset:8;    size:8;    signed:0;
//!     field:enum skb_drop_reason reason;    offset:36;    size:4;    signed:0;
//!
//! print fmt: "skbaddr=%p ...", REC->skbaddr, ...
//! ```

use std::{
    collections::HashMap,
    ffi::CString,
    path::{Path, PathBuf},
};

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatField {
    /// `skbaddr`; array brackets removed (`__u8 saddr[4]` → `saddr`).
    pub name: String,
    /// The declaration without the name: `void *`, `__u8[4]`, `__data_loc char[]`.
    pub type_name: String,
    /// Byte offset in the record (the 8-byte `common_*` header included).
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

impl FormatField {
    /// A dynamic array (`__data_loc`, or the newer `__rel_loc`): the record holds a 32-bit
    /// locator (length << 16 | offset), not the data.
    pub fn is_dynamic(&self) -> bool {
        self.type_name.starts_with("__data_loc") || self.type_name.starts_with("__rel_loc")
    }
}

/// Why a tracepoint's format is unavailable.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("this kernel has no {group}:{event} tracepoint ({} absent)", path.display())]
    NoTracepoint {
        group: String,
        event: String,
        path: PathBuf,
    },
    #[error("reading {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// [`FormatTexts`] holds no file for the event.
    #[error("no format for {group}:{event}")]
    NotHeld { group: String, event: String },
}

/// Why tracefs could be neither found nor mounted.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs at {} is not readable: {error} (needs root)", root.display())]
    NotReadable {
        root: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "tracefs is not mounted and {target} does not exist (kernel built without \
         CONFIG_TRACING, or /sys is not sysfs)"
    )]
    NoMountPoint { target: &'static str },
    #[error(
        "tracefs is not mounted and mounting it at {target} failed: {error} (needs root or \
         CAP_SYS_ADMIN; or run `mount -t tracefs nodev {target}`)"
    )]
    MountFailed {
        target: &'static str,
        error: std::io::Error,
    },
    #[error(
        "mounted tracefs at {target} but it has no events/ directory (kernel without \
         CONFIG_EVENT_TRACING?)"
    )]
    NoEvents { target: &'static str },
}

/// Where tracepoint record layouts come from: the live tracefs, or format files kept in
/// memory (tests, offline analysis of another machine's formats).
pub trait FormatSource {
    /// The fields of `group:event`, or why they are unavailable (no such event, ...).
    fn format(&self, group: &str, event: &str) -> Result<Vec<FormatField>, FormatError>;
}

/// A mounted tracefs.
#[derive(Clone, Debug)]
pub struct Tracefs {
    root: PathBuf,
}

/// Where tracefs is mounted by convention: its own mount point since Linux 4.1, and the
/// automount inside debugfs that older tools use (Documentation/trace/ftrace.rst, "The File
/// System").
const MOUNT_POINTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

impl Tracefs {
    /// A tracefs (or a copy of its `events/` tree) at `root`, without checking it.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// tracefs where it is already mounted and readable: the conventional places first, then
    /// any tracefs mount in /proc/self/mounts.
    pub fn find() -> Option<Self> {
        candidates()
            .into_iter()
            .find(|root| root.join("events").is_dir())
            .map(Self::at)
    }

    /// Finds tracefs, mounting it at /sys/kernel/tracing when it is mounted nowhere (a fresh
    /// mount namespace such as `ip netns exec` makes, a minimal container, an initramfs).
    pub fn find_or_mount() -> Result<Self, TracefsError> {
        if let Some(found) = Self::find() {
            return Ok(found);
        }
        // Mounted but not readable: tracefs is root-only (mode 0700) unless configured
        // otherwise, and mounting again would not help.
        for root in candidates() {
            if let Err(error) = std::fs::metadata(root.join("events"))
                && error.kind() == std::io::ErrorKind::PermissionDenied
            {
                return Err(TracefsError::NotReadable { root, error });
            }
        }
        let target = MOUNT_POINTS[0];
        if !Path::new(target).is_dir() {
            return Err(TracefsError::NoMountPoint { target });
        }
        mount_tracefs(target).map_err(|error| TracefsError::MountFailed { target, error })?;
        let root = Path::new(target);
        if root.join("events").is_dir() {
            Ok(Self::at(root))
        } else {
            Err(TracefsError::NoEvents { target })
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `group:event`'s format file.
    pub fn format_path(&self, group: &str, event: &str) -> PathBuf {
        self.root
            .join("events")
            .join(group)
            .join(event)
            .join("format")
    }
}

impl FormatSource for Tracefs {
    fn format(&self, group: &str, event: &str) -> Result<Vec<FormatField>, FormatError> {
        let path = self.format_path(group, event);
        let text = std::fs::read_to_string(&path).map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                FormatError::NoTracepoint {
                    group: group.to_owned(),
                    event: event.to_owned(),
                    path: path.clone(),
                }
            } else {
                FormatError::Read {
                    path: path.clone(),
                    error,
                }
            }
        })?;
        Ok(parse_format(&text))
    }
}

/// Format files held in memory, by `(group, event)`.
#[derive(Clone, Debug, Default)]
pub struct FormatTexts {
    texts: HashMap<(String, String), String>,
}

impl FormatTexts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the format file of `group:event`.
    #[must_use]
    pub fn with(mut self, group: &str, event: &str, text: &str) -> Self {
        self.texts
            .insert((group.to_owned(), event.to_owned()), text.to_owned());
        self
    }
}

impl FormatSource for FormatTexts {
    fn format(&self, group: &str, event: &str) -> Result<Vec<FormatField>, FormatError> {
        self.texts
            .get(&(group.to_owned(), event.to_owned()))
            .map(|text| parse_format(text))
            .ok_or_else(|| FormatError::NotHeld {
                group: group.to_owned(),
                event: event.to_owned(),
            })
    }
}

/// Where tracefs may be: the conventional mount points, then the tracefs mounts listed in
/// /proc/self/mounts.
fn candidates() -> Vec<PathBuf> {
    let mounted = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    MOUNT_POINTS
        .iter()
        .map(PathBuf::from)
        .chain(tracefs_mounts(&mounted))
        .collect()
}

/// Mount points of tracefs in /proc/self/mounts text (`nodev /mnt/trace tracefs rw 0 0`;
/// spaces in paths are written `\040`, proc_pid_mounts(5)).
fn tracefs_mounts(mounts: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mounts.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, mount_point, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
        (fs_type == "tracefs").then(|| PathBuf::from(unescape_mount_path(mount_point)))
    })
}

/// Undoes the octal escapes of /proc/self/mounts (`\040` space, `\011` tab, `\012` newline,
/// `\134` backslash).
fn unescape_mount_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes[i] == b'\\';
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| escaped && digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .and_then(|d| {
                let value = d
                    .iter()
                    .fold(0u32, |value, digit| value * 8 + u32::from(digit - b'0'));
                u8::try_from(value).ok()
            });
        if let Some(byte) = octal {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `mount -t tracefs nodev <target>`, as a syscall: no dependency on a `mount` binary.
fn mount_tracefs(target: &str) -> std::io::Result<()> {
    let source = c"nodev";
    let fs_type = c"tracefs";
    let target = CString::new(target).map_err(std::io::Error::other)?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call; tracefs takes
    // no mount data, so `data` may be null (mount(2)).
    let status = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fs_type.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Parses the `field:` lines of a format file, `common_*` header fields included; any other
/// line, and field lines that do not parse, are skipped.
///
/// Each field line is `field:<declaration>;\toffset:<n>;\tsize:<n>;\tsigned:<0|1>;`
/// (trace_events.c `f_show`). The name is the declaration's last identifier; array brackets go
/// to the type (`__u8 saddr[4]` → `saddr`, `__u8[4]`; `__data_loc char[] name` → `name`,
/// `__data_loc char[]`).
pub fn parse_format(text: &str) -> Vec<FormatField> {
    text.lines().filter_map(parse_field_line).collect()
}

fn parse_field_line(line: &str) -> Option<FormatField> {
    let mut declaration = None;
    let (mut offset, mut size, mut signed) = (None, None, None);
    for part in line.trim().split(';') {
        let part = part.trim();
        if let Some(rest) = part.strip_prefix("field:") {
            declaration = Some(rest.trim());
        } else if let Some(rest) = part.strip_prefix("offset:") {
            offset = rest.trim().parse().ok();
        } else if let Some(rest) = part.strip_prefix("size:") {
            size = rest.trim().parse().ok();
        } else if let Some(rest) = part.strip_prefix("signed:") {
            signed = match rest.trim() {
                "0" => Some(false),
                "1" => Some(true),
                _ => None,
            };
        }
    }
    let declaration = declaration?;
    // `saddr[4]` → (`saddr`, `[4]`).
    let (head, array) = match declaration.find('[') {
        Some(open) if declaration.ends_with(']') && !declaration[..open].ends_with(' ') => {
            declaration.split_at(open)
        }
        _ => (declaration, ""),
    };
    let name_start = head
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |(at, c)| at + c.len_utf8());
    let name = &head[name_start..];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let type_name = format!("{}{array}", head[..name_start].trim_end());
    Some(FormatField {
        name: name.to_owned(),
        type_name,
        offset: offset?,
        size: size?,
        signed: signed?,
    })
}

/// Format files as kernels write them, for tests of this module and of `offsets`.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::FormatTexts;

    /// `skb:kfree_skb` on Linux 6.1 (Debian 6.1.0-56-cloud-amd64, 6.1.192): no `rx_sk`, so
    /// `protocol` is at 24 and `reason` at 28. Field lines as 6.1's TP_STRUCT__entry
    /// (include/trace/events/skb.h) lays them out, matching `struct trace_event_raw_kfree_skb`
    /// in that image's BTF; the print fmt is the string in that image's vmlinux with each
    /// `SKB_DROP_REASON_*` replaced by its BTF value, as TRACE_DEFINE_ENUM makes the kernel do
    /// at boot. The `ID:` line is a placeholder: IDs are handed out at boot.
    pub const KFREE_SKB_6_1: &str = r#"name: kfree_skb
ID: 1368
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:void * skbaddr;	offset:8;	size:8;	signed:0;
	field:void * location;	offset:16;	size:8;	signed:0;
	field:unsigned short protocol;	offset:24;	size:2;	signed:0;
	field:enum skb_drop_reason reason;	offset:28;	size:4;	signed:0;

print fmt: "skbaddr=%p protocol=%u location=%p reason: %s", REC->skbaddr, REC->protocol, REC->location, __print_symbolic(REC->reason, { 1, "NOT_SPECIFIED" }, { 2, "NO_SOCKET" }, { 3, "PKT_TOO_SMALL" }, { 4, "TCP_CSUM" }, { 5, "SOCKET_FILTER" }, { 6, "UDP_CSUM" }, { 7, "NETFILTER_DROP" }, { 8, "OTHERHOST" }, { 9, "IP_CSUM" }, { 10, "IP_INHDR" }, { 11, "IP_RPFILTER" }, { 12, "UNICAST_IN_L2_MULTICAST" }, { 13, "XFRM_POLICY" }, { 14, "IP_NOPROTO" }, { 15, "SOCKET_RCVBUFF" }, { 16, "PROTO_MEM" }, { 17, "TCP_MD5NOTFOUND" }, { 18, "TCP_MD5UNEXPECTED" }, { 19, "TCP_MD5FAILURE" }, { 20, "SOCKET_BACKLOG" }, { 21, "TCP_FLAGS" }, { 22, "TCP_ZEROWINDOW" }, { 23, "TCP_OLD_DATA" }, { 24, "TCP_OVERWINDOW" }, { 25, "TCP_OFOMERGE" }, { 26, "TCP_RFC7323_PAWS" }, { 27, "TCP_INVALID_SEQUENCE" }, { 28, "TCP_RESET" }, { 29, "TCP_INVALID_SYN" }, { 30, "TCP_CLOSE" }, { 31, "TCP_FASTOPEN" }, { 32, "TCP_OLD_ACK" }, { 33, "TCP_TOO_OLD_ACK" }, { 34, "TCP_ACK_UNSENT_DATA" }, { 35, "TCP_OFO_QUEUE_PRUNE" }, { 36, "TCP_OFO_DROP" }, { 37, "IP_OUTNOROUTES" }, { 38, "BPF_CGROUP_EGRESS" }, { 39, "IPV6DISABLED" }, { 40, "NEIGH_CREATEFAIL" }, { 41, "NEIGH_FAILED" }, { 42, "NEIGH_QUEUEFULL" }, { 43, "NEIGH_DEAD" }, { 44, "TC_EGRESS" }, { 45, "QDISC_DROP" }, { 46, "CPU_BACKLOG" }, { 47, "XDP" }, { 48, "TC_INGRESS" }, { 49, "UNHANDLED_PROTO" }, { 50, "SKB_CSUM" }, { 51, "SKB_GSO_SEG" }, { 52, "SKB_UCOPY_FAULT" }, { 53, "DEV_HDR" }, { 54, "DEV_READY" }, { 55, "FULL_RING" }, { 56, "NOMEM" }, { 57, "HDR_TRUNC" }, { 58, "TAP_FILTER" }, { 59, "TAP_TXFILTER" }, { 60, "ICMP_CSUM" }, { 61, "INVALID_PROTO" }, { 62, "IP_INADDRERRORS" }, { 63, "IP_INNOROUTES" }, { 64, "PKT_TOO_BIG" }, { 65, "TC_CHAIN_NOTFOUND" }, { 66, "MAX" })
"#;

    /// The following are copied verbatim from this development machine's tracefs (Linux
    /// 6.18.44, `cat /sys/kernel/tracing/events/<group>/<event>/format`).
    ///
    /// `skb:kfree_skb`: 6.12+ layout, `rx_sk` at 24 pushes `protocol` to 32 and `reason` to 36.
    pub const KFREE_SKB_6_18: &str = r#"name: kfree_skb
ID: 2310
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:void * skbaddr;	offset:8;	size:8;	signed:0;
	field:void * location;	offset:16;	size:8;	signed:0;
	field:void * rx_sk;	offset:24;	size:8;	signed:0;
	field:unsigned short protocol;	offset:32;	size:2;	signed:0;
	field:enum skb_drop_reason reason;	offset:36;	size:4;	signed:0;

print fmt: "skbaddr=%p rx_sk=%p protocol=%u location=%pS reason: %s", REC->skbaddr, REC->rx_sk, REC->protocol, REC->location, __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, { 4, "SOCKET_CLOSE" }, { 5, "SOCKET_FILTER" }, { 6, "SOCKET_RCVBUFF" }, { 7, "UNIX_DISCONNECT" }, { 8, "UNIX_SKIP_OOB" }, { 9, "PKT_TOO_SMALL" }, { 10, "TCP_CSUM" }, { 11, "UDP_CSUM" }, { 12, "NETFILTER_DROP" }, { 13, "OTHERHOST" }, { 14, "IP_CSUM" }, { 15, "IP_INHDR" }, { 16, "IP_RPFILTER" }, { 17, "UNICAST_IN_L2_MULTICAST" }, { 18, "XFRM_POLICY" }, { 19, "IP_NOPROTO" }, { 20, "PROTO_MEM" }, { 21, "TCP_AUTH_HDR" }, { 22, "TCP_MD5NOTFOUND" }, { 23, "TCP_MD5UNEXPECTED" }, { 24, "TCP_MD5FAILURE" }, { 25, "TCP_AONOTFOUND" }, { 26, "TCP_AOUNEXPECTED" }, { 27, "TCP_AOKEYNOTFOUND" }, { 28, "TCP_AOFAILURE" }, { 29, "SOCKET_BACKLOG" }, { 30, "TCP_FLAGS" }, { 31, "TCP_ABORT_ON_DATA" }, { 32, "TCP_ZEROWINDOW" }, { 33, "TCP_OLD_DATA" }, { 34, "TCP_OVERWINDOW" }, { 35, "TCP_OFOMERGE" }, { 36, "TCP_RFC7323_PAWS" }, { 37, "TCP_RFC7323_PAWS_ACK" }, { 38, "TCP_RFC7323_TW_PAWS" }, { 39, "TCP_RFC7323_TSECR" }, { 40, "TCP_LISTEN_OVERFLOW" }, { 41, "TCP_OLD_SEQUENCE" }, { 42, "TCP_INVALID_SEQUENCE" }, { 43, "TCP_INVALID_END_SEQUENCE" }, { 44, "TCP_INVALID_ACK_SEQUENCE" }, { 45, "TCP_RESET" }, { 46, "TCP_INVALID_SYN" }, { 47, "TCP_CLOSE" }, { 48, "TCP_FASTOPEN" }, { 49, "TCP_OLD_ACK" }, { 50, "TCP_TOO_OLD_ACK" }, { 51, "TCP_ACK_UNSENT_DATA" }, { 52, "TCP_OFO_QUEUE_PRUNE" }, { 53, "TCP_OFO_DROP" }, { 54, "IP_OUTNOROUTES" }, { 55, "BPF_CGROUP_EGRESS" }, { 56, "IPV6DISABLED" }, { 57, "NEIGH_CREATEFAIL" }, { 58, "NEIGH_FAILED" }, { 59, "NEIGH_QUEUEFULL" }, { 60, "NEIGH_DEAD" }, { 61, "NEIGH_HH_FILLFAIL" }, { 62, "TC_EGRESS" }, { 63, "SECURITY_HOOK" }, { 64, "QDISC_DROP" }, { 65, "QDISC_OVERLIMIT" }, { 66, "QDISC_CONGESTED" }, { 67, "CAKE_FLOOD" }, { 68, "FQ_BAND_LIMIT" }, { 69, "FQ_HORIZON_LIMIT" }, { 70, "FQ_FLOW_LIMIT" }, { 71, "CPU_BACKLOG" }, { 72, "XDP" }, { 73, "TC_INGRESS" }, { 74, "UNHANDLED_PROTO" }, { 75, "SKB_CSUM" }, { 76, "SKB_GSO_SEG" }, { 77, "SKB_UCOPY_FAULT" }, { 78, "DEV_HDR" }, { 79, "DEV_READY" }, { 80, "FULL_RING" }, { 81, "NOMEM" }, { 82, "HDR_TRUNC" }, { 83, "TAP_FILTER" }, { 84, "TAP_TXFILTER" }, { 85, "ICMP_CSUM" }, { 86, "INVALID_PROTO" }, { 87, "IP_INADDRERRORS" }, { 88, "IP_INNOROUTES" }, { 89, "IP_LOCAL_SOURCE" }, { 90, "IP_INVALID_SOURCE" }, { 91, "IP_LOCALNET" }, { 92, "IP_INVALID_DEST" }, { 93, "PKT_TOO_BIG" }, { 94, "DUP_FRAG" }, { 95, "FRAG_REASM_TIMEOUT" }, { 96, "FRAG_TOO_FAR" }, { 97, "TCP_MINTTL" }, { 98, "IPV6_BAD_EXTHDR" }, { 99, "IPV6_NDISC_FRAG" }, { 100, "IPV6_NDISC_HOP_LIMIT" }, { 101, "IPV6_NDISC_BAD_CODE" }, { 102, "IPV6_NDISC_BAD_OPTIONS" }, { 103, "IPV6_NDISC_NS_OTHERHOST" }, { 104, "QUEUE_PURGE" }, { 105, "TC_COOKIE_ERROR" }, { 106, "PACKET_SOCK_ERROR" }, { 107, "TC_CHAIN_NOTFOUND" }, { 108, "TC_RECLASSIFY_LOOP" }, { 109, "VXLAN_INVALID_HDR" }, { 110, "VXLAN_VNI_NOT_FOUND" }, { 111, "MAC_INVALID_SOURCE" }, { 112, "VXLAN_ENTRY_EXISTS" }, { 113, "NO_TX_TARGET" }, { 114, "IP_TUNNEL_ECN" }, { 115, "TUNNEL_TXINFO" }, { 116, "LOCAL_MAC" }, { 117, "ARP_PVLAN_DISABLE" }, { 118, "MAC_IEEE_MAC_CONTROL" }, { 119, "BRIDGE_INGRESS_STP_STATE" }, { 120, "CAN_RX_INVALID_FRAME" }, { 121, "CANFD_RX_INVALID_FRAME" }, { 122, "CANXL_RX_INVALID_FRAME" }, { 123, "PFMEMALLOC" }, { 124, "DUALPI2_STEP_DROP" }, { 125, "PSP_INPUT" }, { 126, "PSP_OUTPUT" }, { 127, "RECURSION_LIMIT" }, { 128, "MAX" })
"#;

    /// `icmp:icmp_send` on 6.18.
    pub const ICMP_SEND_6_18: &str = r#"name: icmp_send
ID: 2314
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skbaddr;	offset:8;	size:8;	signed:0;
	field:int type;	offset:16;	size:4;	signed:1;
	field:int code;	offset:20;	size:4;	signed:1;
	field:__u8 saddr[4];	offset:24;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:28;	size:4;	signed:0;
	field:__u16 sport;	offset:32;	size:2;	signed:0;
	field:__u16 dport;	offset:34;	size:2;	signed:0;
	field:unsigned short ulen;	offset:36;	size:2;	signed:0;

print fmt: "icmp_send: type=%d, code=%d. From %pI4:%u to %pI4:%u ulen=%d skbaddr=%p", REC->type, REC->code, REC->saddr, REC->sport, REC->daddr, REC->dport, REC->ulen, REC->skbaddr
"#;

    /// `net:net_dev_queue` on 6.18.
    pub const NET_DEV_QUEUE_6_18: &str = r#"name: net_dev_queue
ID: 2304
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:void * skbaddr;	offset:8;	size:8;	signed:0;
	field:unsigned int len;	offset:16;	size:4;	signed:0;
	field:__data_loc char[] name;	offset:20;	size:4;	signed:0;

print fmt: "dev=%s skbaddr=%p len=%u", __get_str(name), REC->skbaddr, REC->len
"#;

    /// `net:netif_receive_skb` on 6.18.
    pub const NETIF_RECEIVE_SKB_6_18: &str = r#"name: netif_receive_skb
ID: 2303
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:void * skbaddr;	offset:8;	size:8;	signed:0;
	field:unsigned int len;	offset:16;	size:4;	signed:0;
	field:__data_loc char[] name;	offset:20;	size:4;	signed:0;

print fmt: "dev=%s skbaddr=%p len=%u", __get_str(name), REC->skbaddr, REC->len
"#;

    /// `skb:consume_skb` on 6.18.
    pub const CONSUME_SKB_6_18: &str = r#"name: consume_skb
ID: 2309
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:void * skbaddr;	offset:8;	size:8;	signed:0;
	field:void * location;	offset:16;	size:8;	signed:0;

print fmt: "skbaddr=%p location=%pS", REC->skbaddr, REC->location
"#;

    /// `sock:sock_send_length` on 6.18.
    pub const SOCK_SEND_LENGTH_6_18: &str = r#"name: sock_send_length
ID: 2284
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:void * sk;	offset:8;	size:8;	signed:0;
	field:__u16 family;	offset:16;	size:2;	signed:0;
	field:__u16 protocol;	offset:18;	size:2;	signed:0;
	field:int ret;	offset:20;	size:4;	signed:1;
	field:int flags;	offset:24;	size:4;	signed:1;

print fmt: "sk address = %p, family = %s protocol = %s, length = %d, error = %d, flags = 0x%x", REC->sk, __print_symbolic(REC->family, { 2, "AF_INET" }, { 10, "AF_INET6" }), __print_symbolic(REC->protocol, { 6, "IPPROTO_TCP" }, { 132, "IPPROTO_SCTP" }, { 262, "IPPROTO_MPTCP" }), !(REC->flags & 2) ? (REC->ret > 0 ? REC->ret : 0) : 0, REC->ret < 0 ? REC->ret : 0, REC->flags
"#;

    /// `sock:sock_recv_length` on 6.18.
    pub const SOCK_RECV_LENGTH_6_18: &str = r#"name: sock_recv_length
ID: 2283
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:void * sk;	offset:8;	size:8;	signed:0;
	field:__u16 family;	offset:16;	size:2;	signed:0;
	field:__u16 protocol;	offset:18;	size:2;	signed:0;
	field:int ret;	offset:20;	size:4;	signed:1;
	field:int flags;	offset:24;	size:4;	signed:1;

print fmt: "sk address = %p, family = %s protocol = %s, length = %d, error = %d, flags = 0x%x", REC->sk, __print_symbolic(REC->family, { 2, "AF_INET" }, { 10, "AF_INET6" }), __print_symbolic(REC->protocol, { 6, "IPPROTO_TCP" }, { 132, "IPPROTO_SCTP" }, { 262, "IPPROTO_MPTCP" }), !(REC->flags & 2) ? (REC->ret > 0 ? REC->ret : 0) : 0, REC->ret < 0 ? REC->ret : 0, REC->flags
"#;

    /// `sock:sk_data_ready` on 6.18.
    pub const SK_DATA_READY_6_18: &str = r#"name: sk_data_ready
ID: 2285
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:__u16 family;	offset:16;	size:2;	signed:0;
	field:__u16 protocol;	offset:18;	size:2;	signed:0;
	field:unsigned long ip;	offset:24;	size:8;	signed:0;

print fmt: "family=%u protocol=%u func=%ps", REC->family, REC->protocol, (void *)REC->ip
"#;

    /// `fib:fib_table_lookup` on 6.18.
    pub const FIB_TABLE_LOOKUP_6_18: &str = r#"name: fib_table_lookup
ID: 2264
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:u32 tb_id;	offset:8;	size:4;	signed:0;
	field:int err;	offset:12;	size:4;	signed:1;
	field:int oif;	offset:16;	size:4;	signed:1;
	field:int iif;	offset:20;	size:4;	signed:1;
	field:u8 proto;	offset:24;	size:1;	signed:0;
	field:__u8 tos;	offset:25;	size:1;	signed:0;
	field:__u8 scope;	offset:26;	size:1;	signed:0;
	field:__u8 flags;	offset:27;	size:1;	signed:0;
	field:__u8 src[4];	offset:28;	size:4;	signed:0;
	field:__u8 dst[4];	offset:32;	size:4;	signed:0;
	field:__u8 gw4[4];	offset:36;	size:4;	signed:0;
	field:__u8 gw6[16];	offset:40;	size:16;	signed:0;
	field:u16 sport;	offset:56;	size:2;	signed:0;
	field:u16 dport;	offset:58;	size:2;	signed:0;
	field:char name[16];	offset:60;	size:16;	signed:0;

print fmt: "table %u oif %d iif %d proto %u %pI4/%u -> %pI4/%u tos %d scope %d flags %x ==> dev %s gw %pI4/%pI6c err %d", REC->tb_id, REC->oif, REC->iif, REC->proto, REC->src, REC->sport, REC->dst, REC->dport, REC->tos, REC->scope, REC->flags, REC->name, REC->gw4, REC->gw6, REC->err
"#;

    /// `fib6:fib6_table_lookup` on 6.18.
    pub const FIB6_TABLE_LOOKUP_6_18: &str = r#"name: fib6_table_lookup
ID: 2315
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:u32 tb_id;	offset:8;	size:4;	signed:0;
	field:int err;	offset:12;	size:4;	signed:1;
	field:int oif;	offset:16;	size:4;	signed:1;
	field:int iif;	offset:20;	size:4;	signed:1;
	field:u32 flowlabel;	offset:24;	size:4;	signed:0;
	field:__u8 tos;	offset:28;	size:1;	signed:0;
	field:__u8 scope;	offset:29;	size:1;	signed:0;
	field:__u8 flags;	offset:30;	size:1;	signed:0;
	field:__u8 src[16];	offset:31;	size:16;	signed:0;
	field:__u8 dst[16];	offset:47;	size:16;	signed:0;
	field:u16 sport;	offset:64;	size:2;	signed:0;
	field:u16 dport;	offset:66;	size:2;	signed:0;
	field:u8 proto;	offset:68;	size:1;	signed:0;
	field:u8 rt_type;	offset:69;	size:1;	signed:0;
	field:char name[16];	offset:70;	size:16;	signed:0;
	field:__u8 gw[16];	offset:86;	size:16;	signed:0;

print fmt: "table %3u oif %d iif %d proto %u %pI6c/%u -> %pI6c/%u flowlabel %#x tos %d scope %d flags %x ==> dev %s gw %pI6c err %d", REC->tb_id, REC->oif, REC->iif, REC->proto, REC->src, REC->sport, REC->dst, REC->dport, REC->flowlabel, REC->tos, REC->scope, REC->flags, REC->name, REC->gw, REC->err
"#;

    /// Every format udptrace reads, as this 6.18 machine has them.
    pub fn linux_6_18() -> FormatTexts {
        FormatTexts::new()
            .with("skb", "kfree_skb", KFREE_SKB_6_18)
            .with("icmp", "icmp_send", ICMP_SEND_6_18)
            .with("net", "net_dev_queue", NET_DEV_QUEUE_6_18)
            .with("net", "netif_receive_skb", NETIF_RECEIVE_SKB_6_18)
            .with("skb", "consume_skb", CONSUME_SKB_6_18)
            .with("sock", "sock_send_length", SOCK_SEND_LENGTH_6_18)
            .with("sock", "sock_recv_length", SOCK_RECV_LENGTH_6_18)
            .with("sock", "sk_data_ready", SK_DATA_READY_6_18)
            .with("fib", "fib_table_lookup", FIB_TABLE_LOOKUP_6_18)
            .with("fib6", "fib6_table_lookup", FIB6_TABLE_LOOKUP_6_18)
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::*, *};

    fn field<'a>(fields: &'a [FormatField], name: &str) -> &'a FormatField {
        fields
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no field {name}"))
    }

    fn layout(fields: &[FormatField]) -> Vec<(&str, u32, u32)> {
        fields
            .iter()
            .filter(|f| !f.name.starts_with("common_"))
            .map(|f| (f.name.as_str(), f.offset, f.size))
            .collect()
    }

    #[test]
    fn kfree_skb_reason_moved_between_6_1_and_6_12() {
        let old = parse_format(KFREE_SKB_6_1);
        assert_eq!(
            layout(&old),
            [
                ("skbaddr", 8, 8),
                ("location", 16, 8),
                ("protocol", 24, 2),
                ("reason", 28, 4)
            ]
        );
        let new = parse_format(KFREE_SKB_6_18);
        assert_eq!(
            layout(&new),
            [
                ("skbaddr", 8, 8),
                ("location", 16, 8),
                ("rx_sk", 24, 8),
                ("protocol", 32, 2),
                ("reason", 36, 4)
            ]
        );
        assert_eq!(field(&new, "reason").type_name, "enum skb_drop_reason");
        assert_eq!(field(&new, "skbaddr").type_name, "void *");
        // The common header is kept, as the kernel lists it.
        assert_eq!(field(&new, "common_pid").offset, 4);
        assert!(field(&new, "common_pid").signed);
    }

    #[test]
    fn icmp_send_arrays_and_signedness() {
        let fields = parse_format(ICMP_SEND_6_18);
        assert_eq!(
            layout(&fields),
            [
                ("skbaddr", 8, 8),
                ("type", 16, 4),
                ("code", 20, 4),
                ("saddr", 24, 4),
                ("daddr", 28, 4),
                ("sport", 32, 2),
                ("dport", 34, 2),
                ("ulen", 36, 2)
            ]
        );
        assert_eq!(field(&fields, "saddr").type_name, "__u8[4]");
        assert!(field(&fields, "type").signed);
        assert!(!field(&fields, "skbaddr").signed);
        assert_eq!(field(&fields, "skbaddr").type_name, "const void *");
    }

    #[test]
    fn dynamic_arrays_are_marked() {
        let fields = parse_format(NET_DEV_QUEUE_6_18);
        let name = field(&fields, "name");
        assert_eq!((name.offset, name.size), (20, 4));
        assert_eq!(name.type_name, "__data_loc char[]");
        assert!(name.is_dynamic());
        assert!(!field(&fields, "len").is_dynamic());
        // A fixed array is not dynamic.
        let fib = parse_format(FIB_TABLE_LOOKUP_6_18);
        assert_eq!(field(&fib, "name").type_name, "char[16]");
        assert!(!field(&fib, "name").is_dynamic());
    }

    #[test]
    fn garbage_lines_are_skipped() {
        let text = "field:;offset:x;\n\0\0garbage;;;\nfield:int a;\toffset:8;\tsize:4;\n\
                    field:int [3];\toffset:8;\tsize:4;\tsigned:1;\n\
                    field:int b;\toffset:-1;\tsize:4;\tsigned:1;\n\
                    field:int c;\toffset:12;\tsize:4;\tsigned:2;\n\
                    field:int é;\toffset:16;\tsize:4;\tsigned:1;\n\
                    field:int ok;\toffset:16;\tsize:4;\tsigned:1;";
        let fields = parse_format(text);
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].name, "ok");
        assert!(parse_format("").is_empty());
        // Every prefix of a real file parses without panicking.
        for end in (0..KFREE_SKB_6_18.len()).filter(|&i| KFREE_SKB_6_18.is_char_boundary(i)) {
            let _ = parse_format(&KFREE_SKB_6_18[..end]);
        }
    }

    #[test]
    fn in_memory_formats() {
        let formats = linux_6_18();
        assert_eq!(formats.format("skb", "kfree_skb").unwrap().len(), 9);
        assert_eq!(
            formats.format("skb", "nope").unwrap_err().to_string(),
            "no format for skb:nope"
        );
    }

    #[test]
    fn mount_table_parsing() {
        let mounts = "sysfs /sys sysfs rw 0 0\n\
                      nodev /sys/kernel/tracing tracefs rw,relatime 0 0\n\
                      tracefs /mnt/my\\040trace tracefs rw 0 0\n\
                      debugfs /sys/kernel/debug debugfs rw 0 0\n";
        assert_eq!(
            tracefs_mounts(mounts).collect::<Vec<_>>(),
            [
                PathBuf::from("/sys/kernel/tracing"),
                PathBuf::from("/mnt/my trace")
            ]
        );
        assert_eq!(unescape_mount_path("a\\134b\\0"), "a\\b\\0");
        // Not a byte: left as written.
        assert_eq!(unescape_mount_path("x\\777"), "x\\777");
    }

    /// The live tracefs of the machine the tests run on. As root (how udptrace runs), tracefs
    /// must be found or mounted and kfree_skb must carry a 4-byte reason (Linux 5.17+); as
    /// another user, the error must say what is wrong.
    #[test]
    fn live_tracefs() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        match Tracefs::find_or_mount() {
            Ok(tracefs) => {
                let fields = tracefs.format("skb", "kfree_skb").unwrap();
                assert_eq!(field(&fields, "reason").size, 4);
                assert_eq!(field(&fields, "skbaddr").offset, 8);
                let error = tracefs.format("skb", "no_such_event").unwrap_err();
                assert!(
                    matches!(error, FormatError::NoTracepoint { .. }),
                    "{error:?}"
                );
                assert!(
                    error
                        .to_string()
                        .contains("no skb:no_such_event tracepoint"),
                    "{error}"
                );
            }
            Err(error) if !root => assert!(error.to_string().contains("tracefs"), "{error}"),
            Err(error) => panic!("as root: {error}"),
        }
    }
}
