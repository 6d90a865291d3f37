//! Rebuild the eBPF object when bpf-linker changes (as in aya-template): cargo would not notice
//! otherwise, since the linker is not a Rust dependency.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
