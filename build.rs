//! Build script: gives the shared library its SONAME, `libdpir.so.<ABI version>`, so a program linked against
//! libdpir refuses a future libdpir whose C ABI changed. The ABI version is read from its one definition,
//! `DPIR_ABI_VERSION` in src/ffi/mod.rs.

use std::fs;

fn main() {
    const SOURCE: &str = "src/ffi/mod.rs";
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed=build.rs");
    let text = fs::read_to_string(SOURCE).unwrap_or_else(|e| panic!("cannot read {SOURCE}: {e}"));
    let abi = text
        .lines()
        .find_map(|line| {
            line.strip_prefix("pub const DPIR_ABI_VERSION: u32 = ")?.strip_suffix(';')?.parse::<u32>().ok()
        })
        .unwrap_or_else(|| panic!("{SOURCE} has no `pub const DPIR_ABI_VERSION: u32 = N;` line"));
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libdpir.so.{abi}");
    }
}
