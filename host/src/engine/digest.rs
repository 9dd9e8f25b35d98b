//! A component's digest, from which the precompiled cache names its file.
//! The build script includes this file too (`#[path]`), so the digests it
//! works out for the embedded components are made the same way.

/// BLAKE3 over the component's length (8 bytes, little-endian) and its
/// bytes.
pub fn component_digest(wasm_bytes: &[u8]) -> [u8; 32] {
    let mut digest = blake3::Hasher::new();
    digest.update(&(wasm_bytes.len() as u64).to_le_bytes());
    digest.update(wasm_bytes);
    *digest.finalize().as_bytes()
}
