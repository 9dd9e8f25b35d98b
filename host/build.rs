//! Builds the credential component (the workspace root crate, and its WASI
//! 0.3 build in `p3/`, exposed as `VD_CRED_BROKER_P3_WASM`) for
//! wasm32-wasip2 in release and exposes it as `VD_CRED_BROKER_WASM` (this
//! crate embeds it) and, through `links`, as `DEP_VD_CRED_BROKER_WASM_PATH`
//! to dependents' build scripts, the way wasmtime's `test-programs` builds its
//! guests. The guest gets its own target directory (`<target>/guest`) so the
//! nested cargo never waits on the outer one's lock, and so debug, test,
//! clippy, release and the Python extension share one guest build. It also
//! writes each component's digest (`$OUT_DIR/digests.rs`), from which the
//! precompiled cache names its file.

#[path = "build/guest.rs"]
mod guest;

#[path = "src/engine/digest.rs"]
mod digest;

fn main() {
    let root = guest::workspace_root();
    let guest_target = guest::guest_target_dir();
    guest::build_guest(&root, &guest_target, &["vd-cred-broker"]);
    // Apart, in a target directory of its own: built together, cargo would
    // unify the core's features and give the 0.3 build the 0.2 glue (its
    // exports and WASI 0.2 imports); and building the core as its
    // dependency (without that glue) would overwrite the 0.2 component.
    let p3_target = guest_target.join("p3");
    guest::build_guest_for(&root, &p3_target, &["vd-cred-broker-p3"], guest::BARE);
    let wasm = guest_target.join("wasm32-wasip2/release/vd_cred_broker.wasm");
    assert!(wasm.exists(), "guest build produced no {}", wasm.display());
    println!("cargo:rustc-env=VD_CRED_BROKER_WASM={}", wasm.display());
    println!("cargo:path={}", wasm.display());
    let p3 = p3_target.join("wasm32-unknown-unknown/release/vd_cred_broker_p3.wasm");
    assert!(p3.exists(), "guest build produced no {}", p3.display());
    println!("cargo:rustc-env=VD_CRED_BROKER_P3_WASM={}", p3.display());
    write_digests(&[("COMPONENT_DIGEST", &wasm), ("COMPONENT_P3_DIGEST", &p3)]);
    for path in [
        "src",
        "wit",
        "p3/src",
        "p3/wit",
        "p3/Cargo.toml",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
}

/// `$OUT_DIR/digests.rs`: each embedded component's digest
/// (`precompiled::component_digest`, from the same file), so that a host
/// loading the embedded component names its cache file without hashing it
/// again.
fn write_digests(components: &[(&str, &std::path::Path)]) {
    let mut out = String::new();
    for (name, path) in components {
        let bytes = std::fs::read(path).expect("read the built component");
        let digest = digest::component_digest(&bytes);
        out += &format!("const {name}: [u8; 32] = {digest:?};\n");
    }
    let dir = std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(std::path::Path::new(&dir).join("digests.rs"), out).expect("write digests.rs");
}
