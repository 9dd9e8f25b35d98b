//! Builds the credential component (the workspace root crate) for
//! wasm32-wasip2 in release and exposes it as `VD_CRED_BROKER_WASM` (this
//! crate embeds it) and, through `links`, as `DEP_VD_CRED_BROKER_WASM_PATH`
//! to dependents' build scripts, the way wasmtime's `test-programs` builds its
//! guests. The guest gets its own target directory (`<target>/guest`) so the
//! nested cargo never waits on the outer one's lock, and so debug, test,
//! clippy, release and the Python extension share one guest build.

#[path = "build/guest.rs"]
mod guest;

fn main() {
    let root = guest::workspace_root();
    let guest_target = guest::guest_target_dir();
    guest::build_guest(&root, &guest_target, &["vd-cred-broker"]);
    let wasm = guest_target.join("wasm32-wasip2/release/vd_cred_broker.wasm");
    assert!(wasm.exists(), "guest build produced no {}", wasm.display());
    println!("cargo:rustc-env=VD_CRED_BROKER_WASM={}", wasm.display());
    println!("cargo:path={}", wasm.display());
    for path in ["src", "wit", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
}
