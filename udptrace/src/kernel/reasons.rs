//! Drop-reason names from the running kernel's `enum skb_drop_reason`.
//!
//! The numbering is not stable across kernels, the names are: reasons are inserted in the
//! middle of the enum (include/net/dropreason-core.h; `dropreason.h` before 6.4), and a later
//! kernel inserted `SKB_CONSUMED` as value 1, so NO_SOCKET is 2 on 6.1 and 3 on 6.12+. The
//! value a program reads is therefore named through the running kernel's BTF, never through a
//! table built into udptrace.
//!
//! Names are rendered as the kernel's own `skb:kfree_skb` tracepoint prints them
//! (`__print_symbolic(reason, DEFINE_DROP_REASON(FN, FNe))`): without the `SKB_DROP_REASON_`
//! prefix. The two values outside that prefix lose `SKB_` (`NOT_DROPPED_YET`, `CONSUMED`).

use std::collections::HashMap;

use udptrace_common::drops::InferredReason;

use super::btf::Btf;

const PREFIX: &str = "SKB_DROP_REASON_";
/// `enum skb_drop_reason_subsys` (include/net/dropreason.h, Linux 6.4+).
const SUBSYS_PREFIX: &str = "SKB_DROP_REASON_SUBSYS_";
/// `SKB_DROP_REASON_SUBSYS_SHIFT`: the high 16 bits of a reason name the subsystem whose own
/// enum the low 16 bits index (mac80211, openvswitch; their enums live in module BTF).
const SUBSYS_SHIFT: u32 = 16;

/// Value → name of every drop reason the running kernel defines.
#[derive(Clone, Debug, Default)]
pub struct DropReasons {
    names: HashMap<u32, String>,
    /// Subsystem number → name (`OPENVSWITCH`), core (0) excluded.
    subsystems: HashMap<u32, String>,
    /// The values are udptrace's [`InferredReason`]s: the kernel's kfree_skb has no reason.
    inferred: bool,
}

impl DropReasons {
    /// The kernel's reasons; empty on a kernel without them (before 5.17) or without the enum
    /// in its BTF, where every value renders as `UNKNOWN(<n>)`.
    pub fn from_btf(btf: &Btf) -> Self {
        let mut reasons = Self::from_values(btf.enum_values("skb_drop_reason").unwrap_or_default());
        reasons.subsystems = btf
            .enum_values("skb_drop_reason_subsys")
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, value)| {
                let short = name.strip_prefix(SUBSYS_PREFIX)?;
                // CORE is the plain enum; NUM counts the subsystems.
                let value = u32::try_from(value).ok().filter(|&v| v != 0)?;
                (short != "NUM").then(|| (value, short.to_owned()))
            })
            .collect();
        reasons
    }

    /// Reasons from `enum skb_drop_reason` enumerators (full names, as in BTF).
    pub fn from_values(values: Vec<(String, i64)>) -> Self {
        let mut names = HashMap::new();
        for (name, value) in values {
            // Bounds, not reasons: SKB_DROP_REASON_MAX (one past the last core reason, also
            // listed by the tracepoint as "MAX") and SKB_DROP_REASON_SUBSYS_MASK (0xffff0000).
            if name == "SKB_DROP_REASON_MAX" || name == "SKB_DROP_REASON_SUBSYS_MASK" {
                continue;
            }
            let Ok(value) = u32::try_from(value) else {
                continue;
            };
            let short = name
                .strip_prefix(PREFIX)
                .or_else(|| name.strip_prefix("SKB_"))
                .unwrap_or(&name);
            // The first name of a value wins should a kernel ever alias one.
            names.entry(value).or_insert_with(|| short.to_owned());
        }
        Self {
            names,
            subsystems: HashMap::new(),
            inferred: false,
        }
    }

    /// For a kernel whose kfree_skb has no reason (before 5.17): the drop programs report
    /// the [`InferredReason`] they inferred.
    pub fn inferred() -> Self {
        Self {
            names: InferredReason::ALL
                .into_iter()
                .map(|reason| (reason as u32, reason.name().to_owned()))
                .collect(),
            subsystems: HashMap::new(),
            inferred: true,
        }
    }

    /// Whether the reasons are inferred by udptrace rather than given by the kernel.
    pub fn are_inferred(&self) -> bool {
        self.inferred
    }

    /// `NO_SOCKET`; for a value this kernel's enum lacks, `OPENVSWITCH(<code>)` when the high
    /// bits name a known subsystem, else `UNKNOWN(<n>)`.
    pub fn name(&self, value: u32) -> String {
        if let Some(name) = self.names.get(&value) {
            return name.clone();
        }
        match self.subsystems.get(&(value >> SUBSYS_SHIFT)) {
            Some(subsystem) => format!("{subsystem}({})", value & 0xffff),
            None => format!("UNKNOWN({value})"),
        }
    }

    /// The value of reason `name` (short form, `NO_SOCKET`) on this kernel.
    pub fn value(&self, name: &str) -> Option<u32> {
        self.names
            .iter()
            .find_map(|(&value, known)| (known == name).then_some(value))
    }

    /// Number of reasons known.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf::fixture;

    fn values(list: &[(&str, i64)]) -> Vec<(String, i64)> {
        list.iter().map(|&(n, v)| (n.to_owned(), v)).collect()
    }

    /// The start and end of the enum in Debian's 6.1.0-56-cloud-amd64 image (6.1.192), read
    /// with `bpftool btf dump file <.BTF section> format c`: no SKB_CONSUMED yet.
    fn linux_6_1() -> DropReasons {
        DropReasons::from_values(values(&[
            ("SKB_NOT_DROPPED_YET", 0),
            ("SKB_DROP_REASON_NOT_SPECIFIED", 1),
            ("SKB_DROP_REASON_NO_SOCKET", 2),
            ("SKB_DROP_REASON_NETFILTER_DROP", 7),
            ("SKB_DROP_REASON_SOCKET_RCVBUFF", 15),
            ("SKB_DROP_REASON_TC_CHAIN_NOTFOUND", 65),
            ("SKB_DROP_REASON_MAX", 66),
        ]))
    }

    #[test]
    fn numbering_differs_names_do_not() {
        let old = linux_6_1();
        let new = DropReasons::from_btf(fixture::btf());
        assert_eq!(old.name(2), "NO_SOCKET");
        assert_eq!(new.name(3), "NO_SOCKET");
        assert_eq!(old.value("SOCKET_RCVBUFF"), Some(15));
        assert_eq!(old.name(66), "UNKNOWN(66)");
        assert_eq!(old.name(0), "NOT_DROPPED_YET");
        assert_eq!(new.name(1), "CONSUMED");
    }

    /// Values in this machine's 6.18 BTF (fixture), as `bpftool btf dump file
    /// /sys/kernel/btf/vmlinux format c` prints `enum skb_drop_reason`, and as the live
    /// `skb/kfree_skb/format` lists them in its print fmt.
    #[test]
    fn the_fixture_kernel() {
        let reasons = DropReasons::from_btf(fixture::btf());
        for (name, value) in [
            ("NOT_DROPPED_YET", 0),
            ("CONSUMED", 1),
            ("NOT_SPECIFIED", 2),
            ("NO_SOCKET", 3),
            ("SOCKET_RCVBUFF", 6),
            ("UDP_CSUM", 11),
            ("NETFILTER_DROP", 12),
            ("IP_RPFILTER", 16),
            ("RECURSION_LIMIT", 127),
        ] {
            assert_eq!(reasons.name(value), name);
            assert_eq!(reasons.value(name), Some(value));
        }
        // 0..=127; MAX (128) and SUBSYS_MASK (0xffff0000) are bounds.
        assert_eq!(reasons.len(), 128);
        assert_eq!(reasons.name(128), "UNKNOWN(128)");
        assert_eq!(reasons.value("MAX"), None);
        assert_eq!(reasons.name(0xffff_0000), "UNKNOWN(4294901760)");
        // enum skb_drop_reason_subsys: MAC80211_UNUSABLE = 1, OPENVSWITCH = 2.
        assert_eq!(reasons.name((2 << 16) | 5), "OPENVSWITCH(5)");
        assert_eq!(reasons.name((1 << 16) | 1), "MAC80211_UNUSABLE(1)");
        assert_eq!(reasons.name(9 << 16), "UNKNOWN(589824)");
    }

    #[test]
    fn inferred_reasons_are_named_like_the_kernels_own() {
        let reasons = DropReasons::inferred();
        assert!(reasons.are_inferred());
        assert!(!linux_6_1().are_inferred());
        assert_eq!(reasons.name(InferredReason::NoSocket as u32), "NO_SOCKET");
        assert_eq!(
            reasons.name(InferredReason::SocketRcvbuff as u32),
            "SOCKET_RCVBUFF"
        );
        assert_eq!(
            reasons.value("NETFILTER_DROP"),
            Some(InferredReason::NetfilterDrop as u32)
        );
        assert_eq!(reasons.len(), InferredReason::COUNT);
    }

    #[test]
    fn a_kernel_without_the_enum() {
        let reasons = DropReasons::from_values(Vec::new());
        assert!(reasons.is_empty());
        assert_eq!(reasons.name(2), "UNKNOWN(2)");
    }
}
