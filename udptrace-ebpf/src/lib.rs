// Exists so that `udptrace` can list this crate as a build-dependency (cache invalidation, see
// udptrace/Cargo.toml); the programs are the `udptrace` bin target in main.rs.
#![no_std]
