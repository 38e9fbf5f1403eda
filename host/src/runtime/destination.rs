//! A notifier policy's destinations: where its messages may go, with the
//! addresses and credentials the plugin never sees (it names a destination;
//! the host delivers).
//!
//! ```toml
//! [destinations.ops]                     # a JSON webhook, body HMAC-signed
//! kind = "webhook"
//! url = { env = "OPS_WEBHOOK_URL" }
//! hmac_key = { env = "OPS_WEBHOOK_KEY" } # optional: X-Firedrill-Signature: sha256=<hex>
//!
//! [destinations.chat]                    # a Slack-compatible incoming webhook
//! kind = "slack"
//! url = { env = "SLACK_WEBHOOK_URL" }
//!
//! [destinations.oncall]                  # e-mail over SMTP
//! kind = "email"
//! server = "mail.example.com:587"
//! security = "starttls"                  # default; "tls" (implicit, port 465); "none" (local relays only)
//! from = "firedrill@example.com"
//! to = ["oncall@example.com"]
//! username = { env = "SMTP_USER" }       # optional, with password
//! password = { env = "SMTP_PASSWORD" }
//! ca_file = "/etc/firedrill/mail-ca.pem" # optional: a private CA, besides the system's
//! ```
//!
//! Invariant: every value that can carry a secret (URLs, keys, passwords)
//! is known to the redactor once parsed, and `Debug` shows none of them.

use std::fmt;
use std::path::PathBuf;

#[derive(Clone)]
pub enum Destination {
    Webhook {
        url: String,
        hmac_key: Option<String>,
    },
    Slack {
        url: String,
    },
    Email(Email),
}

#[derive(Clone)]
pub struct Email {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub from: String,
    pub to: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    StartTls,
    Tls,
    None,
}

impl Destination {
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::Webhook { .. } => "webhook",
            Destination::Slack { .. } => "slack",
            Destination::Email(_) => "email",
        }
    }

    /// The values to scrub wherever they might appear.
    pub fn secrets(&self) -> Vec<String> {
        match self {
            Destination::Webhook { url, hmac_key } => {
                let mut s = vec![url.clone()];
                s.extend(hmac_key.clone());
                s
            }
            Destination::Slack { url } => vec![url.clone()],
            Destination::Email(e) => e.password.iter().cloned().collect(),
        }
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Email(e) => write!(
                f,
                "email to {} via {}:{} ({:?})",
                e.to.join(", "),
                e.host,
                e.port,
                e.security
            ),
            other => write!(f, "{}", other.kind()),
        }
    }
}

/// Parses `[destinations]`: `(name, destination)` by name, or the field
/// that is wrong and why. `env` resolves `{ env = "NAME" }` values.
pub fn parse(
    table: &toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Destination)>, (String, String)> {
    let mut out = Vec::new();
    for (name, value) in table {
        let at = |k: &str| format!("destinations.{name}.{k}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err((
                format!("destinations.{name}"),
                "a destination's name is letters, digits, '-' and '_'".into(),
            ));
        }
        let t = value.as_table().ok_or_else(|| {
            (
                format!("destinations.{name}"),
                "must be a table ([destinations.<name>])".to_string(),
            )
        })?;
        let known: &[&str] = match t.get("kind").and_then(|k| k.as_str()) {
            Some("webhook") => &["kind", "url", "hmac_key"],
            Some("slack") => &["kind", "url"],
            Some("email") => &[
                "kind", "server", "security", "from", "to", "username", "password", "ca_file",
            ],
            Some(k) => {
                return Err((
                    at("kind"),
                    format!("{k:?}: use \"webhook\", \"slack\" or \"email\""),
                ))
            }
            None => {
                return Err((
                    at("kind"),
                    "missing: \"webhook\", \"slack\" or \"email\"".into(),
                ))
            }
        };
        if let Some(extra) = t.keys().find(|k| !known.contains(&k.as_str())) {
            return Err((
                at(extra),
                format!("unknown key; expected one of {}", known.join(", ")),
            ));
        }
        let get = |k: &str| -> Result<Option<String>, (String, String)> {
            match t.get(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(toml::Value::Table(e)) => match e.get("env").and_then(|v| v.as_str()) {
                    Some(var) if e.len() == 1 => env(var)
                        .filter(|v| !v.trim().is_empty())
                        .map(Some)
                        .ok_or_else(|| {
                            (at(k), format!("the environment variable {var} is not set"))
                        }),
                    _ => Err((at(k), "a string, or { env = \"NAME\" }".into())),
                },
                Some(_) => Err((at(k), "a string, or { env = \"NAME\" }".into())),
            }
        };
        let need = |k: &str| get(k)?.ok_or_else(|| (at(k), "missing".to_string()));
        let http_url = |k: &str| -> Result<String, (String, String)> {
            let u = need(k)?;
            match reqwest::Url::parse(&u) {
                Ok(p) if matches!(p.scheme(), "http" | "https") && p.host().is_some() => Ok(u),
                // Never the value: a webhook URL is a credential.
                _ => Err((at(k), "not an http(s) URL".into())),
            }
        };
        let d = match t["kind"].as_str() {
            Some("webhook") => Destination::Webhook {
                url: http_url("url")?,
                hmac_key: get("hmac_key")?,
            },
            Some("slack") => Destination::Slack {
                url: http_url("url")?,
            },
            _ => {
                let server = need("server")?;
                let security = match get("security")?.as_deref() {
                    None | Some("starttls") => Security::StartTls,
                    Some("tls") => Security::Tls,
                    Some("none") => Security::None,
                    Some(s) => {
                        return Err((
                            at("security"),
                            format!("{s:?}: use \"starttls\", \"tls\" or \"none\""),
                        ))
                    }
                };
                let (host, port) = match server.rsplit_once(':') {
                    Some((h, p)) => (
                        h.to_string(),
                        p.parse::<u16>().map_err(|_| {
                            (
                                at("server"),
                                format!("{server:?}: the port is not a number"),
                            )
                        })?,
                    ),
                    None => (
                        server.clone(),
                        if security == Security::Tls { 465 } else { 587 },
                    ),
                };
                let to = match t.get("to") {
                    Some(toml::Value::Array(a)) => a
                        .iter()
                        .map(|v| v.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| (at("to"), "a list of addresses".to_string()))?,
                    Some(toml::Value::String(s)) => vec![s.clone()],
                    _ => return Err((at("to"), "missing: a list of addresses".into())),
                };
                if to.is_empty() {
                    return Err((at("to"), "no address".into()));
                }
                let username = get("username")?;
                let password = get("password")?;
                if username.is_some() != password.is_some() {
                    return Err((at("password"), "username and password go together".into()));
                }
                let loopback = host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|a| a.is_loopback());
                if security == Security::None && password.is_some() && !loopback {
                    return Err((
                        at("security"),
                        "\"none\" would send the password in clear: use \"starttls\" or \"tls\" (\"none\" with credentials only to a relay on this host)".into(),
                    ));
                }
                let from = need("from")?;
                for a in std::iter::once(&from).chain(&to) {
                    if a.parse::<lettre::Address>().is_err() {
                        let k = if *a == from { "from" } else { "to" };
                        return Err((at(k), format!("{a:?} is not an e-mail address")));
                    }
                }
                let ca_file = get("ca_file")?.map(PathBuf::from);
                if let Some(f) = ca_file.as_ref().filter(|f| !f.is_file()) {
                    return Err((at("ca_file"), format!("{} is not a file", f.display())));
                }
                Destination::Email(Email {
                    host,
                    port,
                    security,
                    from,
                    to,
                    username,
                    password,
                    ca_file,
                })
            }
        };
        out.push((name.clone(), d));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Vec<(String, Destination)>, (String, String)> {
        let t: toml::Table = toml::from_str(text).unwrap();
        parse(&t, &|v| {
            (v == "HOOK").then(|| "https://hooks.example.com/T0/B1/secret".to_string())
        })
    }

    #[test]
    fn every_kind_and_each_mistake_named() {
        let d = parse_text(
            "[ops]\nkind = \"webhook\"\nurl = { env = \"HOOK\" }\nhmac_key = \"k\"\n\
             [mail]\nkind = \"email\"\nserver = \"mail.example.com\"\nfrom = \"f@example.com\"\nto = [\"a@example.com\"]\n",
        )
        .unwrap();
        assert_eq!(d.len(), 2);
        let shown = format!("{d:?}");
        assert!(
            !shown.contains("secret") && shown.contains("587"),
            "{shown}"
        );
        let ops = &d.iter().find(|(n, _)| n == "ops").unwrap().1;
        assert!(
            ops.secrets().iter().any(|s| s.ends_with("/secret")),
            "{d:?}"
        );
        for (text, field) in [
            ("[a]\nkind = \"pager\"", "destinations.a.kind"),
            ("[a]\nkind = \"slack\"\nurl = { env = \"UNSET\" }", "destinations.a.url"),
            ("[a]\nkind = \"slack\"\nurl = \"ftp://x\"", "destinations.a.url"),
            ("[a]\nkind = \"slack\"\nurl = \"https://x\"\nchannel = \"#ops\"", "destinations.a.channel"),
            ("[a]\nkind = \"email\"\nserver = \"m:25\"\nfrom = \"f@x\"\nto = []", "destinations.a.to"),
            ("[a]\nkind = \"email\"\nserver = \"m:x\"\nfrom = \"f@x\"\nto = [\"t@x\"]", "destinations.a.server"),
            ("[a]\nkind = \"email\"\nserver = \"m:25\"\nfrom = \"nobody\"\nto = [\"t@x\"]", "destinations.a.from"),
            ("[a]\nkind = \"email\"\nserver = \"mail.example.com:25\"\nsecurity = \"none\"\nfrom = \"f@x\"\nto = [\"t@x\"]\nusername = \"u\"\npassword = \"p\"", "destinations.a.security"),
        ] {
            let e = parse_text(text).err().unwrap_or_else(|| panic!("{text} passed"));
            assert_eq!(e.0, field, "{text}: {e:?}");
        }
    }
}
