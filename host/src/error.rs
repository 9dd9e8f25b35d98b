//! The WIT `credential-error` as the host's bindings generate it (twice: the
//! credential's export, and the import an agent's linked credential meets),
//! to and from the core's [`vd_cred_broker::CredentialError`] (whose
//! `Display` is the component's message).

/// `From` both ways between the core error and the `credential-error` type
/// of the bindings module `$wit`.
macro_rules! conversions {
    ($wit:path) => {
        const _: () = {
            use $wit as wit;
            impl From<wit::CredentialError> for vd_cred_broker::CredentialError {
                fn from(e: wit::CredentialError) -> Self {
                    use vd_cred_broker::CredentialError as E;
                    use wit::CredentialError as W;
                    match e {
                        W::Configuration(m) => E::Configuration(m),
                        W::InvalidScopes(m) => E::InvalidScopes(m),
                        W::ScopeNotAllowed(s) => E::ScopeNotAllowed {
                            scope: s.scope,
                            known_resources: s.known_resources,
                        },
                        W::BearerUnavailable(m) => E::BearerUnavailable(m),
                        W::BrokerUnreachable(m) => E::BrokerUnreachable(m),
                        W::BrokerRejected(f) => E::BrokerRejected {
                            status: f.status,
                            detail: f.detail,
                        },
                        W::BrokerFailed(f) => E::BrokerFailed {
                            status: f.status,
                            detail: f.detail,
                        },
                        W::InvalidResponse(m) => E::InvalidResponse(m),
                        W::Unsupported(m) => E::Unsupported(m),
                    }
                }
            }

            impl From<vd_cred_broker::CredentialError> for wit::CredentialError {
                fn from(e: vd_cred_broker::CredentialError) -> Self {
                    use vd_cred_broker::CredentialError as E;
                    use wit::CredentialError as W;
                    match e {
                        E::Configuration(m) => W::Configuration(m),
                        E::InvalidScopes(m) => W::InvalidScopes(m),
                        E::ScopeNotAllowed {
                            scope,
                            known_resources,
                        } => W::ScopeNotAllowed(wit::ScopeNotAllowed {
                            scope,
                            known_resources,
                        }),
                        E::BearerUnavailable(m) => W::BearerUnavailable(m),
                        E::BrokerUnreachable(m) => W::BrokerUnreachable(m),
                        E::BrokerRejected { status, detail } => {
                            W::BrokerRejected(wit::BrokerFailure { status, detail })
                        }
                        E::BrokerFailed { status, detail } => {
                            W::BrokerFailed(wit::BrokerFailure { status, detail })
                        }
                        E::InvalidResponse(m) => W::InvalidResponse(m),
                        E::Unsupported(m) => W::Unsupported(m),
                    }
                }
            }
        };
    };
}

conversions!(crate::bindings::exports::vibedata::cred_broker::token_credential);
conversions!(crate::linked::bindings::vibedata::cred_broker::token_credential);
