//! What udptrace learns from the running kernel at start-up: struct layouts from BTF
//! ([`btf`], [`offsets`]), tracepoint record layouts from tracefs ([`tracefs`]), drop-reason
//! names ([`reasons`]), symbols ([`kallsyms`]); and errno names.
//!
//! Everything here reads the kernel it runs on rather than assuming one: layouts and enum
//! numbering change between releases (../shared/notes/environment.md).

pub mod btf;
pub mod kallsyms;
pub mod offsets;
pub mod reasons;
pub mod tracefs;

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

/// `MAX_ERRNO` (include/linux/err.h): kernel error codes are 1..=4095.
const MAX_ERRNO: u32 = 4095;

/// The name of an errno: `ECONNREFUSED` for 111 (x86/arm generic numbering, via libc). The
/// kernel's negative convention is accepted too (-111 → `ECONNREFUSED`), since socket errors
/// and route lookups report `-errno`. Unlisted values render as `E<n>`, values beyond
/// `MAX_ERRNO` as `E?`.
pub fn errno_name(errno: i32) -> &'static str {
    let code = errno.unsigned_abs();
    let Ok(code) = i32::try_from(code) else {
        return "E?";
    };
    match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOSPC => "ENOSPC",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::ENODATA => "ENODATA",
        libc::ENONET => "ENONET",
        libc::ENOLINK => "ENOLINK",
        libc::EPROTO => "EPROTO",
        libc::EBADMSG => "EBADMSG",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EDESTADDRREQ => "EDESTADDRREQ",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPROTOTYPE => "EPROTOTYPE",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EPFNOSUPPORT => "EPFNOSUPPORT",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ENETRESET => "ENETRESET",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOBUFS => "ENOBUFS",
        libc::EISCONN => "EISCONN",
        libc::ENOTCONN => "ENOTCONN",
        libc::ESHUTDOWN => "ESHUTDOWN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EKEYREJECTED => "EKEYREJECTED",
        _ => errno_fallback(code),
    }
}

/// `E<n>` for an unlisted errno up to MAX_ERRNO (each leaked once, so at most 4096 small
/// strings ever), `E?` for anything larger.
fn errno_fallback(code: i32) -> &'static str {
    static NAMES: Mutex<Option<HashMap<i32, &'static str>>> = Mutex::new(None);
    if !(0..=MAX_ERRNO as i32).contains(&code) {
        return "E?";
    }
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    names
        .get_or_insert_with(HashMap::new)
        .entry(code)
        .or_insert_with(|| Box::leak(format!("E{code}").into_boxed_str()))
}

#[cfg(test)]
mod tests {
    use super::errno_name;

    #[test]
    fn errno_names() {
        for (errno, name) in [
            (111, "ECONNREFUSED"),
            (113, "EHOSTUNREACH"),
            (101, "ENETUNREACH"),
            (90, "EMSGSIZE"),
            (11, "EAGAIN"),
            (105, "ENOBUFS"),
            (1, "EPERM"),
            (13, "EACCES"),
            (22, "EINVAL"),
            (12, "ENOMEM"),
            (104, "ECONNRESET"),
            (99, "EADDRNOTAVAIL"),
            (89, "EDESTADDRREQ"),
            (32, "EPIPE"),
        ] {
            assert_eq!(errno_name(errno), name);
            assert_eq!(errno_name(-errno), name, "kernel-style -{name}");
        }
        assert_eq!(errno_name(4000), "E4000");
        assert_eq!(errno_name(-4000), "E4000");
        assert_eq!(errno_name(0), "E0");
        assert_eq!(errno_name(4096), "E?");
        assert_eq!(errno_name(i32::MIN), "E?");
    }
}
