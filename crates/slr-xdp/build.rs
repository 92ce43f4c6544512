//! Builds the XDP programs (bpf/*.bpf.c) with clang into one BPF object in OUT_DIR.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = PathBuf::from("bpf/slr.bpf.c");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=SLR_CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let obj = out.join("slr.bpf.o");
    let clang = std::env::var("SLR_CLANG").unwrap_or_else(|_| "clang".into());
    // The kernel's UAPI headers live under the host's multiarch directory; -target bpf does not
    // search it.
    let multiarch = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{}-linux-gnu", std::env::consts::ARCH));
    let result = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I/usr/include/{multiarch}"))
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status();
    match result {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "{clang} failed ({s}) to build the XDP programs in {}; its messages are above",
            src.display()
        ),
        Err(e) => panic!(
            "cannot run {clang} to build the XDP programs ({e}): the fast path needs clang, llvm \
             and the libbpf headers (Debian: clang llvm libbpf-dev; scripts/install-deps \
             installs them)"
        ),
    }
}
