//! The WIT `credential-error` as the host's bindings generate it (three
//! times: the 0.2 and 0.3 builds' exports, and the import an agent's linked
//! credential meets),
//! to and from the core's [`vd_cred_broker::CredentialError`] (whose
//! `Display` is the component's message).

vd_cred_broker::wit_error_conversions!(
    crate::bindings::exports::vibedata::cred_broker::token_credential
);
vd_cred_broker::wit_error_conversions!(
    crate::linked::bindings::vibedata::cred_broker::token_credential
);
vd_cred_broker::wit_error_conversions!(
    crate::p3::bindings::exports::vibedata::cred_broker_async::token_credential
);
