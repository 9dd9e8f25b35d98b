//! Debug builds of `vd-cred` on Linux link as a position-dependent
//! executable (`-no-pie`). A debug binary of this size carries about
//! 190,000 relative relocations (4.6 MB of them) that the dynamic loader
//! would apply at every start, dirtying the pages of relocated data as it
//! goes; position-dependent, the linker has applied them. `vd-cred
//! get-token` against a loopback broker took 14 ms against 19-22 ms (40
//! runs of each, interleaved), its peak memory 33 MiB against 40 MiB.
//! Release builds, the ones deployed (`cargo install --path cli`), stay
//! position-independent, with the executable's address randomised.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let debug = std::env::var("PROFILE").is_ok_and(|profile| profile == "debug");
    if linux && debug {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
