//! Facts about the host udptrace runs on that are not kernel layouts: privileges, devices,
//! namespaces.

use std::{ffi::CString, fs::File, os::fd::AsRawFd as _, path::Path};

use anyhow::{Context as _, bail};

/// Capability bits (include/uapi/linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities of this process (`CapEff` in /proc/self/status).
pub fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Capabilities tracing needs that `caps` lacks, by name.
pub fn missing_capabilities(caps: u64) -> Vec<&'static str> {
    let has = |bit: u32| caps & (1 << bit) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

/// Fails with one line naming what is missing when this process cannot load tracing programs.
pub fn preflight() -> anyhow::Result<()> {
    let missing = missing_capabilities(effective_capabilities());
    if !missing.is_empty() {
        bail!(
            "udptrace needs root, or the capabilities {}: run it with sudo",
            missing.join(", ")
        );
    }
    raise_memlock_limit();
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones use memcg and ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an rlimit; failure leaves the old limit, which new kernels ignore.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) };
}

/// Index of device `name` in the network namespace at `netns` (udptrace's own when `None`).
pub fn ifindex_in(netns: Option<&Path>, name: &str) -> anyhow::Result<u32> {
    let name_c = CString::new(name).with_context(|| format!("-i {name:?}: invalid name"))?;
    let lookup = move || -> anyhow::Result<u32> {
        // SAFETY: valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name_c.as_ptr()) };
        if index == 0 {
            bail!("-i {}: no such device", name_c.to_string_lossy());
        }
        Ok(index)
    };
    match netns {
        None => lookup(),
        Some(path) => {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            // setns affects only the calling thread: do it in a short-lived one.
            std::thread::spawn(move || -> anyhow::Result<u32> {
                // SAFETY: valid fd of a network namespace file.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!(
                        "entering network namespace: {}",
                        std::io::Error::last_os_error()
                    );
                }
                lookup()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("namespace lookup thread panicked"))?
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_requirements() {
        assert!(missing_capabilities(1 << CAP_SYS_ADMIN).is_empty());
        assert!(
            missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN))
                .is_empty()
        );
        assert_eq!(
            missing_capabilities(1 << CAP_BPF),
            ["CAP_PERFMON", "CAP_NET_ADMIN"]
        );
        assert_eq!(
            missing_capabilities(0),
            ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        );
    }

    #[test]
    fn loopback_has_an_index() {
        assert_eq!(ifindex_in(None, "lo").unwrap(), 1);
        assert!(ifindex_in(None, "no-such-dev0").is_err());
    }
}
