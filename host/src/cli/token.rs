//! `firedrill token issue|revoke|keygen`: the signed bearer tokens the
//! built-in authorizer (`authorizer-signed`) checks.

use anyhow::{bail, Context};
use firedrill_token::{Claims, SigningKey};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print a new token on stdout (its id and expiry on stderr).
    Issue(IssueArgs),
    /// Revoke a token by its id: agents sharing the Redis refuse it from now on.
    Revoke(RevokeArgs),
    /// Print a new Ed25519 key pair: the private key signs (keep it off the
    /// nodes), the public key goes into the authorizer's policy.
    Keygen,
}

#[derive(clap::Args)]
pub struct IssueArgs {
    /// viewer, operator or admin.
    #[arg(long)]
    role: String,
    /// How long the token is valid, e.g. 1h, 30d.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Who the token is for (shown in the audit log).
    #[arg(long, default_value = "operator")]
    subject: String,
    /// The HMAC-SHA256 secret (at least 32 bytes); --ed25519-key wins over it.
    #[arg(long, env = "FIREDRILL_TOKEN_KEY", hide_env_values = true)]
    hmac_key: Option<String>,
    /// A file holding an Ed25519 private key (base64, as `keygen` prints it).
    #[arg(long, env = "FIREDRILL_TOKEN_ED25519_KEY_FILE")]
    ed25519_key: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct RevokeArgs {
    /// The token's id (printed by `issue`, in the audit log as credential_id).
    id: String,
    /// The Redis the agents coordinate through.
    #[arg(long, env = "FIREDRILL_REDIS_URL", hide_env_values = true)]
    redis_url: String,
    /// The agents' coordination.namespace.
    #[arg(long, default_value = "firedrill:")]
    namespace: String,
    /// The authorizer's `revoked_prefix`.
    #[arg(long, default_value = "auth:revoked:")]
    prefix: String,
    /// How long the revocation is kept: at least the token's remaining life.
    #[arg(long, default_value = "400d")]
    keep: String,
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Issue(a) => issue(a),
        Command::Revoke(a) => revoke(a),
        Command::Keygen => {
            let (private, public) = SigningKey::ed25519_pair(rand::random());
            println!("private {private}\npublic  {public}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn issue(a: IssueArgs) -> anyhow::Result<ExitCode> {
    if !["viewer", "operator", "admin"].contains(&a.role.as_str()) {
        bail!("--role {:?}: use viewer, operator or admin", a.role);
    }
    let ttl = humantime::parse_duration(&a.ttl)
        .with_context(|| format!("--ttl {:?}: not a duration (e.g. 1h)", a.ttl))?;
    // An Ed25519 key named on the command line wins over an HMAC secret in the environment.
    let key = match (&a.ed25519_key, &a.hmac_key) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("--ed25519-key: cannot read {}", file.display()))?;
            SigningKey::ed25519_from_base64(&text)
                .map_err(|e| anyhow::anyhow!("--ed25519-key {}: {e}", file.display()))?
        }
        (None, Some(secret)) => SigningKey::hmac(secret.as_bytes())
            .map_err(|e| anyhow::anyhow!("FIREDRILL_TOKEN_KEY: {e}"))?,
        (None, None) => bail!(
            "no signing key: set FIREDRILL_TOKEN_KEY (an HMAC secret) or pass --ed25519-key FILE"
        ),
    };
    let now = firedrill::archive::manifest::unix_now();
    let claims = Claims {
        sub: a.subject,
        role: a.role,
        exp: now + ttl.as_secs() as i64,
        iat: now,
        jti: format!("{:016x}", rand::random::<u64>()),
        alg: String::new(),
    };
    eprintln!(
        "token {} for {} ({}), expires {}",
        claims.jti,
        claims.sub,
        claims.role,
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(claims.exp as u64)
        )
    );
    println!("{}", firedrill_token::issue(claims, &key));
    Ok(ExitCode::SUCCESS)
}

fn revoke(a: RevokeArgs) -> anyhow::Result<ExitCode> {
    if a.id.is_empty()
        || !a
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        bail!(
            "{:?} is not a token id (ids are hex, as `token issue` prints them)",
            a.id
        );
    }
    let keep = humantime::parse_duration(&a.keep)
        .with_context(|| format!("--keep {:?}: not a duration", a.keep))?;
    let shown = firedrill::telemetry::redact::redact_url(&a.redis_url);
    let client = firedrill::servers::redis::client(a.redis_url.as_str())
        .with_context(|| format!("--redis-url {shown}"))?;
    let mut conn = client
        .get_connection_with_timeout(std::time::Duration::from_secs(5))
        .with_context(|| format!("cannot reach redis at {shown}"))?;
    // The authorizer's keys live under the plugin namespace (see caps/keyvalue.rs).
    let key = format!("{}plugin:{}{}", a.namespace, a.prefix, a.id);
    redis::cmd("SET")
        .arg(&key)
        .arg(firedrill::archive::manifest::unix_now())
        .arg("EX")
        .arg(keep.as_secs().max(1))
        .query::<()>(&mut conn)
        .with_context(|| format!("cannot write the revocation to redis at {shown}"))?;
    eprintln!(
        "token {} revoked (kept for {})",
        a.id,
        humantime::format_duration(keep)
    );
    Ok(ExitCode::SUCCESS)
}
