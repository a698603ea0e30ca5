//! tracefs: where it is, and the layout of a tracepoint's record from its `format` file
//! (Documentation/trace/events.rst, "Event formats").

use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatField {
    pub name: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

/// A mounted tracefs.
#[derive(Clone, Debug)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds tracefs, mounting it at /sys/kernel/tracing when it is not mounted anywhere.
    pub fn find_or_mount() -> Result<Self, String> {
        for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
            if Path::new(root).join("events").is_dir() {
                return Ok(Self { root: root.into() });
            }
        }
        let status = std::process::Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status()
            .map_err(|e| format!("tracefs is not mounted and running mount failed: {e}"))?;
        if status.success() && Path::new("/sys/kernel/tracing/events").is_dir() {
            Ok(Self {
                root: "/sys/kernel/tracing".into(),
            })
        } else {
            Err(
                "tracefs is not mounted and `mount -t tracefs nodev /sys/kernel/tracing` failed"
                    .into(),
            )
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The record fields of `group:event`, or an error when the event does not exist.
    pub fn format(&self, group: &str, event: &str) -> Result<Vec<FormatField>, String> {
        let path = self
            .root
            .join("events")
            .join(group)
            .join(event)
            .join("format");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{group}:{event} not available ({}: {e})", path.display()))?;
        Ok(parse_format(&text))
    }
}

/// Parses the `field:` lines of a format file. A field's name is the last identifier of its
/// declaration, without array brackets (`__u8 saddr[4]` → `saddr`).
pub fn parse_format(text: &str) -> Vec<FormatField> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let mut declaration = None;
            let (mut offset, mut size, mut signed) = (None, None, false);
            for part in line.split(';') {
                let part = part.trim();
                if let Some(rest) = part.strip_prefix("field:") {
                    declaration = Some(rest.trim());
                } else if let Some(rest) = part.strip_prefix("offset:") {
                    offset = rest.trim().parse().ok();
                } else if let Some(rest) = part.strip_prefix("size:") {
                    size = rest.trim().parse().ok();
                } else if let Some(rest) = part.strip_prefix("signed:") {
                    signed = rest.trim() == "1";
                }
            }
            let declaration = declaration?;
            let name = declaration
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()?
                .split('[')
                .next()?
                .to_owned();
            Some(FormatField {
                name,
                offset: offset?,
                size: size?,
                signed,
            })
        })
        .filter(|field| !field.name.starts_with("common_"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// skb:kfree_skb on Linux 6.1 (Debian 6.1.0-56, read in a QEMU guest).
    const KFREE_SKB_6_1: &str = "name: kfree_skb
ID: 1368
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:28;\tsize:4;\tsigned:0;

print fmt: \"skbaddr=%p protocol=%u location=%p reason: %s\"
";

    /// skb:kfree_skb on Linux 6.12 and later (this machine's 6.18 has the same layout).
    const KFREE_SKB_6_12: &str = "name: kfree_skb
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;
";

    const ICMP_SEND: &str = "format:
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int type;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int code;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u8 saddr[4];\toffset:24;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u16 sport;\toffset:32;\tsize:2;\tsigned:0;
";

    fn field<'a>(fields: &'a [FormatField], name: &str) -> &'a FormatField {
        fields.iter().find(|f| f.name == name).unwrap()
    }

    #[test]
    fn reason_moved_between_6_1_and_6_12() {
        let old = parse_format(KFREE_SKB_6_1);
        let new = parse_format(KFREE_SKB_6_12);
        assert_eq!(field(&old, "reason").offset, 28);
        assert_eq!(field(&new, "reason").offset, 36);
        assert_eq!(field(&new, "rx_sk").offset, 24);
        assert!(old.iter().all(|f| !f.name.starts_with("common_")));
        assert_eq!(field(&old, "skbaddr").size, 8);
    }

    #[test]
    fn arrays_and_signedness() {
        let fields = parse_format(ICMP_SEND);
        assert_eq!(field(&fields, "saddr").offset, 24);
        assert_eq!(field(&fields, "saddr").size, 4);
        assert!(field(&fields, "type").signed);
        assert!(!field(&fields, "skbaddr").signed);
    }

    #[test]
    fn garbage_is_ignored() {
        assert!(parse_format("field:;offset:x;\n\0\0garbage;;;").is_empty());
    }

    #[test]
    fn live_kfree_skb_has_a_reason() {
        let tracefs = Tracefs::find_or_mount().expect("tracefs (root test)");
        let fields = tracefs.format("skb", "kfree_skb").unwrap();
        assert_eq!(field(&fields, "reason").size, 4);
    }
}
