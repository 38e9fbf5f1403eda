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
        lines.into_iter().map(|l| redact_owned(l, &s)).collect()
    }
}

export!(Secrets);

/// Every detector, in turn.
/// Which detectors can fire on a line, from one pass over its bytes: most
/// lines need one or two of them, and each detector scans again.
#[derive(Default)]
struct Triggers {
    url: bool,
    key_value: bool,
    bearer: bool,
    token: bool,
    email: bool,
}

fn triggers(b: &[u8]) -> Triggers {
    let mut t = Triggers::default();
    let next = |i: usize| b.get(i + 1).copied().unwrap_or(0);
    for (i, &c) in b.iter().enumerate() {
        match c {
            b':' => {
                t.key_value = true;
                t.url |= next(i) == b'/' && b.get(i + 2) == Some(&b'/');
            }
            b'=' => t.key_value = true,
            b'@' => t.email = true,
            b'b' | b'B' => t.bearer |= next(i) | 0x20 == b'e',
            b'A' => t.token |= matches!(next(i), b'K' | b'S' | b'I' | b'G'),
            b'g' => t.token |= matches!(next(i), b'h' | b'i'),
            b'x' => t.token |= next(i) == b'o',
            b'f' => t.token |= next(i) == b'd',
            _ => {}
        }
    }
    t
}

/// Each detector returns `None` when it changed nothing, so a clean line
/// (most of them) is scanned but never copied.
pub fn redact_line(line: &str, s: &Settings) -> String {
    redact_owned(line.to_string(), s)
}

/// As [`redact_line`], handing a clean line back as it came.
fn redact_owned(line: String, s: &Settings) -> String {
    let t = triggers(line.as_bytes());
    let mut out: Option<String> = None;
    let mut apply = |on: bool, f: &dyn Fn(&str) -> Option<String>| {
        if on {
            if let Some(changed) = f(out.as_deref().unwrap_or(&line)) {
                out = Some(changed);
            }
        }
    };
    apply(t.url, &|l| url_passwords(l, &s.mask));
    apply(t.key_value, &|l| key_values(l, &s.mask));
    apply(t.bearer, &|l| after_word(l, "bearer ", &s.mask));
    apply(t.token, &|l| tokens(l, &s.mask));
    apply(t.email && s.emails != Emails::Keep, &|l| emails(l, s));
    out.unwrap_or(line)
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
pub fn url_passwords(line: &str, mask: &str) -> Option<String> {
    if !line.contains("://") {
        return None;
    }
    let mut changed = false;
    let mut out = String::new(); // allocated on the first change only
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
            (Some(at), Some(colon)) if colon < at && &authority[colon + 1..at] != mask => {
                out.push_str(&authority[..=colon]);
                out.push_str(mask);
                out.push_str(&authority[at..]);
                changed = true;
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    changed.then_some(out)
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
pub fn key_values(line: &str, mask: &str) -> Option<String> {
    let b = line.as_bytes();
    let mut out = String::new(); // allocated on the first change only
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
        let key = &b[k_start..k_end];
        // Most keys (timestamps, paths) end in a letter no secret name ends in.
        if !matches!(
            key.last().map(u8::to_ascii_lowercase),
            Some(b'd' | b't' | b'n' | b'y' | b'l' | b's' | b'h')
        ) {
            i += 1;
            continue;
        }
        let named = |s: &&str| {
            key.len() >= s.len() && key[key.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
        };
        if key.is_empty() || !SECRET_KEYS.iter().any(named) {
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
    if copied == 0 {
        return None;
    }
    out.push_str(&line[copied..]);
    Some(out)
}

/// For each place `find` reports (searching from an offset), masks the
/// byte range `span` picks there (or nothing, when it returns `None`).
fn mask_each(
    line: &str,
    find: impl Fn(usize) -> Option<usize>,
    span: impl Fn(usize) -> Option<(usize, usize)>,
    mask: &str,
) -> Option<String> {
    let mut out = String::new(); // allocated on the first change only
    let (mut copied, mut from) = (0, 0);
    while let Some(at) = find(from) {
        match span(at) {
            Some((start, end)) if start >= copied && &line[start..end] != mask => {
                out.push_str(&line[copied..start]);
                out.push_str(mask);
                copied = end;
                from = end.max(at + 1);
            }
            _ => from = at + 1,
        }
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&line[copied..]);
    Some(out)
}

/// How far a run of bytes matching `ok` goes from `i`.
fn run_end(b: &[u8], mut i: usize, ok: impl Fn(u8) -> bool) -> usize {
    while i < b.len() && ok(b[i]) {
        i += 1;
    }
    i
}

/// Every well-known token shape ([`TOKENS`], and firedrill's `fdt1.`
/// tokens) in one pass: only bytes that can start a prefix are looked at.
pub fn tokens(line: &str, mask: &str) -> Option<String> {
    let b = line.as_bytes();
    let starts = |i: usize| matches!(b[i], b'A' | b'g' | b'x' | b'f');
    let find = |from: usize| (from..b.len()).find(|&i| starts(i));
    let span = |at: usize| {
        let rest = &b[at..];
        if rest.starts_with(b"fdt1.") {
            return Some((at, run_end(b, at + 5, |c| token_char(c) || c == b'.')));
        }
        let bounded = at == 0 || !token_char(b[at - 1]);
        TOKENS.iter().find_map(|(prefix, len, alphabet)| {
            let body = at + prefix.len();
            if !bounded || !rest.starts_with(prefix.as_bytes()) {
                return None;
            }
            let end = run_end(b, body, *alphabet);
            (end - body >= *len).then_some((at, end))
        })
    };
    mask_each(line, find, span, mask)
}

/// Masks the token after `word` (case-insensitive), e.g. `Bearer abc.def`.
pub fn after_word(line: &str, word: &str, mask: &str) -> Option<String> {
    let b = line.as_bytes();
    let w = word.as_bytes();
    // Case-insensitive, without lowering a copy of every line.
    let first = w[0].to_ascii_lowercase();
    let find = |from: usize| {
        (from..b.len().saturating_sub(w.len() - 1))
            .find(|&i| b[i] | 0x20 == first && b[i..i + w.len()].eq_ignore_ascii_case(w))
    };
    find(0)?;
    let bearer_char = |c: u8| token_char(c) || matches!(c, b'.' | b'~' | b'+' | b'/' | b'=');
    mask_each(
        line,
        find,
        |at| {
            let start = at + word.len();
            let end = run_end(b, start, bearer_char);
            (end > start).then_some((start, end))
        },
        mask,
    )
}

fn local_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}
fn domain_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'-'
}

/// `local@domain.tld`: masked to `***@domain.tld`, or hashed whole.
pub fn emails(line: &str, s: &Settings) -> Option<String> {
    if !line.contains('@') {
        return None;
    }
    let b = line.as_bytes();
    let mut out = String::new(); // allocated on the first change only
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
    if copied == 0 {
        return None;
    }
    out.push_str(&line[copied..]);
    Some(out)
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
