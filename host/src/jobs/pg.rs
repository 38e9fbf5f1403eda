//! What the jobs share about PostgreSQL: connection URLs (and keeping their
//! passwords out of process lists and messages), the client tools, catalog
//! queries.

use super::JobError;
use std::path::PathBuf;
use url::Url;

/// A connection URL, kept whole for connecting and shown only redacted.
#[derive(Clone)]
pub struct PgUrl {
    url: Url,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl PgUrl {
    pub fn parse(s: &str) -> Result<PgUrl, JobError> {
        let url = Url::parse(s).map_err(|e| {
            JobError::Config(format!(
                "database URL: {e} (expected postgres://user[:password]@host[:port]/database)"
            ))
        })?;
        if url.scheme() != "postgres" && url.scheme() != "postgresql" {
            return Err(JobError::Config(format!(
                "database URL: scheme {:?}, expected postgres://",
                url.scheme()
            )));
        }
        super::pg_tls::check_url(&url)
            .map_err(|e| JobError::Config(format!("database URL: {e}")))?;
        Ok(PgUrl { url })
    }

    /// The database the URL names (`postgres` when none).
    pub fn database(&self) -> String {
        let d = self.url.path().trim_start_matches('/');
        let d = percent_decode(d);
        if d.is_empty() {
            "postgres".into()
        } else {
            d
        }
    }

    /// The same server, another database.
    pub fn with_database(&self, db: &str) -> PgUrl {
        let mut url = self.url.clone();
        url.set_path(&format!("/{}", percent_encode(db)));
        PgUrl { url }
    }

    /// The same server and database as another role: user and password
    /// replaced, and any `user`/`password` parameter that would override them dropped.
    pub fn with_login(&self, user: &str, password: &str) -> PgUrl {
        let mut url = self.url.clone();
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| !matches!(k.as_ref(), "user" | "password" | "passfile"))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.set_query(None);
        if !kept.is_empty() {
            url.query_pairs_mut().extend_pairs(kept);
        }
        let _ = url.set_username(&percent_encode(user));
        let _ = url.set_password(Some(&percent_encode(password)));
        PgUrl { url }
    }

    /// For connecting (holds the password).
    pub fn secret_url(&self) -> &str {
        self.url.as_str()
    }

    /// The role the URL logs in as ("" for libpq's default, the OS user).
    pub fn user(&self) -> String {
        percent_decode(self.url.username())
    }

    /// The password, for PGPASSWORD: a `password` parameter (libpq prefers
    /// it when both are given), else the one in the userinfo.
    pub fn password(&self) -> Option<String> {
        if let Some((_, p)) = self.url.query_pairs().find(|(k, _)| k == "password") {
            return Some(p.into_owned());
        }
        self.url.password().map(percent_decode)
    }

    /// The URL with each secret parameter dropped (no `mask`) or masked.
    fn without_secret_parameters(&self, mask: Option<&str>) -> Url {
        let mut url = self.url.clone();
        if !url
            .query_pairs()
            .any(|(k, _)| crate::telemetry::redact::SECRET_PARAMETERS.contains(&k.as_ref()))
        {
            return url;
        }
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter_map(|(k, v)| {
                match crate::telemetry::redact::SECRET_PARAMETERS.contains(&k.as_ref()) {
                    // sslpassword has no environment variable, and a
                    // command line is readable by every local user: it
                    // never goes to a tool (firedrill refuses encrypted
                    // keys before any tool starts, see `pg_tls`).
                    true => mask.map(|m| (k, m.into())),
                    false => Some((k, v)),
                }
            })
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.set_query(None);
        if !kept.is_empty() {
            url.query_pairs_mut().extend_pairs(kept);
        }
        url
    }

    /// For command lines: no password, in the userinfo or as a `password`
    /// parameter (it goes through PGPASSWORD).
    pub fn without_password(&self) -> String {
        let mut url = self.without_secret_parameters(None);
        let _ = url.set_password(None);
        url.to_string()
    }

    /// For people: every password masked, in the userinfo or as a parameter.
    pub fn redacted(&self) -> String {
        let mut url = self.without_secret_parameters(Some("***"));
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        url.to_string()
    }

    /// `host:port`, for naming a source.
    pub fn server(&self) -> String {
        let host = self.url.host_str().map(percent_decode).unwrap_or_default();
        // A Unix socket's directory (often random) does not name a server.
        let host = if host.is_empty() || host.starts_with('/') {
            "local"
        } else {
            &host
        };
        format!("{host}-{}", self.url.port().unwrap_or(5432))
    }

    /// Connects with the URL's TLS settings (see `pg_tls`).
    pub async fn connect(&self) -> Result<tokio_postgres::Client, JobError> {
        let failed = |message| JobError::Connect {
            url: self.redacted(),
            message,
        };
        super::pg_tls::PgConnect::from_url(self.secret_url())
            .map_err(failed)?
            .connect()
            .await
            .map_err(failed)
    }

    /// The databases of this server that accept connections, templates aside.
    pub async fn list_databases(&self) -> Result<Vec<String>, JobError> {
        let c = self.with_database("postgres").connect().await?;
        let rows = c
            .query("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1", &[])
            .await
            .map_err(|e| JobError::sql("postgres", "list the databases", e))?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// A client tool (pg_dump, psql) set up for this URL; the password goes
    /// through the environment, never the command line.
    pub fn command(&self, tool: &str) -> Result<tokio::process::Command, JobError> {
        let mut cmd = tokio::process::Command::new(pg_tool(tool)?);
        cmd.env_remove("PGPASSWORD");
        if let Some(p) = self.password() {
            cmd.env("PGPASSWORD", p);
        }
        cmd.arg(format!("--dbname={}", self.without_password()));
        cmd.kill_on_drop(true);
        Ok(cmd)
    }
}

/// A running client tool; its stderr is kept for the error message.
pub struct Tool {
    pub child: tokio::process::Child,
    name: String,
    stderr: tokio::task::JoinHandle<String>,
}

impl Tool {
    /// Starts `cmd` (stdin and stdout as the caller set them; stderr is taken).
    pub fn spawn(mut cmd: tokio::process::Command, name: &str) -> Result<Tool, JobError> {
        use tokio::io::AsyncReadExt;
        cmd.stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| JobError::Tool {
            tool: name.into(),
            message: format!(
                "cannot start: {e} (install the PostgreSQL client tools, or set FIREDRILL_PG_BIN)"
            ),
        })?;
        let mut err = child.stderr.take().expect("piped");
        let stderr = tokio::spawn(async move {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s).await;
            s
        });
        Ok(Tool {
            child,
            name: name.into(),
            stderr,
        })
    }

    pub fn error(&self, message: impl Into<String>) -> JobError {
        JobError::Tool {
            tool: self.name.clone(),
            message: message.into(),
        }
    }

    /// Waits for the tool; a failure carries what it wrote to stderr.
    pub async fn wait(mut self, context: &str) -> Result<(), JobError> {
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| self.error(e.to_string()))?;
        let said = (&mut self.stderr).await.unwrap_or_default();
        if !status.success() {
            return Err(self.error(format!("{context}{status}: {}", said.trim())));
        }
        Ok(())
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A PostgreSQL client tool: from FIREDRILL_PG_BIN, else the newest installed
/// server version's bin directory (pg_dump must be at least the server's
/// version), else PATH.
pub fn pg_tool(tool: &str) -> Result<PathBuf, JobError> {
    if let Some(dir) = std::env::var_os("FIREDRILL_PG_BIN") {
        return Ok(PathBuf::from(dir).join(tool));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse().ok()?;
            let p = e.path().join("bin").join(tool);
            p.exists().then_some((v, p))
        })
        .collect();
    found.sort();
    if let Some((_, p)) = found.pop() {
        return Ok(p);
    }
    Ok(PathBuf::from(tool))
}

/// Quotes an identifier for SQL.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_passwords_out_of_sight() {
        let u = PgUrl::parse("postgres://app:p%40ss@db:5433/my%20db?sslmode=disable").unwrap();
        assert_eq!(u.database(), "my db");
        assert_eq!(u.password().as_deref(), Some("p@ss"));
        assert!(!u.without_password().contains("p%40ss") && !u.redacted().contains("p%40ss"));
        assert!(u.redacted().contains("***"));
        assert_eq!(u.with_database("other").database(), "other");
        assert!(u
            .with_database("other")
            .secret_url()
            .contains("sslmode=disable"));
        assert_eq!(u.server(), "db-5433");
        assert!(PgUrl::parse("mysql://x/y").is_err());
        assert_eq!(format!("{u:?}"), u.redacted());
    }

    #[test]
    fn a_password_parameter_goes_to_pgpassword_and_nowhere_else() {
        let u = PgUrl::parse(
            "postgres://app@db:5433/app?sslmode=disable&password=s%26cr3t&application_name=x",
        )
        .unwrap();
        assert_eq!(u.password().as_deref(), Some("s&cr3t"));
        for shown in [u.without_password(), u.redacted(), format!("{u:?}")] {
            assert!(!shown.contains("cr3t"), "{shown}");
            assert!(
                shown.contains("sslmode=disable") && shown.contains("application_name=x"),
                "{shown}"
            );
        }
        assert!(u.redacted().contains("password=***"), "{}", u.redacted());
        // A key's password has no environment variable: it never reaches a tool.
        let key =
            PgUrl::parse("postgres://app@db/app?sslmode=verify-full&sslpassword=k3y").unwrap();
        assert!(
            !key.without_password().contains("k3y"),
            "{}",
            key.without_password()
        );
        assert!(key.without_password().contains("sslmode=verify-full"));
        assert!(!u.without_password().contains("password"));
        // Both forms at once: the parameter is the one libpq uses.
        let both = PgUrl::parse("postgres://app:inner@db/app?password=outer").unwrap();
        assert_eq!(both.password().as_deref(), Some("outer"));
        assert!(!both.redacted().contains("inner") && !both.redacted().contains("outer"));
        if let Ok(cmd) = u.command("psql") {
            let cmd = cmd.as_std();
            let args: Vec<String> = cmd
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            assert!(args.iter().all(|a| !a.contains("cr3t")), "{args:?}");
            let env: Vec<_> = cmd.get_envs().collect();
            assert!(env.contains(&(
                std::ffi::OsStr::new("PGPASSWORD"),
                Some(std::ffi::OsStr::new("s&cr3t"))
            )));
        }
    }
}
