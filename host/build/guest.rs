//! Building guest components from a build script, shared by `host/build.rs`
//! (the credential) and `host-test/build.rs` (the test and example guests).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root: the parent of the building package's directory, read
/// when the script runs, not when it was compiled (cargo reuses a build
/// script compiled for the same package in another checkout that shares the
/// target directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    Path::new(&manifest_dir)
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `<target>/guest`, from OUT_DIR (`<target>/[<triple>/]<profile>/build/<pkg>-<hash>/out`).
pub fn guest_target_dir() -> PathBuf {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target = out_dir
        .ancestors()
        .skip(4)
        .find(|dir| dir.join("CACHEDIR.TAG").exists())
        .unwrap_or_else(|| out_dir.ancestors().nth(4).expect("target dir"));
    target.join("guest")
}

/// `cargo build --release --target wasm32-wasip2 --lib -p <packages>` into `guest_target`.
pub fn build_guest(root: &Path, guest_target: &Path, packages: &[&str]) {
    build_guest_for(root, guest_target, packages, WASIP2);
}

/// The target of WASI 0.2 components.
pub const WASIP2: &str = "wasm32-wasip2";

/// The target of the WASI 0.3 build: bare wasm, made a component by
/// `wasm-component-ld` (the linker rustc ships for wasm32-wasip2), so that
/// std brings in no WASI 0.2 import (wasm32-wasip2's std imports 0.2 cli and
/// io for panics and the environment); the WASI it uses comes from `wasip3`.
#[allow(
    dead_code,
    reason = "host-test's build script builds WASI 0.2 guests only"
)]
pub const BARE: &str = "wasm32-unknown-unknown";

/// [`build_guest`] for the target `triple`.
#[allow(
    dead_code,
    reason = "host-test's build script builds WASI 0.2 guests only"
)]
pub fn build_guest_for(root: &Path, guest_target: &Path, packages: &[&str], triple: &str) {
    require_wasm_target(triple);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--lib", "--target", triple, "--release"])
        .env("CARGO_TARGET_DIR", guest_target)
        .env(
            "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER",
            "wasm-component-ld",
        );
    for package in packages {
        cmd.args(["--package", package]);
    }
    // Settings meant for the outer (host) build must not leak into the guest's.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("run cargo to build the guest component");
    assert!(
        status.success(),
        "building the guest component failed (cargo's output is above). If it says the \
         {triple} target is missing, run: rustup target add {triple}"
    );
}

/// Make sure the toolchain has wasm32-wasip2. `rust-toolchain.toml` declares
/// it, but rustup's proxies install declared targets only along with a
/// missing toolchain; so under rustup (with auto-install on) this adds it,
/// as `rustup toolchain install` would, and otherwise stops with the command
/// to run.
fn require_wasm_target(triple: &str) {
    if has_wasm_target(triple) {
        return;
    }
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok();
    let auto_install = std::env::var("RUSTUP_AUTO_INSTALL").map_or(true, |v| v != "0");
    if let (Some(toolchain), true) = (toolchain, auto_install) {
        println!(
            "cargo:warning=installing the {triple} target for {toolchain} (rust-toolchain.toml)"
        );
        let _ = Command::new("rustup")
            .args(["target", "add", triple, "--toolchain", &toolchain])
            .status();
    }
    assert!(
        has_wasm_target(triple),
        "the {triple} target is not installed for this toolchain: run \
         `rustup target add {triple}`, then build again"
    );
}

/// Whether the sysroot of the compiler building us has the std of `triple`.
fn has_wasm_target(triple: &str) -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_none_or(|sysroot| sysroot.join("lib/rustlib").join(triple).exists())
}
