//! Compiles `interceptor-ebpf` for the BPF target with aya-build and leaves the object in
//! OUT_DIR, where `capture::loader` embeds it with `include_bytes_aligned!`. The daemon thus
//! needs no toolchain at run time. Needs nightly + rust-src and bpf-linker (scripts/bootstrap.sh).
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("interceptor/ has no parent directory"))?
        .join("interceptor-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?
        .to_owned();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "interceptor-ebpf",
            root_dir: &root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
