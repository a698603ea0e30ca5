//! bpf-linker links the bitcode rustc emits for bpfel-unknown-none; rebuild when it changes.
fn main() {
    let bpf_linker = which::which("bpf-linker")
        .expect("bpf-linker not on PATH: run `cargo xtask setup` (it installs it)");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
