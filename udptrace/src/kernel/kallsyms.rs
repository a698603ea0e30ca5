//! Kernel addresses → `symbol+0xoff`, from /proc/kallsyms.

/// Text symbols sorted by address.
#[derive(Debug)]
pub struct Kallsyms {
    symbols: Vec<(u64, String)>,
}

impl Kallsyms {
    pub fn from_proc() -> Result<Self, String> {
        let text = std::fs::read_to_string("/proc/kallsyms")
            .map_err(|e| format!("reading /proc/kallsyms: {e}"))?;
        Self::parse(&text)
    }

    /// Parses kallsyms text; all-zero addresses mean `kptr_restrict` hides them.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut symbols: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let address = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                let name = parts.next()?;
                // Text symbols only: a drop location is always code.
                matches!(kind, "t" | "T" | "w" | "W").then(|| (address, name.to_owned()))
            })
            .collect();
        if symbols.is_empty() {
            return Err("no symbols in /proc/kallsyms".into());
        }
        if symbols.iter().all(|(address, _)| *address == 0) {
            return Err("kernel addresses are hidden (kernel.kptr_restrict); run as root".into());
        }
        symbols.sort_unstable_by_key(|(address, _)| *address);
        Ok(Self { symbols })
    }

    /// `symbol+0xoff` for a code address, `None` outside the table.
    pub fn symbolize(&self, address: u64) -> Option<String> {
        let index = self.symbols.partition_point(|(start, _)| *start <= address);
        let (start, name) = self.symbols.get(index.checked_sub(1)?)?;
        // Beyond the last symbol by more than a plausible function size: not kernel text.
        if index == self.symbols.len() && address - start > 0x10_0000 {
            return None;
        }
        Some(format!("{name}+{:#x}", address - start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "ffffffff82046000 T __udp4_lib_rcv
ffffffff82046900 t udp_unicast_rcv_skb
ffffffff82045000 T udp_sendmsg
ffffffff83000000 D some_data
";

    #[test]
    fn symbolizes_inside_functions() {
        let symbols = Kallsyms::parse(SAMPLE).unwrap();
        assert_eq!(
            symbols.symbolize(0xffff_ffff_8204_674c).as_deref(),
            Some("__udp4_lib_rcv+0x74c")
        );
        assert_eq!(
            symbols.symbolize(0xffff_ffff_8204_5000).as_deref(),
            Some("udp_sendmsg+0x0")
        );
        assert_eq!(symbols.symbolize(0x1000), None);
    }

    #[test]
    fn hidden_addresses_are_reported() {
        let hidden = "0000000000000000 T __udp4_lib_rcv\n0000000000000000 T udp_sendmsg\n";
        assert!(
            Kallsyms::parse(hidden)
                .unwrap_err()
                .contains("kptr_restrict")
        );
        assert!(Kallsyms::parse("").is_err());
    }
}
