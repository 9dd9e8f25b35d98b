//! Which failures are retried, and how long to wait between attempts. Pure.
//!
//! Connect failures, timeouts, 408, 429, 500, 502, 503 and 504 are transient;
//! everything else (400, 401, 403, 404, malformed answers, a denied request)
//! is final. Waits grow exponentially with jitter, or follow the broker's
//! `Retry-After` (seconds); the caller keeps every wait inside the deadline.

use std::time::Duration;

use crate::SendError;

/// At most this many attempts per call.
pub const MAX_ATTEMPTS: u32 = 4;
/// The first backoff's upper bound; each later one doubles, up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_millis(100);
/// No backoff is longer than this (a `Retry-After` may be).
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Statuses worth another attempt.
pub const RETRYABLE_STATUSES: [u16; 6] = [408, 429, 500, 502, 503, 504];

/// The splitmix64 mixer: spreads a counter or clock reading over 64 bits.
/// For backoff jitter (and test scripts), not for anything secret.
pub fn splitmix64(seed: u64) -> u64 {
    let mut x = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Is this HTTP status transient?
pub fn is_retryable_status(status: u16) -> bool {
    RETRYABLE_STATUSES.contains(&status)
}

/// Is this transport failure transient? A denied request or an oversized
/// answer will not change on retry.
pub fn is_retryable_send(error: &SendError) -> bool {
    matches!(error, SendError::TimedOut | SendError::Failed(_))
}

/// The wait after `attempts_made` attempts: the broker's `Retry-After` when
/// given, else exponential backoff with "equal jitter" (half fixed, half
/// random, `unit` in `[0, 1)`).
///
/// ```
/// use std::time::Duration;
/// use vd_cred_broker::retry::backoff;
/// assert_eq!(backoff(1, None, 0.0), Duration::from_millis(50));
/// assert_eq!(backoff(2, None, 0.5), Duration::from_millis(150));
/// assert_eq!(backoff(3, Some(Duration::from_secs(1)), 0.5), Duration::from_secs(1));
/// ```
pub fn backoff(attempts_made: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
    if let Some(wait) = retry_after {
        return wait;
    }
    let cap = BASE_BACKOFF
        .saturating_mul(1 << attempts_made.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    cap / 2 + cap.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
}

/// An attempt never gets less than this (or all that is left, if less), so a
/// short `timeout-ms` is one attempt's whole budget, as before.
pub const MIN_ATTEMPT_BUDGET: Duration = Duration::from_secs(1);

/// How long attempt number `attempt` (from 1) may take when `left` remains of
/// the call's deadline: half of what is left (at least
/// [`MIN_ATTEMPT_BUDGET`]), so that a hung attempt is abandoned in time for
/// another; the last attempt may take all that is left.
pub fn attempt_budget(left: Duration, attempt: u32) -> Duration {
    if attempt >= MAX_ATTEMPTS {
        return left;
    }
    (left / 2).max(MIN_ATTEMPT_BUDGET).min(left)
}

/// `Retry-After` as a wait: its delay-seconds form, or an HTTP-date (the
/// IMF-fixdate form, `Sun, 06 Nov 1994 08:49:37 GMT`) measured from
/// `now_unix`; a date already past is no wait. Anything else is `None`.
pub fn parse_retry_after(value: &[u8], now_unix: u64) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(text.parse().unwrap_or(u64::MAX)));
    }
    let at = parse_imf_fixdate(text)?;
    Some(Duration::from_secs(at.saturating_sub(now_unix)))
}

/// Unix seconds of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn parse_imf_fixdate(text: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (_weekday, rest) = text.split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    let number = |s: &str, len: usize| -> Option<u64> {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    let day = number(day, 2).filter(|d| (1..=31).contains(d))?;
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let year = number(year, 4).filter(|y| *y >= 1970)?;
    let [h, m, sec] = time.split(':').collect::<Vec<_>>()[..] else {
        return None;
    };
    let (h, m, sec) = (
        number(h, 2).filter(|h| *h < 24)?,
        number(m, 2).filter(|m| *m < 60)?,
        number(sec, 2).filter(|s| *s < 61)?,
    );
    // Days from the civil date (Howard Hinnant's algorithm), March-based years.
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3_600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 409, 501, 505] {
            assert!(!is_retryable_status(s), "{s}");
        }
        assert!(is_retryable_send(&SendError::TimedOut));
        assert!(is_retryable_send(&SendError::Failed("refused".into())));
        assert!(!is_retryable_send(&SendError::Denied));
        assert!(!is_retryable_send(&SendError::TooLarge(1)));
        assert!(!is_retryable_send(&SendError::Tls("expired".into())));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let lows: Vec<_> = (1..=7).map(|n| backoff(n, None, 0.0)).collect();
        assert_eq!(lows[0], Duration::from_millis(50));
        assert_eq!(lows[1], Duration::from_millis(100));
        assert_eq!(lows[6], MAX_BACKOFF / 2);
        assert!(backoff(40, None, 1.0) <= MAX_BACKOFF);
        assert!(backoff(1, None, 0.5) > backoff(1, None, 0.1));
    }

    #[test]
    fn attempt_budgets() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // Default 10 s: halves, so a hung first attempt leaves 5 s for more.
        assert_eq!(attempt_budget(s(10), 1), s(5));
        assert_eq!(attempt_budget(s(4), 2), s(2));
        // Never under a second, never over what is left.
        assert_eq!(attempt_budget(ms(1_500), 2), s(1));
        assert_eq!(attempt_budget(ms(250), 1), ms(250));
        // The last attempt takes all that is left.
        assert_eq!(attempt_budget(s(8), MAX_ATTEMPTS), s(8));
    }

    #[test]
    fn retry_after_forms() {
        let now = 1_445_412_470; // Wed, 21 Oct 2015 07:27:50 GMT
        assert_eq!(parse_retry_after(b"3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(b" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after(b"Sun, 06 Nov 1994 08:49:37 GMT", 784_111_777 - 2),
            Some(Duration::from_secs(2)),
            "RFC 9110's example date is 784111777"
        );
        assert_eq!(
            parse_retry_after(b"Thu, 29 Feb 2024 00:00:00 GMT", 1_709_164_800 - 1),
            Some(Duration::from_secs(1)),
            "a leap day"
        );
        assert_eq!(
            parse_retry_after(b"Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO),
            "a date already past: no wait"
        );
        for bad in [
            &b"Wednesday, 21-Oct-15 07:28:00 GMT"[..],
            b"Wed Oct 21 07:28:00 2015",
            b"Wed, 21 Oct 2015 07:28:00 UTC",
            b"Wed, 32 Oct 2015 07:28:00 GMT",
            b"Wed, 21 Foo 2015 07:28:00 GMT",
            b"Wed, 21 Oct 2015 24:28:00 GMT",
            b"-1",
            b"",
            b"\xff",
        ] {
            assert_eq!(
                parse_retry_after(bad, now),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
