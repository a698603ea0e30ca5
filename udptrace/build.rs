//! Builds `udptrace-ebpf` for bpfel-unknown-none with the nightly toolchain and bpf-linker (set
//! up by `cargo xtask setup`) and leaves the object in `OUT_DIR/udptrace`, which `main` embeds.
//!
//! `UDPTRACE_SKIP_EBPF=1` writes an empty object instead, so pure-logic work (`cargo check`,
//! clippy, unit tests of decoders and parsers) runs on machines without the BPF toolchain; the
//! binary then refuses to trace with a clear message.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=UDPTRACE_SKIP_EBPF");
    if env::var_os("UDPTRACE_SKIP_EBPF").is_some_and(|v| v != "0") {
        let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
        fs::write(out_dir.join("udptrace"), []).context("writing the empty eBPF stub")?;
        println!("cargo:warning=UDPTRACE_SKIP_EBPF set: the binary embeds no eBPF object");
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf_package = metadata
        .packages
        .into_iter()
        .find(|package| package.name.as_str() == "udptrace-ebpf")
        .ok_or_else(|| anyhow!("udptrace-ebpf package not found"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let ebpf_package = aya_build::Package {
        name: name.as_str(),
        root_dir: manifest_path
            .parent()
            .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?
            .as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf_package], Toolchain::default())
}
