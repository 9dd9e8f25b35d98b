//! Short, scrubbed excerpts of broker error bodies.
//!
//! A broker's error body is quoted to help the user, but it might echo a
//! secret. The excerpt drops token-like JSON members, anything that looks like
//! a bearer or JWT, and the literal secrets the caller knows, then removes
//! control characters and cuts it short.

use serde_json::Value;

/// At most this many characters of a body are quoted, the `...` that marks a
/// cut included.
pub const EXCERPT_CHARS: usize = 200;

const REDACTED: &str = "[redacted]";

/// JSON member names (lower-cased, substring match) whose values are never quoted.
const SECRET_KEYS: [&str; 9] = [
    "token",
    "secret",
    "password",
    "bearer",
    "assertion",
    "authorization",
    "credential",
    "key",
    "cookie",
];

/// Prefixes of values that look like a bearer or a JWT; the rest of the word goes too.
const SECRET_PREFIXES: [&str; 3] = ["vd_iat_", "eyJ", "Bearer "];

/// A scrubbed, bounded, single-line excerpt of `body`; `secrets` are removed
/// wherever they appear.
///
/// ```
/// use vd_cred_broker::excerpt;
/// let body = br#"{"error":"expired","access_token":"eyJabc.def"}"#;
/// assert_eq!(excerpt(body, &[]), r#"{"access_token":"[redacted]","error":"expired"}"#);
/// ```
pub fn excerpt(body: &[u8], secrets: &[&str]) -> String {
    let mut removed = Vec::new();
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(mut json) => {
            scrub_json(&mut json, &mut removed);
            json.to_string()
        }
        // Not JSON (or broken JSON): find `key: value` / `key=value` by hand.
        Err(_) => scrub_key_values(&String::from_utf8_lossy(body), &mut removed),
    };
    // A token-like member's value is a secret wherever else it appears.
    let mut text = removed
        .iter()
        .fold(text, |text, value| text.replace(value.as_str(), REDACTED));
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, REDACTED);
    }
    let text = scrub_prefixed_words(&text);
    let mut out = String::new();
    let mut last_space = true;
    for c in text.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        out.push(c);
    }
    let out = out.trim_end();
    match out.char_indices().nth(EXCERPT_CHARS) {
        // Longer than the bound: cut to leave room for the marker.
        Some(_) => {
            let (cut, _) = out.char_indices().nth(EXCERPT_CHARS - 3).expect("longer");
            format!("{}...", &out[..cut])
        }
        None => out.to_string(),
    }
}

/// Replace the values of token-like members, collecting the replaced strings
/// (at least 4 characters long, so short values do not mangle the rest).
fn scrub_json(value: &mut Value, removed: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, member) in map.iter_mut() {
                let key = key.to_ascii_lowercase();
                if SECRET_KEYS.iter().any(|k| key.contains(k)) {
                    if let Value::String(s) = member
                        && s.chars().count() >= 4
                    {
                        removed.push(std::mem::take(s));
                    }
                    *member = Value::String(REDACTED.into());
                } else {
                    scrub_json(member, removed);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| scrub_json(item, removed)),
        _ => {}
    }
}

/// In free text, replace the value after every token-like key followed by
/// `:` or `=` (quotes and spaces allowed around it), collecting the values.
fn scrub_key_values(text: &str, removed: &mut Vec<String>) -> String {
    let lower = text.to_ascii_lowercase(); // same byte offsets as `text`
    let bytes = text.as_bytes();
    let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    let is_value = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut at = 0;
    while at < bytes.len() {
        let Some((start, key)) = SECRET_KEYS
            .iter()
            .filter_map(|k| lower[at..].find(k).map(|i| (at + i, *k)))
            .min()
        else {
            break;
        };
        let mut i = start + key.len();
        while i < bytes.len() && is_name(bytes[i]) {
            i += 1;
        }
        let skip = |mut i: usize, set: &[u8]| {
            while i < bytes.len() && set.contains(&bytes[i]) {
                i += 1;
            }
            i
        };
        let sep = skip(i, b"\"' \t");
        if sep < bytes.len() && (bytes[sep] == b':' || bytes[sep] == b'=') {
            let value_start = skip(sep + 1, b"\"' \t");
            let mut value_end = value_start;
            while value_end < bytes.len() && is_value(bytes[value_end]) {
                value_end += 1;
            }
            if value_end > value_start {
                out.push_str(&text[copied..value_start]);
                out.push_str(REDACTED);
                if value_end - value_start >= 4 {
                    removed.push(text[value_start..value_end].to_string());
                }
                copied = value_end;
                at = value_end;
                continue;
            }
        }
        at = i.max(start + 1);
    }
    out.push_str(&text[copied..]);
    out
}

/// Replace every word that starts with a secret-looking prefix.
fn scrub_prefixed_words(text: &str) -> String {
    let is_token_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '+' | '/' | '=');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((at, prefix)) = SECRET_PREFIXES
        .iter()
        .filter_map(|p| rest.find(p).map(|i| (i, *p)))
        .min_by_key(|(i, _)| *i)
    {
        out.push_str(&rest[..at]);
        let after = &rest[at + prefix.len()..];
        let word_len = after.find(|c| !is_token_char(c)).unwrap_or(after.len());
        if prefix == "Bearer " {
            out.push_str(prefix);
        }
        out.push_str(REDACTED);
        rest = &after[word_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_members_are_scrubbed_recursively() {
        let body = br#"{"detail":{"refresh_token":"x","Api-Key":"k","n":[{"id_token":"t"}]},"message":"no"}"#;
        let e = excerpt(body, &[]);
        assert!(
            !e.contains("\"x\"") && !e.contains("\"k\"") && !e.contains("\"t\""),
            "{e}"
        );
        assert!(e.contains("\"message\":\"no\""), "{e}");
        let e = excerpt(
            br#"{"access_token":"tok-123","note":"issued tok-123"}"#,
            &[],
        );
        assert!(!e.contains("tok-123"), "{e}");
        let e = excerpt(
            b"oops: access_token=abc.123-x; echo abc.123-x {\"client_secret\" : \"s3cr3t\"",
            &[],
        );
        assert!(!e.contains("abc.123-x") && !e.contains("s3cr3t"), "{e}");
        assert!(e.starts_with("oops: access_token=[redacted]"), "{e}");
    }

    #[test]
    fn secret_looking_words_and_literals_go() {
        let e = excerpt(
            b"bad bearer vd_iat_abc123 and eyJhbGc.eyJzdWIi.sig, Bearer zzz",
            &["zzz"],
        );
        assert!(
            !e.contains("abc123") && !e.contains("hbGc") && !e.contains("zzz"),
            "{e}"
        );
        assert!(
            e.starts_with("bad bearer [redacted] and [redacted], Bearer [redacted]"),
            "{e}"
        );
        let e = excerpt(b"echo: my-literal-secret!", &["my-literal-secret"]);
        assert_eq!(e, "echo: [redacted]!");
    }

    #[test]
    fn bounded_single_line_valid_utf8() {
        let mut body = b"line1\r\nline2\x00\x1b[31m ".to_vec();
        body.extend(std::iter::repeat_n(b'\xe2', 3));
        body.extend("é".repeat(500).as_bytes());
        let e = excerpt(&body, &[]);
        assert!(!e.chars().any(char::is_control), "{e:?}");
        assert!(e.starts_with("line1 line2"), "{e}");
        assert_eq!(e.chars().count(), EXCERPT_CHARS);
        assert!(e.ends_with("..."));
        let exactly = "x".repeat(EXCERPT_CHARS);
        assert_eq!(
            excerpt(exactly.as_bytes(), &[]),
            exactly,
            "not cut at the bound"
        );
        assert_eq!(excerpt(b"", &[]), "");
    }
}
