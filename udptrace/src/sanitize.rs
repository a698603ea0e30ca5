//! Strings from the kernel (`comm`, device names) are chosen by whoever runs a process or
//! names a device: they must never reach a terminal raw (escape sequences could rewrite the
//! screen an engineer is reading).

/// The NUL-terminated prefix of `bytes`, with every byte outside printable ASCII written as
/// `\xNN` (and `\` itself escaped) so the output is unambiguous and inert.
pub fn sanitize_kernel_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let mut text = String::with_capacity(end);
    for &byte in &bytes[..end] {
        match byte {
            b'\\' => text.push_str("\\\\"),
            0x20..=0x7e => text.push(char::from(byte)),
            _ => text.push_str(&format!("\\x{byte:02x}")),
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::sanitize_kernel_string;

    #[test]
    fn plain_names_pass() {
        assert_eq!(sanitize_kernel_string(b"nc\0\0\0garbage"), "nc");
        assert_eq!(sanitize_kernel_string(b"veth-c0"), "veth-c0");
    }

    #[test]
    fn control_and_high_bytes_are_escaped() {
        assert_eq!(
            sanitize_kernel_string(b"\x1b[2Jevil\xff\\"),
            "\\x1b[2Jevil\\xff\\\\"
        );
        assert_eq!(sanitize_kernel_string(b"a\nb\r"), "a\\x0ab\\x0d");
    }
}
