//! A string that must never be shown: the intent bearer and minted tokens.

use std::fmt;

/// A secret string whose `Debug` and `Display` print `[redacted]`.
///
/// The only way to see the value is [`Secret::expose`], so every place that
/// puts a secret on the wire or hands it to the caller is easy to find.
///
/// ```
/// use vd_cred_broker::Secret;
/// let s = Secret::new("vd_iat_abc".to_string());
/// assert_eq!(format!("{s} {s:?}"), "[redacted] Secret([redacted])");
/// assert_eq!(s.expose(), "vd_iat_abc");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The secret value itself. Call only where the value must leave: the
    /// `Authorization` header, or the token handed back to the caller.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Take the value out.
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("vd_iat_supersecret".into());
        assert!(!format!("{s}").contains("supersecret"));
        assert!(!format!("{s:?}").contains("supersecret"));
        assert!(!format!("{:#?}", Some(&s)).contains("supersecret"));
        assert_eq!(s.expose(), "vd_iat_supersecret");
    }
}
