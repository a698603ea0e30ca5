//! Drop-reason names from the running kernel's `enum skb_drop_reason`: the numbering differs
//! between kernels (NO_SOCKET is 2 on 6.1 and 3 on 6.12+), the names do not.

use std::collections::HashMap;

use super::btf::Btf;

const PREFIX: &str = "SKB_DROP_REASON_";

#[derive(Default)]
pub struct DropReasons {
    names: HashMap<u32, String>,
}

impl DropReasons {
    pub fn from_btf(btf: &Btf) -> Self {
        Self::from_values(btf.enum_values("skb_drop_reason").unwrap_or_default())
    }

    pub fn from_values(values: Vec<(String, i64)>) -> Self {
        let names = values
            .into_iter()
            // SKB_DROP_REASON_MAX and the subsystem mask are bounds, not reasons.
            .filter(|(name, _)| !name.ends_with("_MAX") && !name.contains("SUBSYS_MASK"))
            .filter_map(|(name, value)| {
                let short = name.strip_prefix(PREFIX).unwrap_or(&name).to_owned();
                Some((u32::try_from(value).ok()?, short))
            })
            .collect();
        Self { names }
    }

    /// `NO_SOCKET`, or `UNKNOWN(<n>)` for a value this kernel's enum lacks.
    pub fn name(&self, value: u32) -> String {
        self.names
            .get(&value)
            .cloned()
            .unwrap_or_else(|| format!("UNKNOWN({value})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_differs_names_do_not() {
        let linux_6_1 = DropReasons::from_values(vec![
            ("SKB_NOT_DROPPED_YET".into(), 0),
            ("SKB_DROP_REASON_NOT_SPECIFIED".into(), 1),
            ("SKB_DROP_REASON_NO_SOCKET".into(), 2),
            ("SKB_DROP_REASON_MAX".into(), 3),
        ]);
        let linux_7_3 = DropReasons::from_values(vec![
            ("SKB_NOT_DROPPED_YET".into(), 0),
            ("SKB_CONSUMED".into(), 1),
            ("SKB_DROP_REASON_NOT_SPECIFIED".into(), 2),
            ("SKB_DROP_REASON_NO_SOCKET".into(), 3),
        ]);
        assert_eq!(linux_6_1.name(2), "NO_SOCKET");
        assert_eq!(linux_7_3.name(3), "NO_SOCKET");
        assert_eq!(linux_6_1.name(3), "UNKNOWN(3)");
        assert_eq!(linux_7_3.name(99), "UNKNOWN(99)");
    }
}
