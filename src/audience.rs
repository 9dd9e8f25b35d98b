//! Scope normalisation and the resource -> audience map.

use crate::CredentialError;
use crate::sorted_map::SortedMap;

/// The broker's six audiences, keyed by normalised resource.
pub const DEFAULT_AUDIENCES: [(&str, &str); 6] = [
    ("https://database.windows.net", "sql"),
    ("https://storage.azure.com", "storage"),
    ("https://vault.azure.net", "vault"),
    ("https://api.fabric.microsoft.com", "fabric_api"),
    ("https://analysis.windows.net/powerbi/api", "fabric_cli"),
    ("https://management.azure.com", "arm"),
];

/// Audiences whose scope class is `secret_store` (protocol 0.2); every other
/// audience is `data_platform`.
pub const SECRET_STORE_AUDIENCES: [&str; 3] = ["discovery", "validation", "key_vault_data_plane"];

/// The protocol-0.2 scope class of an audience.
///
/// ```
/// assert_eq!(vd_cred_broker::scope_class("key_vault_data_plane"), "secret_store");
/// assert_eq!(vd_cred_broker::scope_class("vault"), "data_platform");
/// ```
pub fn scope_class(audience: &str) -> &'static str {
    if SECRET_STORE_AUDIENCES.contains(&audience) {
        "secret_store"
    } else {
        "data_platform"
    }
}

/// Normalise a scope to its resource: drop one trailing `/.default`, then
/// every trailing `/`.
///
/// ```
/// use vd_cred_broker::normalize_scope;
/// assert_eq!(normalize_scope("https://vault.azure.net/.default"), "https://vault.azure.net");
/// assert_eq!(normalize_scope("https://vault.azure.net//"), "https://vault.azure.net");
/// ```
pub fn normalize_scope(scope: &str) -> &str {
    scope
        .strip_suffix("/.default")
        .unwrap_or(scope)
        .trim_end_matches('/')
}

/// Which broker audience each resource maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudienceMap {
    // Sorted: `known_resources` comes out sorted for free.
    entries: SortedMap<String>,
}

impl Default for AudienceMap {
    fn default() -> Self {
        let mut entries = SortedMap::default();
        for (r, a) in DEFAULT_AUDIENCES {
            entries.insert(r.to_string(), a.to_string());
        }
        AudienceMap { entries }
    }
}

impl AudienceMap {
    /// The defaults with `overrides` merged over them: an override wins, a new
    /// resource extends the map. Resources are normalised like scopes; an
    /// entry with an empty resource or audience is a configuration error.
    pub fn with_overrides(overrides: &[(String, String)]) -> Result<Self, CredentialError> {
        let mut map = AudienceMap::default();
        for (resource, audience) in overrides {
            let key = normalize_scope(resource.trim());
            let audience = audience.trim();
            if key.is_empty() || audience.is_empty() {
                return Err(CredentialError::Configuration(format!(
                    "audience-map entry ({resource:?}, {audience:?}) is malformed: both the resource \
                     (e.g. \"https://vault.azure.net\") and the audience (e.g. \"vault\") must be non-empty"
                )));
            }
            map.entries.insert(key.to_string(), audience.to_string());
        }
        Ok(map)
    }

    /// Every known resource, sorted.
    pub fn known_resources(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// The audience for one scope, if its resource is known.
    pub fn lookup(&self, scope: &str) -> Option<&str> {
        self.entries.get(normalize_scope(scope)).map(String::as_str)
    }

    /// The single audience `scopes` ask for.
    ///
    /// No scope is `invalid-scopes`; an unknown scope is `scope-not-allowed`;
    /// scopes for different audiences are `invalid-scopes` (one token has one
    /// audience).
    pub fn audience_for(&self, scopes: &[String]) -> Result<&str, CredentialError> {
        if scopes.is_empty() {
            return Err(CredentialError::InvalidScopes(
                "no scope was requested: pass at least one, e.g. \"https://vault.azure.net/.default\"".into(),
            ));
        }
        let mut chosen: Option<(&str, &str)> = None;
        for scope in scopes {
            let audience = self
                .lookup(scope)
                .ok_or_else(|| CredentialError::ScopeNotAllowed {
                    scope: scope.clone(),
                    known_resources: self.known_resources(),
                })?;
            match chosen {
                None => chosen = Some((scope, audience)),
                Some((first_scope, first_audience)) if first_audience != audience => {
                    return Err(CredentialError::InvalidScopes(format!(
                        "scopes {first_scope:?} (audience {first_audience:?}) and {scope:?} \
                         (audience {audience:?}) need different tokens: request one audience per call"
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(chosen
            .map(|(_, audience)| audience)
            .expect("scopes is non-empty"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn every_default_audience_with_each_spelling() {
        let map = AudienceMap::default();
        // Written out, not taken from the table under test.
        let expected = [
            ("https://database.windows.net", "sql"),
            ("https://storage.azure.com", "storage"),
            ("https://vault.azure.net", "vault"),
            ("https://api.fabric.microsoft.com", "fabric_api"),
            ("https://analysis.windows.net/powerbi/api", "fabric_cli"),
            ("https://management.azure.com", "arm"),
        ];
        assert_eq!(DEFAULT_AUDIENCES.len(), expected.len());
        for (resource, audience) in expected {
            for scope in [
                resource.to_string(),
                format!("{resource}/"),
                format!("{resource}/.default"),
                format!("{resource}//"),
            ] {
                assert_eq!(
                    map.audience_for(std::slice::from_ref(&scope)),
                    Ok(audience),
                    "{scope}"
                );
            }
        }
    }

    #[test]
    fn normalisation_rule() {
        assert_eq!(normalize_scope("a/.default/"), "a/.default");
        assert_eq!(normalize_scope("a/.default/.default"), "a/.default");
        assert_eq!(normalize_scope("/.default"), "");
        assert_eq!(normalize_scope("https://x/.DEFAULT"), "https://x/.DEFAULT");
        assert_eq!(normalize_scope(""), "");
    }

    #[test]
    fn unknown_scope_lists_sorted_resources() {
        let map = AudienceMap::default();
        let err = map
            .audience_for(&scopes(&["https://graph.microsoft.com/.default"]))
            .unwrap_err();
        let CredentialError::ScopeNotAllowed {
            scope,
            known_resources,
        } = err
        else {
            panic!("{err:?}")
        };
        assert_eq!(scope, "https://graph.microsoft.com/.default");
        let mut sorted = known_resources.clone();
        sorted.sort();
        assert_eq!(known_resources, sorted);
        assert_eq!(known_resources.len(), 6);
    }

    #[test]
    fn no_scope_and_mixed_audiences_are_invalid() {
        let map = AudienceMap::default();
        assert!(matches!(
            map.audience_for(&[]),
            Err(CredentialError::InvalidScopes(_))
        ));
        let err = map
            .audience_for(&scopes(&[
                "https://vault.azure.net/.default",
                "https://storage.azure.com",
            ]))
            .unwrap_err();
        assert!(
            matches!(err, CredentialError::InvalidScopes(ref m) if m.contains("vault") && m.contains("storage"))
        );
        // Same audience twice is fine.
        assert_eq!(
            map.audience_for(&scopes(&[
                "https://vault.azure.net/.default",
                "https://vault.azure.net"
            ])),
            Ok("vault")
        );
    }

    #[test]
    fn overrides_win_and_extend() {
        let map = AudienceMap::with_overrides(&[
            (
                "https://vault.azure.net/.default".into(),
                "key_vault_data_plane".into(),
            ),
            ("https://example.org/api/".into(), "custom".into()),
        ])
        .unwrap();
        assert_eq!(
            map.lookup("https://vault.azure.net"),
            Some("key_vault_data_plane")
        );
        assert_eq!(
            map.lookup("https://example.org/api/.default"),
            Some("custom")
        );
        assert_eq!(map.lookup("https://storage.azure.com"), Some("storage"));
        assert_eq!(map.known_resources().len(), 7);
    }

    #[test]
    fn malformed_override_is_configuration_error() {
        for (r, a) in [
            ("", "x"),
            ("https://x", ""),
            ("/.default", "x"),
            ("  ", " "),
        ] {
            let err = AudienceMap::with_overrides(&[(r.into(), a.into())]).unwrap_err();
            assert!(
                matches!(err, CredentialError::Configuration(ref m) if m.contains("audience-map")),
                "{r:?} {a:?}"
            );
        }
    }
}
