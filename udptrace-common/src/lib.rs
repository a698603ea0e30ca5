//! Types shared by the kernel programs (`udptrace-ebpf`) and userspace (`udptrace`).
//!
//! Everything here is `#[repr(C)]` plain data: the eBPF side writes it into the ring buffer or
//! reads it from globals, userspace reads or writes the same bytes. Change a layout on one side
//! only together with the other (the decoder checks sizes, see `udptrace/src/decode.rs`).
#![no_std]

#[macro_use]
mod table;

pub mod drops;
pub mod event;
pub mod filter;
pub mod names;
pub mod offsets;
