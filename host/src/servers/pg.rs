//! What the jobs share about PostgreSQL: connection URLs (and keeping their
//! passwords out of process lists and messages), the client tools, catalog
//! queries.

use super::ServerError;
use std::path::PathBuf;
use url::Url;

/// A connection URL, kept whole for connecting and shown only redacted.
#[derive(Clone)]
pub struct PgUrl {
    url: Url,
    /// The server's major version, once known: the client tools are picked for it.
    need: Option<Need>,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl PgUrl {
    pub fn parse(s: &str) -> Result<PgUrl, ServerError> {
        let url = Url::parse(s).map_err(|e| {
            ServerError::Config(format!(
                "database URL: {e} (expected postgres://user[:password]@host[:port]/database)"
            ))
        })?;
        if url.scheme() != "postgres" && url.scheme() != "postgresql" {
            return Err(ServerError::Config(format!(
                "database URL: scheme {:?}, expected postgres://",
                url.scheme()
            )));
        }
        super::pg_tls::check_url(&url)
            .map_err(|e| ServerError::Config(format!("database URL: {e}")))?;
        Ok(PgUrl { url, need: None })
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
        PgUrl {
            url,
            need: self.need.clone(),
        }
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
        PgUrl {
            url,
            need: self.need.clone(),
        }
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

    /// The URL with each secret parameter dropped.
    fn without_secret_parameters(&self) -> Url {
        let mut url = self.url.clone();
        if !url
            .query_pairs()
            .any(|(k, _)| crate::telemetry::redact::SECRET_PARAMETERS.contains(&k.as_ref()))
        {
            return url;
        }
        let kept: Vec<(String, String)> = url
            .query_pairs()
            // sslpassword has no environment variable, and a command line
            // is readable by every local user: it never goes to a tool
            // (firedrill refuses encrypted keys before any tool starts, see
            // `pg_tls`).
            .filter(|(k, _)| !crate::telemetry::redact::SECRET_PARAMETERS.contains(&k.as_ref()))
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
        let mut url = self.without_secret_parameters();
        let _ = url.set_password(None);
        url.to_string()
    }

    /// For people: every password masked, in the userinfo or as a parameter
    /// (the one URL redactor, `telemetry::redact::redact_url`).
    pub fn redacted(&self) -> String {
        crate::telemetry::redact::redact_url(self.url.as_str())
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

    /// Whether the server runs on this machine (a Unix socket, a loopback
    /// address): then this machine's memory is the server's.
    pub fn is_local(&self) -> bool {
        let mut host = self.url.host_str().map(percent_decode).unwrap_or_default();
        // libpq's `?host=` wins over the URL's (a socket directory, or a name).
        if let Some((_, h)) = self.url.query_pairs().find(|(k, _)| k == "host") {
            host = h.into_owned();
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        // No host at all: libpq's default, the local socket.
        host.is_empty()
            || host.starts_with('/')
            || host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// Connects with the URL's TLS settings (see `pg_tls`).
    pub async fn connect(&self) -> Result<tokio_postgres::Client, ServerError> {
        let failed = |message| ServerError::Connect {
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
    pub async fn list_databases(&self) -> Result<Vec<String>, ServerError> {
        let c = self.with_database("postgres").connect().await?;
        let rows = c
            .query("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1", &[])
            .await
            .map_err(|e| ServerError::sql("postgres", "list the databases", e))?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// The same URL for a server known to run `server_version_num`, as
    /// source `source`: its client tools are picked for that version, and
    /// one must exist now (pg_dump, before anything is written), else the
    /// error names the version needed and the fix.
    pub fn on_server(&self, source: &str, server_version_num: i32) -> Result<PgUrl, ServerError> {
        let need = Need {
            major: major_of_num(server_version_num),
            subject: format!("source {source} runs"),
        };
        pick_tool("pg_dump", Some(&need))?;
        Ok(PgUrl {
            url: self.url.clone(),
            need: Some(need),
        })
    }

    /// A client tool (pg_dump, psql) set up for this URL; the password goes
    /// through the environment, never the command line.
    pub fn command(&self, tool: &str) -> Result<tokio::process::Command, ServerError> {
        let mut cmd = tokio::process::Command::new(pick_tool(tool, self.need.as_ref())?.path);
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
    pub fn spawn(mut cmd: tokio::process::Command, name: &str) -> Result<Tool, ServerError> {
        use tokio::io::AsyncReadExt;
        cmd.stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| ServerError::Tool {
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

    pub fn error(&self, message: impl Into<String>) -> ServerError {
        ServerError::Tool {
            tool: self.name.clone(),
            message: message.into(),
        }
    }

    /// Waits for the tool; a failure carries what it wrote to stderr.
    pub async fn wait(mut self, context: &str) -> Result<(), ServerError> {
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
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Everything but RFC 3986's unreserved characters.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, COMPONENT).to_string()
}

// ----- which binaries -------------------------------------------------------
//
// One rule for every tool (pg_dump, pg_dumpall, psql, initdb, postgres): a
// tool can read servers of its own major version and older ones, never newer
// ones, so for a server of major M the LOWEST installed major >= M is taken
// (the closest to the server's own release, whose output it was tested
// against); with no server to match, the newest. Several majors side by side are the norm on Debian/PGDG and
// RHEL systems.

/// Where tools are looked for: FIREDRILL_PG_BIN (a colon-separated list of
/// bin directories) when set, and then nothing else, so an operator's choice
/// is never second-guessed; else Debian/PGDG's and RHEL's per-version
/// directories, then PATH.
fn search_dirs() -> Vec<PathBuf> {
    if let Some(list) = std::env::var_os("FIREDRILL_PG_BIN").filter(|v| !v.is_empty()) {
        return std::env::split_paths(&list)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
    }
    let mut dirs = Vec::new();
    for (parent, prefix) in [("/usr/lib/postgresql", ""), ("/usr", "pgsql-")] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(parent)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path().join("bin"))
            .filter(|p| p.is_dir())
            .collect();
        found.sort();
        dirs.extend(found);
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path).filter(|p| !p.as_os_str().is_empty()));
    }
    dirs
}

/// A tool found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundTool {
    pub major: u32,
    pub path: PathBuf,
    /// Its `--version` line, e.g. `pg_dump (PostgreSQL) 17.10`.
    pub version: String,
}

/// `<tool> --version`, read once per path for the life of the process.
fn tool_version(path: &std::path::Path) -> Option<(u32, String)> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Seen = HashMap<PathBuf, Option<(u32, String)>>;
    static SEEN: Mutex<Option<Seen>> = Mutex::new(None);
    // By the path as found, not its target: Debian's /usr/bin/pg_dump and
    // /usr/bin/psql are one script (pg_wrapper) answering for each tool.
    if let Some(known) = SEEN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .get(path)
    {
        return known.clone();
    }
    let read = std::process::Command::new(path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            let line = String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()?
                .trim()
                .to_string();
            Some((tool_major(&line)?, line))
        });
    SEEN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(path.to_path_buf(), read.clone());
    read
}

/// The major version in a tool's `--version` line: `pg_dump (PostgreSQL)
/// 17.10`, `postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)`, `psql
/// (PostgreSQL) 18beta1`, `pg_dump (PostgreSQL) 9.6.24` (9.x majors are 9).
pub fn tool_major(line: &str) -> Option<u32> {
    let after = match line.find("(PostgreSQL) ") {
        Some(i) => &line[i + "(PostgreSQL) ".len()..],
        None => line
            .split_whitespace()
            .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?,
    };
    server_major(after)
}

/// The major version in a `server_version` setting: `15.14 (Debian ...)`,
/// `18beta1`, `9.6.24` (9).
pub fn server_major(version: &str) -> Option<u32> {
    let digits: String = version
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The major version of a `server_version_num` (150014 is 15, 90624 is 9).
pub fn major_of_num(num: i32) -> u32 {
    (num.max(0) / 10_000) as u32
}

/// Every `tool` in the search directories, in search order, with its major.
pub fn find_tools(tool: &str) -> Vec<FoundTool> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for dir in search_dirs() {
        let path = dir.join(tool);
        if !path.is_file() {
            continue;
        }
        let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if seen.contains(&canonical) {
            continue;
        }
        seen.push(canonical);
        if let Some((major, version)) = tool_version(&path) {
            out.push(FoundTool {
                major,
                path,
                version,
            });
        }
    }
    out
}

/// The picking rule: the lowest major at least `need` (the first found of
/// that major), or with no need the newest.
pub fn pick(found: &[FoundTool], need: Option<u32>) -> Option<&FoundTool> {
    match need {
        Some(m) => {
            found
                .iter()
                .filter(|f| f.major >= m)
                .fold(None, |best: Option<&FoundTool>, f| match best {
                    Some(b) if b.major <= f.major => Some(b),
                    _ => Some(f),
                })
        }
        None => found
            .iter()
            .fold(None, |best: Option<&FoundTool>, f| match best {
                Some(b) if b.major >= f.major => Some(b),
                _ => Some(f),
            }),
    }
}

/// What a tool must be able to handle: a server of major `major`, named in
/// a refusal as `subject` (e.g. "source app runs").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub major: u32,
    pub subject: String,
}

/// The tool to run for `need` (none: the newest), or an error that says
/// which version is needed and how to get it.
pub fn pick_tool(tool: &str, need: Option<&Need>) -> Result<FoundTool, ServerError> {
    let found = find_tools(tool);
    if let Some(f) = pick(&found, need.map(|n| n.major)) {
        return Ok(f.clone());
    }
    Err(ServerError::Config(refusal(tool, need, pick(&found, None))))
}

/// The message for no suitable `tool`: the version needed, the best one
/// there is, and the fix.
fn refusal(tool: &str, need: Option<&Need>, newest: Option<&FoundTool>) -> String {
    let server = matches!(tool, "initdb" | "postgres" | "pg_ctl");
    let (what, package) = if server {
        ("server", "postgresql")
    } else {
        ("client tools", "postgresql-client")
    };
    let fix = |m: String| {
        let suffix = if m.is_empty() {
            String::new()
        } else {
            format!("-{m}")
        };
        let version = if m.is_empty() {
            String::new()
        } else {
            format!(" {m}")
        };
        format!(
            "install the PostgreSQL{version} {what} (e.g. {package}{suffix}) or point FIREDRILL_PG_BIN at their bin directory"
        )
    };
    let searched = match std::env::var_os("FIREDRILL_PG_BIN").filter(|v| !v.is_empty()) {
        Some(v) => format!("FIREDRILL_PG_BIN ({})", v.to_string_lossy()),
        None => "/usr/lib/postgresql/*/bin, /usr/pgsql-*/bin or PATH".into(),
    };
    match (need, newest) {
        (Some(n), Some(f)) => format!(
            "{} PostgreSQL {}; the newest {tool} found is {} ({}): {}",
            n.subject,
            n.major,
            f.major,
            f.path.display(),
            fix(n.major.to_string())
        ),
        (Some(n), None) => format!(
            "{} PostgreSQL {}; no {tool} found in {searched}: {}",
            n.subject,
            n.major,
            fix(n.major.to_string())
        ),
        (None, _) => format!("no {tool} found in {searched}: {}", fix(String::new())),
    }
}

/// A PostgreSQL tool for no server in particular: the newest installed.
pub fn pg_tool(tool: &str) -> Result<PathBuf, ServerError> {
    pick_tool(tool, None).map(|f| f.path)
}

/// The versions a backup of a server reporting `server_version` records:
/// its major and the `pg_dump` chosen for it (the same pick `PgUrl::command`
/// makes, from the same cache).
pub fn versions_for(server_version: &str) -> Option<crate::archive::manifest::PgVersions> {
    let major = server_major(server_version)?;
    let need = Need {
        major,
        subject: String::new(),
    };
    let dump = pick_tool("pg_dump", Some(&need)).ok()?;
    Some(crate::archive::manifest::PgVersions {
        server_major: major,
        pg_dump: dump.version,
    })
}

/// Refuses to restore a backup into a server older than its source: its
/// schema script comes from a pg_dump at least as new as the source and may
/// use what an older server does not have.
pub async fn refuse_older_target(
    target: &PgUrl,
    manifest: &crate::archive::manifest::Manifest,
) -> Result<(), ServerError> {
    let Some(source) = manifest.server_major() else {
        return Ok(());
    };
    let admin = target.with_database("postgres");
    let num: i32 = admin
        .connect()
        .await?
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| ServerError::sql("postgres", "read the server's version", e))?
        .get(0);
    let major = major_of_num(num);
    if major < source {
        return Err(ServerError::Config(format!(
            "backup {} comes from PostgreSQL {source}, and {} runs PostgreSQL {major}: restore into a server of version {source} or later (a drill with --local picks one from the installed servers)",
            manifest.id,
            target.redacted()
        )));
    }
    Ok(())
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

    fn found(list: &[(u32, &str)]) -> Vec<FoundTool> {
        list.iter()
            .map(|(major, dir)| FoundTool {
                major: *major,
                path: PathBuf::from(dir).join("pg_dump"),
                version: format!("pg_dump (PostgreSQL) {major}.1"),
            })
            .collect()
    }

    #[test]
    fn the_lowest_major_at_least_the_servers_is_picked() {
        let all = found(&[(15, "/a"), (18, "/b"), (17, "/c"), (17, "/d"), (13, "/e")]);
        let dir = |need| pick(&all, need).map(|f| f.path.parent().unwrap().to_path_buf());
        assert_eq!(dir(Some(15)), Some("/a".into()));
        // No 16: the closest newer one, never an older one.
        assert_eq!(dir(Some(16)), Some("/c".into()), "the first of two 17s");
        assert_eq!(dir(Some(17)), Some("/c".into()));
        assert_eq!(dir(Some(18)), Some("/b".into()));
        assert_eq!(dir(Some(12)), Some("/e".into()));
        assert_eq!(dir(Some(19)), None);
        // No server to match: the newest.
        assert_eq!(dir(None), Some("/b".into()));
        assert_eq!(pick(&[], None), None);
    }

    #[test]
    fn versions_are_read_from_tools_and_servers() {
        assert_eq!(tool_major("pg_dump (PostgreSQL) 17.10"), Some(17));
        assert_eq!(
            tool_major("postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(tool_major("psql (PostgreSQL) 18beta1"), Some(18));
        assert_eq!(tool_major("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(tool_major("not a tool"), None);
        assert_eq!(server_major("16.4 (Ubuntu 16.4-1.pgdg22.04+1)"), Some(16));
        assert_eq!(major_of_num(180006), 18);
        assert_eq!(major_of_num(90624), 9);
    }

    #[test]
    fn a_missing_version_is_named_with_its_fix() {
        let all = found(&[(15, "/usr/lib/postgresql/15/bin")]);
        let need = Need {
            major: 18,
            subject: "source app runs".into(),
        };
        let m = refusal("pg_dump", Some(&need), pick(&all, None));
        assert_eq!(
            m,
            "source app runs PostgreSQL 18; the newest pg_dump found is 15 (/usr/lib/postgresql/15/bin/pg_dump): install the PostgreSQL 18 client tools (e.g. postgresql-client-18) or point FIREDRILL_PG_BIN at their bin directory"
        );
        let m = refusal("initdb", Some(&need), None);
        assert!(
            m.contains("no initdb found") && m.contains("postgresql-18"),
            "{m}"
        );
    }
}
