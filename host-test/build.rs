//! Builds the guest component (the workspace root crate) and the sandbox probe
//! for wasm32-wasip2 in release, and exposes their paths to the host as
//! `VD_CRED_BROKER_WASM` and `VD_SANDBOX_PROBE_WASM`, the way wasmtime's
//! `test-programs` does. The guest gets its own target directory
//! (`target/guest`) so the nested cargo never waits on the outer one's lock,
//! and so debug, test, clippy and release host builds share one guest build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let target = out_dir
        .ancestors()
        .nth(4)
        .expect("target dir")
        .to_path_buf();
    let guest_target = target.join("guest");

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--package",
            "vd-cred-broker",
            "--package",
            "sandbox-probe",
            "--package",
            "keyvault-reader",
            "--lib",
            "--target",
            "wasm32-wasip2",
            "--release",
        ])
        .env("CARGO_TARGET_DIR", &guest_target);
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
        "building the guest component failed (cargo's output is above); if the target is \
         missing, run: rustup target add wasm32-wasip2"
    );

    let release = guest_target.join("wasm32-wasip2/release");
    let composed = release.join("keyvault_composed.wasm");
    compose(
        &release.join("keyvault_reader.wasm"),
        &release.join("vd_cred_broker.wasm"),
        &composed,
    );
    println!(
        "cargo:rustc-env=VD_KEYVAULT_COMPOSED_WASM={}",
        composed.display()
    );
    for (var, file) in [
        ("VD_CRED_BROKER_WASM", "vd_cred_broker.wasm"),
        ("VD_SANDBOX_PROBE_WASM", "sandbox_probe.wasm"),
    ] {
        let wasm = guest_target.join("wasm32-wasip2/release").join(file);
        assert!(wasm.exists(), "guest build produced no {}", wasm.display());
        println!("cargo:rustc-env={var}={}", wasm.display());
    }
    for path in [
        "src",
        "wit",
        "Cargo.toml",
        "Cargo.lock",
        "host-test/probe/src",
        "host-test/probe/wit",
        "host-test/probe/Cargo.toml",
        "examples/keyvault-reader/src",
        "examples/keyvault-reader/wit",
        "examples/keyvault-reader/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
}

/// `wac plug socket --plug plug -o out`, with the wac-graph library.
fn compose(socket: &Path, plug: &Path, out: &Path) {
    use wac_graph::{CompositionGraph, EncodeOptions, types::Package};
    let mut graph = CompositionGraph::new();
    let mut register = |name: &str, path: &Path| {
        let package = Package::from_file(name, None, path, graph.types_mut())
            .unwrap_or_else(|e| panic!("reading {}: {e:#}", path.display()));
        graph.register_package(package).expect("register package")
    };
    let socket = register("vibedata:keyvault-reader", socket);
    let plug = register("vibedata:cred-broker", plug);
    wac_graph::plug(&mut graph, vec![plug], socket).expect("plug the credential into the consumer");
    let bytes = graph
        .encode(EncodeOptions::default())
        .expect("encode the composition");
    std::fs::write(out, bytes).expect("write the composed component");
}
