//! Builds the test and example guests (the sandbox probe, the test agent, the
//! Key Vault reader and the wstd agent) for wasm32-wasip2 in release, composes
//! the reader with the credential component that `vd-cred-host` built (its
//! path arrives as `DEP_VD_CRED_BROKER_WASM_PATH`), and exposes the paths to
//! this crate as `VD_SANDBOX_PROBE_WASM`, `VD_TEST_AGENT_WASM`,
//! `VD_WSTD_AGENT_WASM` and `VD_KEYVAULT_COMPOSED_WASM`, and cargo's target
//! directory as `VD_CARGO_TARGET_DIR`.

#[path = "../host/build/guest.rs"]
mod guest;

use std::path::{Path, PathBuf};

fn main() {
    let root = guest::workspace_root();
    let credential = PathBuf::from(
        std::env::var_os("DEP_VD_CRED_BROKER_WASM_PATH").expect("vd-cred-host's component path"),
    );
    let guest_target = guest::guest_target_dir();
    // cargo's target directory, for what is built beside cargo (the
    // JavaScript agent, the original's virtualenv).
    println!(
        "cargo:rustc-env=VD_CARGO_TARGET_DIR={}",
        guest_target.parent().expect("target dir").display()
    );
    guest::build_guest(
        &root,
        &guest_target,
        &[
            "sandbox-probe",
            "test-agent",
            "keyvault-reader",
            "wstd-agent",
        ],
    );

    let release = guest_target.join("wasm32-wasip2/release");
    let composed = release.join("keyvault_composed.wasm");
    compose(
        &release.join("keyvault_reader.wasm"),
        &credential,
        &composed,
    );
    println!(
        "cargo:rustc-env=VD_KEYVAULT_COMPOSED_WASM={}",
        composed.display()
    );
    for (var, file) in [
        ("VD_SANDBOX_PROBE_WASM", "sandbox_probe.wasm"),
        ("VD_TEST_AGENT_WASM", "test_agent.wasm"),
        ("VD_WSTD_AGENT_WASM", "wstd_agent.wasm"),
    ] {
        let wasm = release.join(file);
        assert!(wasm.exists(), "guest build produced no {}", wasm.display());
        println!("cargo:rustc-env={var}={}", wasm.display());
    }
    println!("cargo:rerun-if-changed={}", credential.display());
    for path in [
        "host-test/probe/src",
        "host-test/probe/wit",
        "host-test/probe/Cargo.toml",
        "host-test/agent/src",
        "host-test/agent/wit",
        "host-test/agent/Cargo.toml",
        "examples/keyvault-reader/src",
        "examples/keyvault-reader/wit",
        "examples/keyvault-reader/Cargo.toml",
        "examples/wstd-agent/src",
        "examples/wstd-agent/wit",
        "examples/wstd-agent/Cargo.toml",
        "guest/src",
        "guest/Cargo.toml",
        "wit",
        "Cargo.lock",
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
