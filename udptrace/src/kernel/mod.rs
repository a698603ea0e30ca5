//! What udptrace learns from the running kernel at start-up: struct layouts from BTF,
//! tracepoint record layouts from tracefs, drop-reason names, symbols.

pub mod btf;
pub mod kallsyms;
pub mod offsets;
pub mod reasons;
pub mod tracefs;

/// The name of an errno (`ECONNREFUSED`), or `E<n>` for one not listed.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EINVAL => "EINVAL",
        libc::EPIPE => "EPIPE",
        libc::EDESTADDRREQ => "EDESTADDRREQ",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EPROTO => "EPROTO",
        _ => errno_fallback(errno),
    }
}

/// `E<n>` for unlisted errnos; leaked once per distinct value (a handful at most).
fn errno_fallback(errno: i32) -> &'static str {
    use std::{collections::HashMap, sync::Mutex};
    static NAMES: Mutex<Option<HashMap<i32, &'static str>>> = Mutex::new(None);
    let mut names = NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    names
        .get_or_insert_with(HashMap::new)
        .entry(errno)
        .or_insert_with(|| Box::leak(format!("E{errno}").into_boxed_str()))
}

#[cfg(test)]
mod tests {
    use super::errno_name;

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(111), "ECONNREFUSED");
        assert_eq!(errno_name(113), "EHOSTUNREACH");
        assert_eq!(errno_name(9999), "E9999");
        assert_eq!(errno_name(9999), "E9999");
    }
}
