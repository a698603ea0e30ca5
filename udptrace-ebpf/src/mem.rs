//! Zeroing and address writes with 8-byte stores.
//!
//! Plain Rust zeroing (`EventDetail::default()`, `[0; 16]` padding of an IPv4 address) lowers
//! to calls of aya-ebpf's `memset`, a loop storing one byte per iteration (five instructions a
//! byte, `bpftool prog dump xlated` shows the calls): zeroing one `EventDetail` that way cost
//! more than everything else a hook does before its filter drops the datagram. Volatile word
//! stores are never merged back into such a call.

use core::ptr::write_volatile;

/// Zeroes `value` word by word (`Tuple`, `EventHeader`, `EventDetail`: 8-aligned, sizes
/// multiples of 8).
#[inline(always)]
pub fn zero<T>(value: &mut T) {
    const {
        assert!(
            size_of::<T>() % 8 == 0 && align_of::<T>() >= 8,
            "zero() writes whole aligned words"
        );
    };
    let words = core::ptr::from_mut(value).cast::<u64>();
    let mut index = 0;
    while index < size_of::<T>() / 8 {
        // SAFETY: in bounds and aligned (checked above at compile time).
        unsafe { write_volatile(words.add(index), 0) };
        index += 1;
    }
}

/// Stores an IPv4 address in a 16-byte `Tuple` address field: the 4 octets first, the rest 0.
#[inline(always)]
pub fn set_ipv4(address: &mut [u8; 16], octets: [u8; 4]) {
    let words = address.as_mut_ptr().cast::<u64>();
    // SAFETY: every 16-byte address written is a `Tuple` field (`saddr` at 8, `daddr` at 24 of
    // an 8-aligned `Tuple`), so 8-aligned; two words cover it.
    unsafe {
        write_volatile(words, u64::from(u32::from_ne_bytes(octets)));
        write_volatile(words.add(1), 0);
    }
}
