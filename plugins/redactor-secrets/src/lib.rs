//! Built-in redactor: passwords in connection URLs, `key=value` secrets
//! (password, secret, token, api_key, access_key, private_key, credential ...
//! with `=` or `:`, quoted or not), bearer tokens and firedrill tokens, cloud
//! access keys (AWS, Google), GitHub tokens, age secret keys, and e-mail
//! addresses (masked, hashed or kept). Config: `mask` (default `***`),
//! `emails` = `mask` | `hash` | `keep` (default `mask`).
//!
//! Hand-written scanners rather than a regex engine: no pattern compilation
//! on each (fresh) instance, and one cheap `find` per detector per line.

use firedrill_plugin_sdk::redactor::{export, Config, Guest};

/// What to do with e-mail addresses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Emails {
    Mask,
    Hash,
    Keep,
}

pub struct Settings {
    pub mask: String,
    pub emails: Emails,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mask: "***".into(),
            emails: Emails::Mask,
        }
    }
}

struct Secrets;

impl Guest for Secrets {
    fn redact(lines: Vec<String>) -> Vec<String> {
        let s = Settings {
            mask: Config::get("mask").unwrap_or_else(|| "***".to_string()),
            emails: match Config::get("emails").as_deref() {
                Some("hash") => Emails::Hash,
                Some("keep") => Emails::Keep,
                _ => Emails::Mask,
            },
        };
        lines.into_iter().map(|l| redact_line(&l, &s)).collect()
    }
}

export!(Secrets);

/// Every detector, in turn.
pub fn redact_line(line: &str, s: &Settings) -> String {
    let mut out = url_passwords(line, &s.mask);
    out = key_values(&out, &s.mask);
    out = after_word(&out, "bearer ", &s.mask);
    for (prefix, len, alphabet) in TOKENS {
        out = fixed_tokens(&out, prefix, *len, *alphabet, &s.mask);
    }
    out = dotted_tokens(&out, "fdt1.", &s.mask);
    if s.emails != Emails::Keep {
        out = emails(&out, s);
    }
    out
}

/// Well-known credential shapes: prefix, characters after it, and their alphabet.
const TOKENS: &[(&str, usize, fn(u8) -> bool)] = &[
    ("AKIA", 16, upper_digit),
    ("ASIA", 16, upper_digit),
    ("AIza", 35, token_char),
    ("ghp_", 36, alnum),
    ("gho_", 36, alnum),
    ("ghs_", 36, alnum),
    ("github_pat_", 82, token_char),
    ("AGE-SECRET-KEY-1", 58, upper_digit),
    ("xoxb-", 20, token_char),
];

fn upper_digit(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}
fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}
fn token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}
fn key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'
}

/// Replaces the text between `user:` and `@` in the authority of each URL.
pub fn url_passwords(line: &str, mask: &str) -> String {
    if !line.contains("://") {
        return line.to_string();
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#', quote or whitespace.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..=colon]);
                out.push_str(mask);
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Names whose values are secrets (the key must end with one, any case).
const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "access_key",
    "access-key",
    "accesskey",
    "private_key",
    "private-key",
    "credential",
    "credentials",
    "authorization",
    "auth",
];

/// `key=value`, `key: value`, `"key": "value"`: the value is masked when the
/// key names a secret. A value ends at whitespace, a quote, `,` `;` `&` `}` `)`.
pub fn key_values(line: &str, mask: &str) -> String {
    let b = line.as_bytes();
    if !b.iter().any(|&c| c == b'=' || c == b':') {
        return line.to_string();
    }
    let mut out = String::with_capacity(line.len());
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c != b'=' && c != b':' {
            i += 1;
            continue;
        }
        // `://` is a URL, not a key.
        if c == b':' && b[i + 1..].starts_with(b"//") {
            i += 3;
            continue;
        }
        // The key: key characters just before, after an optional closing quote.
        let mut k_end = i;
        while k_end > 0 && b[k_end - 1] == b' ' {
            k_end -= 1;
        }
        if k_end > 0 && b[k_end - 1] == b'"' {
            k_end -= 1;
        }
        let mut k_start = k_end;
        while k_start > 0 && key_char(b[k_start - 1]) {
            k_start -= 1;
        }
        let key = line[k_start..k_end].to_ascii_lowercase();
        if key.is_empty() || !SECRET_KEYS.iter().any(|s| key.ends_with(s)) {
            i += 1;
            continue;
        }
        // The value: after spaces and an optional opening quote.
        let mut v = i + 1;
        while v < b.len() && b[v] == b' ' {
            v += 1;
        }
        let quoted = v < b.len() && (b[v] == b'"' || b[v] == b'\'');
        if quoted {
            v += 1;
        }
        let mut v_end = v;
        while v_end < b.len() {
            let d = b[v_end];
            let stop = if quoted {
                d == b'"' || d == b'\''
            } else {
                d.is_ascii_whitespace()
                    || matches!(d, b'"' | b'\'' | b',' | b';' | b'&' | b'}' | b')')
            };
            if stop {
                break;
            }
            // An escaped quote inside a JSON string value.
            if quoted && d == b'\\' && v_end + 1 < b.len() {
                v_end += 1;
            }
            v_end += 1;
        }
        // A word "auth" followed by a scheme (`Authorization: Bearer x`) is
        // left to the bearer detector; an already-masked value stays as is.
        let value = &line[v..v_end];
        if !value.is_empty() && value != mask && !value.eq_ignore_ascii_case("bearer") {
            out.push_str(&line[copied..v]);
            out.push_str(mask);
            copied = v_end;
        }
        i = v_end.max(i + 1);
    }
    out.push_str(&line[copied..]);
    out
}

/// Masks the token after `word` (case-insensitive), e.g. `Bearer abc.def`.
pub fn after_word(line: &str, word: &str, mask: &str) -> String {
    let lower = line.to_ascii_lowercase();
    if !lower.contains(word) {
        return line.to_string();
    }
    let b = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(pos) = lower[from..].find(word) {
        let start = from + pos + word.len();
        let mut end = start;
        while end < b.len()
            && (token_char(b[end]) || matches!(b[end], b'.' | b'~' | b'+' | b'/' | b'='))
        {
            end += 1;
        }
        if end > start && &line[start..end] != mask {
            out.push_str(&line[copied..start]);
            out.push_str(mask);
            copied = end;
        }
        from = end.max(start);
    }
    out.push_str(&line[copied..]);
    out
}

/// `prefix` followed by exactly `len` characters of `alphabet`, not inside a longer word.
pub fn fixed_tokens(
    line: &str,
    prefix: &str,
    len: usize,
    alphabet: fn(u8) -> bool,
    mask: &str,
) -> String {
    if !line.contains(prefix) {
        return line.to_string();
    }
    let b = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(pos) = line[from..].find(prefix) {
        let start = from + pos;
        let body = start + prefix.len();
        let mut end = body;
        while end < b.len() && alphabet(b[end]) {
            end += 1;
        }
        let bounded = start == 0 || !token_char(b[start - 1]);
        if bounded && end - body >= len {
            out.push_str(&line[copied..start]);
            out.push_str(mask);
            copied = end;
        }
        from = end.max(body);
    }
    out.push_str(&line[copied..]);
    out
}

/// `prefix` then dot-separated base64url parts (firedrill API tokens).
pub fn dotted_tokens(line: &str, prefix: &str, mask: &str) -> String {
    if !line.contains(prefix) {
        return line.to_string();
    }
    let b = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(pos) = line[from..].find(prefix) {
        let start = from + pos;
        let mut end = start + prefix.len();
        while end < b.len() && (token_char(b[end]) || b[end] == b'.') {
            end += 1;
        }
        out.push_str(&line[copied..start]);
        out.push_str(mask);
        copied = end;
        from = end;
    }
    out.push_str(&line[copied..]);
    out
}

fn local_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}
fn domain_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'-'
}

/// `local@domain.tld`: masked to `***@domain.tld`, or hashed whole.
pub fn emails(line: &str, s: &Settings) -> String {
    if !line.contains('@') {
        return line.to_string();
    }
    let b = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'@' {
            i += 1;
            continue;
        }
        let mut l = i;
        while l > copied && local_char(b[l - 1]) {
            l -= 1;
        }
        let mut r = i + 1;
        while r < b.len() && domain_char(b[r]) {
            r += 1;
        }
        let domain = line[i + 1..r].trim_end_matches(['.', '-']);
        let r = i + 1 + domain.len();
        let tld_ok = domain.rsplit_once('.').is_some_and(|(host, tld)| {
            !host.is_empty() && tld.len() >= 2 && tld.bytes().all(|c| c.is_ascii_alphabetic())
        });
        if l == i || !tld_ok {
            i += 1;
            continue;
        }
        out.push_str(&line[copied..l]);
        match s.emails {
            Emails::Hash => {
                use sha2::Digest;
                let d = sha2::Sha256::digest(line[l..r].to_ascii_lowercase().as_bytes());
                out.push_str("email:");
                for byte in &d[..6] {
                    out.push_str(&format!("{byte:02x}"));
                }
            }
            _ => {
                out.push_str(&s.mask);
                out.push('@');
                out.push_str(domain);
            }
        }
        copied = r;
        i = r;
    }
    out.push_str(&line[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(line: &str) -> String {
        redact_line(line, &Settings::default())
    }

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            r("connect postgres://app:s3cret@db:5432/x failed"),
            "connect postgres://app:***@db:5432/x failed"
        );
        assert_eq!(
            r("redis://:pw@h/0 and http://h/a:b@c"),
            "redis://:***@h/0 and http://h/a:b@c"
        );
        assert_eq!(r("no url here"), "no url here");
    }

    #[test]
    fn key_value_secrets_in_every_spelling() {
        assert_eq!(r("password=hunter2 user=bob"), "password=*** user=bob");
        assert_eq!(r("PGPASSWORD=x1 next"), "PGPASSWORD=*** next");
        assert_eq!(
            r(r#"{"client_secret": "a\"b", "n": 1}"#),
            r#"{"client_secret": "***", "n": 1}"#
        );
        assert_eq!(
            r("s3_secret_access_key = 'abc/def+ghi'"),
            "s3_secret_access_key = '***'"
        );
        assert_eq!(r("api-key: zzz; other"), "api-key: ***; other");
        assert_eq!(r("?token=abc&x=1"), "?token=***&x=1");
        assert_eq!(r("time=12:30 rows=5"), "time=12:30 rows=5");
    }

    #[test]
    fn bearer_and_api_tokens() {
        assert_eq!(
            r("Authorization: Bearer abc.def-ghi"),
            "Authorization: Bearer ***"
        );
        assert_eq!(r("got fdt1.eyJzdWIi.c2ln ok"), "got *** ok");
        assert_eq!(r("key AKIAIOSFODNN7EXAMPLE used"), "key *** used");
        assert_eq!(r("xAKIAIOSFODNN7EXAMPLE"), "xAKIAIOSFODNN7EXAMPLE");
        assert_eq!(r("AIzaSyA-1234567890abcdefghijklmnopqrstu"), "***");
        assert_eq!(
            r("AGE-SECRET-KEY-1QQPQ7ZH0RWWMJN3ZVEMYAPAXQ3JYGMF0TP2CFPNRZ93T8ZDDKRPQ6EZQ4V"),
            "***"
        );
        assert_eq!(r("ghp_abcdefghijklmnopqrstuvwxyz0123456789"), "***");
    }

    #[test]
    fn emails_masked_hashed_or_kept() {
        assert_eq!(r("mail ann.lee+x@example.com."), "mail ***@example.com.");
        let hashed = redact_line(
            "from Ann@Example.com to ann@example.com",
            &Settings {
                emails: Emails::Hash,
                ..Default::default()
            },
        );
        let parts: Vec<&str> = hashed.split_whitespace().collect();
        assert!(
            parts[1].starts_with("email:") && parts[1] == parts[3],
            "{hashed}"
        );
        let kept = redact_line(
            "a@b.io",
            &Settings {
                emails: Emails::Keep,
                ..Default::default()
            },
        );
        assert_eq!(kept, "a@b.io");
        assert_eq!(r("user@localhost and x@1.2"), "user@localhost and x@1.2");
    }
}
