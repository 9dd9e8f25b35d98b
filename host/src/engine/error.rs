//! The WIT `credential-error` as the host's bindings generate it (twice:
//! the 0.2 and 0.3 builds' exports), to and from the core's
//! [`vd_cred_broker::CredentialError`] (whose `Display` is the component's
//! message). The import an agent's linked credential meets has its own
//! conversions beside its bindings, in [`crate::linked`].

vd_cred_broker::wit_error_conversions!(
    crate::engine::bindings::exports::vibedata::cred_broker::token_credential
);
vd_cred_broker::wit_error_conversions!(
    crate::engine::p3::bindings::exports::vibedata::cred_broker_async::token_credential
);
