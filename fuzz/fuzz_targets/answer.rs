//! Fuzz the broker-answer parser and the error excerpt: no input may panic,
//! and no error may quote the secret it was told about.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vd_cred_broker::{EXCERPT_CHARS, excerpt, parse_answer, parse_helper_answer};

const SECRET: &str = "vd_iat_fuzzsecret";

fuzz_target!(|data: &[u8]| {
    let status = data.first().map_or(200, |b| 100 + u16::from(*b) * 2);
    let body = data.get(1..).unwrap_or_default();
    if let Err(e) = parse_answer(status, body, &[SECRET]) {
        assert!(!e.to_string().contains(SECRET));
    }
    let _ = parse_helper_answer(status, body);
    let e = excerpt(body, &[SECRET]);
    assert!(e.chars().count() <= EXCERPT_CHARS + 3);
    assert!(!e.contains(SECRET));
});
