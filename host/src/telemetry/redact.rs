//! Redaction of everything that leaves the process: log records, error
//! messages, API error bodies, audit lines and drill reports. Two stages,
//! always in this order:
//! 1. the host replaces the secret values it knows from its own
//!    configuration (URL passwords, S3 keys, token keys): no plugin can miss
//!    those;
//! 2. the first `redactor` plugin of the live policy set gets the lines, in
//!    batches (one call for many lines). Telemetry sits below the plugin
//!    host, so it knows that plugin only as a [`PluginRedactor`], which the
//!    plugin host implements.
//!
//! Invariants: a line is never emitted without both stages; when the plugin
//! fails, the line is withheld (replaced by a notice naming the failure),
//! never let through; what the redactor plugin itself logs is only
//! host-scrubbed (it would otherwise redact itself forever).
//!
//! [`redact_url`] is the one redactor of a URL for messages and
//! descriptions; stage 1 masks the same password parameters in any text.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

/// Known secrets shorter than this are not replaced: they would mangle
/// ordinary words ("pw", "1234") and are no real protection anyway.
const MIN_SECRET: usize = 4;

/// What stands for a secret in every output.
const MASK: &str = "***";

/// Stage 2: the redactor plugin, as the plugin host provides it.
pub trait PluginRedactor: Send + Sync {
    /// The plugin's name, for the notice that replaces the lines it failed on.
    fn name(&self) -> &str;
    /// The lines, redacted, one for one; an error (its message) withholds
    /// them all.
    fn redact(&self, lines: &[String]) -> Result<Vec<String>, String>;
}

type PluginSource = Box<dyn Fn() -> Option<Arc<dyn PluginRedactor>> + Send + Sync>;

#[derive(Default)]
pub struct RedactStats {
    pub lines: AtomicU64,
    pub calls: AtomicU64,
    /// Plugin calls that failed: their lines were withheld.
    pub failures: AtomicU64,
}

pub struct Redactor {
    /// Longest first, so a secret that contains another goes whole.
    known: RwLock<Vec<String>>,
    plugin: RwLock<Option<PluginSource>>,
    mask: String,
    pub stats: RedactStats,
}

static GLOBAL: OnceLock<Redactor> = OnceLock::new();

/// The process's redactor: what every output path goes through.
pub fn global() -> &'static Redactor {
    GLOBAL.get_or_init(Redactor::new)
}

thread_local! {
    /// Set while this thread runs the redactor plugin.
    static IN_PLUGIN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new()
    }
}

impl Redactor {
    pub fn new() -> Redactor {
        Redactor {
            known: RwLock::default(),
            plugin: RwLock::default(),
            mask: MASK.into(),
            stats: RedactStats::default(),
        }
    }

    /// Secret values to replace wherever they appear (stage 1).
    pub fn add_known<I: IntoIterator<Item = String>>(&self, secrets: I) {
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        for s in secrets {
            if s.len() >= MIN_SECRET && !known.contains(&s) {
                // Percent-encoded in URLs, the same secret looks different.
                let form = url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let path = form.replace('+', "%20");
                for encoded in [form, path] {
                    if encoded != s && !known.contains(&encoded) {
                        known.push(encoded);
                    }
                }
                known.push(s);
            }
        }
        known.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// Where the redactor plugin comes from: called per batch, so a policy
    /// reload takes effect at the next batch.
    pub fn set_plugin_source<P: PluginRedactor + 'static>(
        &self,
        source: impl Fn() -> Option<Arc<P>> + Send + Sync + 'static,
    ) {
        let source = move || source().map(|p| p as Arc<dyn PluginRedactor>);
        *self.plugin.write().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(source));
    }

    /// Stage 1 only: the secrets the host knows, and any URL's password
    /// parameter (a URL given at run time, a restore target say, is not
    /// known in advance).
    pub fn scrub(&self, line: &str) -> String {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        let mut out = mask_url_parameters(line, &self.mask);
        for s in known.iter() {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), &self.mask);
            }
        }
        out
    }

    /// Both stages, for a batch of lines: one plugin call.
    pub fn redact_lines(&self, lines: Vec<String>) -> Vec<String> {
        let scrubbed: Vec<String> = lines.iter().map(|l| self.scrub(l)).collect();
        self.stats
            .lines
            .fetch_add(scrubbed.len() as u64, Ordering::Relaxed);
        if scrubbed.is_empty() || IN_PLUGIN.with(|f| f.get()) {
            return scrubbed;
        }
        let plugin = {
            let source = self.plugin.read().unwrap_or_else(|e| e.into_inner());
            source.as_ref().and_then(|f| f())
        };
        let Some(plugin) = plugin else {
            return scrubbed;
        };
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        IN_PLUGIN.with(|f| f.set(true));
        let result = plugin.redact(&scrubbed);
        IN_PLUGIN.with(|f| f.set(false));
        match result {
            Ok(out) => out,
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                let notice = format!(
                    "[line withheld: the redactor {} failed: {}]",
                    plugin.name(),
                    self.scrub(&e)
                );
                vec![notice; scrubbed.len()]
            }
        }
    }

    /// Both stages, for one text (a message, a body).
    pub fn redact(&self, text: &str) -> String {
        self.redact_lines(vec![text.to_string()])
            .pop()
            .unwrap_or_default()
    }
}

/// URL query parameters that carry a secret (libpq: `password`, the client
/// key's `sslpassword`).
pub const SECRET_PARAMETERS: [&str; 2] = ["password", "sslpassword"];

/// Masks the value of every `?password=` / `&sslpassword=` ... in `line`, up
/// to the next `&`, `#`, whitespace or quote.
fn mask_url_parameters(line: &str, mask: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    'scan: while let Some(i) = rest.find(['?', '&']) {
        out.push_str(&rest[..=i]);
        rest = &rest[i + 1..];
        for name in SECRET_PARAMETERS {
            let Some(after) = rest
                .get(..name.len() + 1)
                .filter(|p| p.eq_ignore_ascii_case(&format!("{name}=")))
                .map(|_| &rest[name.len() + 1..])
            else {
                continue;
            };
            let end = after
                .find(|c: char| {
                    matches!(c, '&' | '#' | '"' | '\'' | '<' | '>') || c.is_whitespace()
                })
                .unwrap_or(after.len());
            out.push_str(&rest[..name.len() + 1]);
            if end > 0 {
                out.push_str(mask);
            }
            rest = &after[end..];
            continue 'scan;
        }
    }
    out.push_str(rest);
    out
}

/// A URL for people: the password in its userinfo and every password
/// parameter ([`SECRET_PARAMETERS`]) masked; anything else, byte for byte
/// as given. Text that is not a URL only has its password parameters masked.
pub fn redact_url(s: &str) -> String {
    let masked = match url::Url::parse(s) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some(MASK));
            u.to_string()
        }
        _ => s.to_string(),
    };
    mask_url_parameters(&masked, MASK)
}

/// The password of a URL: `scheme://user:password@host`, or a `password`
/// query parameter (which libpq prefers when both are given).
pub fn url_password(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    if let Some((_, p)) = u.query_pairs().find(|(k, _)| k == "password") {
        return Some(p.into_owned());
    }
    let p = u.password()?.as_bytes();
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            p[i],
            p.get(i + 1).and_then(|&b| hex(b)),
            p.get(i + 2).and_then(|&b| hex(b)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_secrets_go_longest_first_and_encoded_too() {
        let r = Redactor::new();
        r.add_known([
            "pw".to_string(),
            "hunter2".into(),
            "hunter2-long".into(),
            "a b&c/d".into(),
        ]);
        assert_eq!(r.scrub("x hunter2-long y hunter2 pw"), "x *** y *** pw");
        assert_eq!(
            r.scrub("postgres://u:a+b%26c%2Fd@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(r.redact("no plugin: hunter2"), "no plugin: ***");
        assert_eq!(
            url_password("postgres://u:a%20b+c@h/x").as_deref(),
            Some("a b+c")
        );
        assert_eq!(url_password("postgres://u@h/x"), None);
        assert_eq!(
            url_password("postgres://u@h/x?sslmode=require&password=s%26cret").as_deref(),
            Some("s&cret")
        );
    }

    #[test]
    fn a_url_shows_no_password_and_nothing_else_changes() {
        assert_eq!(
            redact_url("redis://:pw@cache:6380/0"),
            "redis://:***@cache:6380/0"
        );
        assert_eq!(
            redact_url("postgres://app:p%40ss@db:5433/my%20db?sslmode=disable"),
            "postgres://app:***@db:5433/my%20db?sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://app@db/x?sslmode=require&password=s%26cret&sslpassword=k"),
            "postgres://app@db/x?sslmode=require&password=***&sslpassword=***"
        );
        // Without a password the text comes back as given, not re-serialized.
        for same in [
            "s3://bucket/prefix?region=x y",
            "file:///b",
            "not a url",
            "",
        ] {
            assert_eq!(redact_url(same), same);
        }
    }

    /// Stage 2 through the trait: what the plugin host provides.
    struct Fake {
        fail: bool,
    }

    impl PluginRedactor for Fake {
        fn name(&self) -> &str {
            "fake"
        }

        fn redact(&self, lines: &[String]) -> Result<Vec<String>, String> {
            match self.fail {
                true => Err("trapped near hunter2".into()),
                false => Ok(lines.iter().map(|l| l.replace("card", "[card]")).collect()),
            }
        }
    }

    #[test]
    fn the_plugin_gets_scrubbed_lines_and_its_failure_withholds_them() {
        let r = Redactor::new();
        r.add_known(["hunter2".to_string()]);
        r.set_plugin_source(|| Some(Arc::new(Fake { fail: false })));
        assert_eq!(
            r.redact_lines(vec!["card 1 hunter2".into(), "x".into()]),
            ["[card] 1 ***", "x"]
        );
        r.set_plugin_source(|| Some(Arc::new(Fake { fail: true })));
        assert_eq!(
            r.redact_lines(vec!["card".into(), "y".into()]),
            vec!["[line withheld: the redactor fake failed: trapped near ***]"; 2]
        );
        assert_eq!(r.stats.calls.load(Ordering::Relaxed), 2);
        assert_eq!(r.stats.failures.load(Ordering::Relaxed), 1);
        r.set_plugin_source(|| None::<Arc<Fake>>);
        assert_eq!(r.redact("card hunter2"), "card ***");
    }

    #[test]
    fn password_parameters_of_any_url_are_masked() {
        let r = Redactor::new();
        assert_eq!(
            r.scrub("dial postgres://u@h:5/db?password=SECRET failed"),
            "dial postgres://u@h:5/db?password=*** failed"
        );
        assert_eq!(
            r.scrub("\"postgres://u@h/db?sslmode=require&PASSWORD=SECRET&x=1\""),
            "\"postgres://u@h/db?sslmode=require&PASSWORD=***&x=1\""
        );
        assert_eq!(
            r.scrub("u@h/db?sslpassword=SECRET#f and ?password= and a&b"),
            "u@h/db?sslpassword=***#f and ?password= and a&b"
        );
        assert_eq!(
            r.scrub("?passwords=kept&mypassword=kept"),
            "?passwords=kept&mypassword=kept"
        );
    }
}
