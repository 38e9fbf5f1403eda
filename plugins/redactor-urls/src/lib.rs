//! Built-in redactor: masks the password of every `scheme://user:password@host`
//! in a line. Config: `mask` (default `***`).

use firedrill_plugin_sdk::redactor::{export, Config, Guest};

struct UrlPasswords;

impl Guest for UrlPasswords {
    fn redact(lines: Vec<String>) -> Vec<String> {
        let mask = Config::get("mask").unwrap_or_else(|| "***".to_string());
        lines
            .into_iter()
            .map(|l| mask_url_passwords(&l, &mask))
            .collect()
    }
}

/// Replaces the text between `user:` and `@` in the authority of each URL.
fn mask_url_passwords(line: &str, mask: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or whitespace.
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
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

export!(UrlPasswords);

#[cfg(test)]
mod tests {
    use super::mask_url_passwords;

    #[test]
    fn masks_only_the_password() {
        assert_eq!(
            mask_url_passwords("connect postgres://app:s3cret@db:5432/x failed", "***"),
            "connect postgres://app:***@db:5432/x failed"
        );
        assert_eq!(
            mask_url_passwords("redis://:pw@h/0 and http://h/a:b@c", "#"),
            "redis://:#@h/0 and http://h/a:b@c"
        );
        assert_eq!(mask_url_passwords("no url here", "***"), "no url here");
    }
}
