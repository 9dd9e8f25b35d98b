//! The token cache and its policy: per audience, bound to the bearer that
//! minted each token, refreshed ahead of expiry. Pure: the caller passes `now`.

use sha2::{Digest, Sha256};

use crate::Secret;
use crate::sorted_map::SortedMap;

/// Tokens are not served in their last five minutes (azure-core's margin).
pub const EXPIRY_MARGIN_SECS: u64 = 300;
/// After a failed refresh, the cached token is served without another
/// attempt for this long.
pub const REFRESH_BACKOFF_SECS: u64 = 30;
/// Tokens living at least this long get `refresh-on` at half their lifetime
/// when the broker sends no `refresh_in` (azure-identity's rule).
pub const HALF_LIFE_THRESHOLD_SECS: u64 = 7200;

/// A SHA-256 digest of a bearer: the cache remembers which bearer minted a
/// token without keeping the bearer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BearerDigest([u8; 32]);

impl BearerDigest {
    /// The key for tokens from the runtime-access helper, which holds the
    /// bearer itself.
    pub const HELPER: BearerDigest = BearerDigest([0; 32]);

    /// Digest `bearer`.
    pub fn of(bearer: &Secret) -> Self {
        BearerDigest(Sha256::digest(bearer.expose().as_bytes()).into())
    }
}

impl std::fmt::Debug for BearerDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerDigest(..)")
    }
}

/// A token with its lifetime, as cached and as returned by `get-token-info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The token; a secret.
    pub token: Secret,
    /// Expiry, Unix seconds.
    pub expires_on: u64,
    /// When a refresh is due, Unix seconds, if known.
    pub refresh_on: Option<u64>,
}

impl TokenInfo {
    /// A token minted at `now` living `expires_in` seconds, with the broker's
    /// `refresh_in` if it sent one.
    pub fn minted(token: Secret, now: u64, expires_in: u64, refresh_in: Option<u64>) -> Self {
        let refresh_on = match refresh_in {
            Some(r) => Some(now.saturating_add(r)),
            None if expires_in >= HALF_LIFE_THRESHOLD_SECS => {
                Some(now.saturating_add(expires_in / 2))
            }
            None => None,
        };
        TokenInfo {
            token,
            expires_on: now.saturating_add(expires_in),
            refresh_on,
        }
    }

    /// Still good to hand out without asking the broker.
    fn is_fresh(&self, now: u64) -> bool {
        now < self.expires_on.saturating_sub(EXPIRY_MARGIN_SECS)
            && self.refresh_on.is_none_or(|r| now < r)
    }

    /// Not yet expired (usable as a fallback when a refresh fails).
    pub fn is_unexpired(&self, now: u64) -> bool {
        now < self.expires_on
    }
}

#[derive(Debug, Clone)]
struct Entry {
    bearer: BearerDigest,
    info: TokenInfo,
    /// No refresh attempt before this (after a failed one).
    next_attempt: u64,
}

/// What to do for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Serve this token; don't contact the broker.
    Fresh(TokenInfo),
    /// Mint; if that fails transiently, this token may still be served.
    Refresh(TokenInfo),
    /// Mint; nothing to fall back on.
    Miss,
}

/// Cached tokens by audience.
#[derive(Debug, Default, Clone)]
pub struct TokenCache {
    entries: SortedMap<Entry>,
}

impl TokenCache {
    /// What the cache holds for `audience` minted with `bearer`, at `now`.
    pub fn lookup(&self, audience: &str, bearer: BearerDigest, now: u64) -> Lookup {
        match self.entries.get(audience) {
            Some(e) if e.bearer != bearer || !e.info.is_unexpired(now) => Lookup::Miss,
            Some(e) if e.info.is_fresh(now) || now < e.next_attempt => {
                Lookup::Fresh(e.info.clone())
            }
            Some(e) => Lookup::Refresh(e.info.clone()),
            None => Lookup::Miss,
        }
    }

    /// Remember a freshly minted token.
    pub fn store(&mut self, audience: &str, bearer: BearerDigest, info: TokenInfo) {
        self.entries.insert(
            audience.to_string(),
            Entry {
                bearer,
                info,
                next_attempt: 0,
            },
        );
    }

    /// A refresh failed at `now`: keep serving the cached token, and don't try
    /// again for [`REFRESH_BACKOFF_SECS`].
    pub fn refresh_failed(&mut self, audience: &str, now: u64) {
        if let Some(e) = self.entries.get_mut(audience) {
            e.next_attempt = now.saturating_add(REFRESH_BACKOFF_SECS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::new(s.into())
    }

    fn cache_with(expires_in: u64, refresh_in: Option<u64>) -> (TokenCache, BearerDigest) {
        let d = BearerDigest::of(&secret("vd_iat_a"));
        let mut c = TokenCache::default();
        c.store(
            "vault",
            d,
            TokenInfo::minted(secret("t"), 1000, expires_in, refresh_in),
        );
        (c, d)
    }

    #[test]
    fn refresh_on_rules() {
        assert_eq!(
            TokenInfo::minted(secret("t"), 10, 3600, None).refresh_on,
            None
        );
        assert_eq!(
            TokenInfo::minted(secret("t"), 10, 7200, None).refresh_on,
            Some(3610)
        );
        assert_eq!(
            TokenInfo::minted(secret("t"), 10, 3600, Some(600)).refresh_on,
            Some(610)
        );
        assert_eq!(
            TokenInfo::minted(secret("t"), 10, 3600, None).expires_on,
            3610
        );
    }

    #[test]
    fn the_300_second_margin() {
        let (c, d) = cache_with(3600, None);
        assert!(matches!(
            c.lookup("vault", d, 1000 + 3600 - 301),
            Lookup::Fresh(_)
        ));
        assert!(matches!(
            c.lookup("vault", d, 1000 + 3600 - 300),
            Lookup::Refresh(_)
        ));
        assert!(matches!(
            c.lookup("vault", d, 1000 + 3600 - 1),
            Lookup::Refresh(_)
        ));
        assert_eq!(c.lookup("vault", d, 1000 + 3600), Lookup::Miss);
    }

    #[test]
    fn refresh_on_boundary() {
        let (c, d) = cache_with(7200, None);
        assert!(matches!(
            c.lookup("vault", d, 1000 + 3599),
            Lookup::Fresh(_)
        ));
        assert!(matches!(
            c.lookup("vault", d, 1000 + 3600),
            Lookup::Refresh(_)
        ));
    }

    #[test]
    fn other_bearer_or_audience_misses() {
        let (c, _) = cache_with(3600, None);
        assert_eq!(
            c.lookup("vault", BearerDigest::of(&secret("vd_iat_b")), 1000),
            Lookup::Miss
        );
        assert_eq!(
            c.lookup("storage", BearerDigest::of(&secret("vd_iat_a")), 1000),
            Lookup::Miss
        );
    }

    #[test]
    fn failed_refresh_backs_off_30_seconds() {
        let (mut c, d) = cache_with(3600, Some(600));
        assert!(matches!(c.lookup("vault", d, 1600), Lookup::Refresh(_)));
        c.refresh_failed("vault", 1600);
        assert!(matches!(c.lookup("vault", d, 1629), Lookup::Fresh(_)));
        assert!(matches!(c.lookup("vault", d, 1630), Lookup::Refresh(_)));
    }

    #[test]
    fn digest_does_not_show_the_bearer() {
        let d = BearerDigest::of(&secret("vd_iat_a"));
        assert_eq!(format!("{d:?}"), "BearerDigest(..)");
        assert_eq!(d, BearerDigest::of(&secret("vd_iat_a")));
    }
}
