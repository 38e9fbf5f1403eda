//! `firedrill plugin test POLICY --fixture FILE`: loads a policy as the
//! agent would (grants, limits, config, signature) and puts one recorded
//! input to its plugin, printing the decisions. A verifier runs against a
//! throwaway database loaded from a `.sql` fixture, on a drill server
//! (`--database-url`) or on a local throwaway cluster.
//!
//! Exit codes: 0 decisions printed; 1 the plugin or its input failed, or a
//! verifier check failed (so a plugin's own CI can run it).

use anyhow::{bail, Context};
use firedrill::caps::sql::{SqlScope, SqlTarget};
use firedrill::caps::types as wit;
use firedrill::caps::CallContext;
use firedrill::runtime::{Plugin, Policy, World};
use firedrill::servers::local_pg::LocalCluster;
use firedrill::servers::pg::{ident, PgUrl, Tool};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The policy file (its wasm is found as the agent would find it).
    policy: PathBuf,
    /// The input: JSON with the world's keys (see `plugin new`'s fixture), or
    /// for a verifier a `.sql` file loaded into a throwaway database.
    #[arg(long)]
    fixture: PathBuf,
    /// Verifier only: the server to create the throwaway database on
    /// (default: a local throwaway cluster from the installed PostgreSQL).
    #[arg(long, env = "FIREDRILL_TEST_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Print the decisions as JSON.
    #[arg(long)]
    json: bool,
}

/// A recorded input; each world reads its own keys.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// retention: the time the plan is made at (seconds since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub now: Option<i64>,
    /// retention: every backup of the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backups: Option<Vec<wit::BackupInfo>>,
    /// authorizer: requests, each decided on its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<Vec<wit::RequestFacts>>,
    /// redactor: one batch of lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<String>>,
    /// dump-planner: the source database as the planner sees it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<wit::DatabaseInfo>,
    /// notifier: events (jobs that ended), each notified on its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<wit::Event>>,
}

impl Fixture {
    /// Checks that the keys `world` needs are there and no others.
    pub fn for_world(&self, world: World) -> Result<(), String> {
        let present: Vec<&str> = [
            ("now", self.now.is_some()),
            ("backups", self.backups.is_some()),
            ("requests", self.requests.is_some()),
            ("lines", self.lines.is_some()),
            ("database", self.database.is_some()),
            ("events", self.events.is_some()),
        ]
        .into_iter()
        .filter(|(_, p)| *p)
        .map(|(k, _)| k)
        .collect();
        let (needed, allowed): (&[&str], &[&str]) = match world {
            World::Retention => (&["now", "backups"], &["now", "backups"]),
            World::Authorizer => (&["requests"], &["requests"]),
            World::Redactor => (&["lines"], &["lines"]),
            World::DumpPlanner => (&["database"], &["database"]),
            World::Notifier => (&["events"], &["events"]),
            World::Verifier => {
                return Err(
                    "a verifier's fixture is a .sql file, loaded into a throwaway database".into(),
                )
            }
        };
        if let Some(missing) = needed.iter().find(|k| !present.contains(k)) {
            return Err(format!(
                "a {} fixture needs `{missing}` (keys: {})",
                world.name(),
                needed.join(", ")
            ));
        }
        if let Some(extra) = present.iter().find(|k| !allowed.contains(k)) {
            return Err(format!(
                "`{extra}` is not an input of a {} plugin (keys: {})",
                world.name(),
                allowed.join(", ")
            ));
        }
        Ok(())
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let policy = Policy::load(&args.policy)?;
    let world = policy.world;
    let runtime = crate::cli::plugin_runtime()?;
    let plugin = Plugin::load(&runtime, policy)?;
    let is_sql = args.fixture.extension().is_some_and(|e| e == "sql");
    if is_sql != (world == World::Verifier) {
        bail!(
            "{}: a verifier's fixture is a .sql file (loaded into a throwaway database); the other worlds take JSON",
            args.fixture.display()
        );
    }
    // A .sql fixture is psql's to read; it must be there before a cluster starts.
    let fixture: Fixture = if is_sql {
        std::fs::metadata(&args.fixture)
            .with_context(|| format!("cannot read the fixture {}", args.fixture.display()))?;
        Fixture::default()
    } else {
        let text = std::fs::read_to_string(&args.fixture)
            .with_context(|| format!("cannot read the fixture {}", args.fixture.display()))?;
        let f: Fixture = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a fixture", args.fixture.display()))?;
        f.for_world(world)
            .map_err(|m| anyhow::anyhow!("{}: {m}", args.fixture.display()))?;
        f
    };
    let ctx = CallContext::default();
    let out = |json: serde_json::Value, text: String| {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
        } else {
            print!("{text}");
        }
    };
    match world {
        World::Retention => {
            let backups = fixture.backups.unwrap_or_default();
            let decisions =
                plugin.plan_retention(&ctx, &backups, fixture.now.unwrap_or_default())?;
            let mut text = String::new();
            for d in &decisions {
                let action = match d.action {
                    wit::Action::Keep => "keep",
                    wit::Action::Delete => "DELETE",
                };
                text += &format!("{action:<7} {:<32} {}\n", d.id, d.reason);
            }
            let deletes = decisions
                .iter()
                .filter(|d| matches!(d.action, wit::Action::Delete))
                .count();
            text += &format!(
                "{} backups: {deletes} to delete, {} to keep (before the host's guards)\n",
                backups.len(),
                decisions.len() - deletes
            );
            out(serde_json::to_value(&decisions)?, text);
        }
        World::Authorizer => {
            let mut decisions = Vec::new();
            let mut text = String::new();
            for r in fixture.requests.unwrap_or_default() {
                let d = plugin.authorize(&ctx, &r)?;
                let shown = match &d {
                    wit::Decision::Allow(g) => {
                        format!("allow {} as {}", g.principal, name(&g.role))
                    }
                    wit::Decision::Deny(r) => format!("deny {}: {}", r.status, r.reason),
                };
                text += &format!("{} {} -> {shown}\n", r.method, r.path);
                decisions.push(d);
            }
            out(serde_json::to_value(&decisions)?, text);
        }
        World::Redactor => {
            let lines = plugin.redact(&ctx, &fixture.lines.unwrap_or_default())?;
            out(serde_json::to_value(&lines)?, lines.join("\n") + "\n");
        }
        World::DumpPlanner => {
            let info = fixture.database.expect("checked by for_world");
            let plan = plugin.plan_dump(&ctx, &info)?;
            let mut text = String::new();
            for t in &info.tables {
                let mode = plan
                    .tables
                    .iter()
                    .find(|p| p.table.schema == t.table.schema && p.table.name == t.table.name)
                    .map(|p| name(&p.mode))
                    .unwrap_or_else(|| "full".into());
                text += &format!("{:<12} {}.{}\n", mode, t.table.schema, t.table.name);
            }
            for n in &plan.notes {
                text += &format!("note: {n}\n");
            }
            out(serde_json::to_value(&plan)?, text);
        }
        World::Notifier => {
            // Printed, never sent: the policy's destinations are not reached.
            let mut sent = Vec::new();
            let mut text = String::new();
            for e in fixture.events.unwrap_or_default() {
                let messages = plugin.notify(&ctx, &e)?;
                let count = match messages.len() {
                    0 => "no messages".to_string(),
                    1 => "1 message".to_string(),
                    n => format!("{n} messages"),
                };
                text += &format!("{} {}: {count}\n", name(&e.kind), e.source);
                for m in &messages {
                    text += &format!("-> {}: {}\n", m.destination, m.subject);
                }
                sent.push(messages);
            }
            out(serde_json::to_value(&sent)?, text);
        }
        World::Verifier => {
            let checks = verify(&plugin, &args)?;
            let mut text = String::new();
            for c in &checks {
                let status = name(&c.status).to_uppercase();
                text += &format!("{status:<5} {:<32} {}\n", c.name, c.detail);
            }
            out(serde_json::to_value(&checks)?, text);
            if checks
                .iter()
                .any(|c| matches!(c.status, wit::CheckStatus::Fail))
            {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A WIT enum case as the WIT spells it: `SchemaOnly` -> `schema-only`.
fn name<T: Serialize>(v: &T) -> String {
    let camel = serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Runs a verifier against a throwaway database loaded from the fixture,
/// dropped afterwards whatever happens.
fn verify(plugin: &Plugin, args: &Args) -> anyhow::Result<Vec<wit::CheckResult>> {
    let mut cluster = None;
    let server = match &args.database_url {
        Some(u) => PgUrl::parse(u)?,
        None => {
            let c = LocalCluster::start(&std::env::temp_dir(), &[])?;
            let url = c.url("postgres");
            cluster = Some(c);
            url
        }
    };
    let db = format!("firedrill_test_{}", hex::encode(rand::random::<[u8; 4]>()));
    let url = server.with_database(&db);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let admin = rt.block_on(server.with_database("postgres").connect())?;
    rt.block_on(admin.batch_execute(&format!("CREATE DATABASE {}", ident(&db))))
        .with_context(|| {
            format!(
                "cannot create the throwaway database on {}",
                server.redacted()
            )
        })?;
    // The verifier reads as a role of its own, as in a drill.
    let mut role = None;
    let result = (|| {
        let tables = rt.block_on(load(&url, &args.fixture))?;
        let r = rt.block_on(firedrill::jobs::drill::role::create(&url))?;
        let role_url = r.url.clone();
        role = Some(r);
        let now = firedrill::archive::manifest::unix_now();
        let drill = wit::DrillContext {
            backup_id: "plugin-test".into(),
            source: "plugin-test".into(),
            database: db.clone(),
            backup_created: now,
            drill_started: now,
            tables,
            previous: None,
            labels: vec![],
        };
        let ctx = CallContext {
            sql: Some(SqlTarget {
                scope: SqlScope::Drill,
                url: role_url.secret_url().to_string(),
            }),
            ..Default::default()
        };
        Ok(plugin.verify(&ctx, &drill)?)
    })();
    let dropped = rt.block_on(admin.batch_execute(&format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        ident(&db)
    )));
    if let Err(e) = dropped {
        eprintln!("firedrill: could not drop the throwaway database {db}: {e}");
    } else if let Some(r) = role {
        if let Err(e) = rt.block_on(firedrill::jobs::drill::role::drop(&server, &r.name)) {
            eprintln!(
                "firedrill: could not drop the throwaway role {}: {e}",
                r.name
            );
        }
    }
    if let Some(mut c) = cluster {
        c.stop();
    }
    result
}

/// Loads `file` with psql and returns every table with its row count (the
/// expectations a drill would take from the manifest).
async fn load(url: &PgUrl, file: &Path) -> anyhow::Result<Vec<wit::TableExpectation>> {
    let mut cmd = url.command("psql")?;
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(file)
        .stdout(std::process::Stdio::null());
    Tool::spawn(cmd, "psql")?
        .wait(&format!("loading {}: ", file.display()))
        .await?;
    let c = url.connect().await?;
    let rows = c
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2",
            &[],
        )
        .await?;
    let mut tables = Vec::new();
    for r in rows {
        let (schema, name): (String, String) = (r.get(0), r.get(1));
        let n: i64 = c
            .query_one(
                &format!("SELECT count(*) FROM {}.{}", ident(&schema), ident(&name)),
                &[],
            )
            .await?
            .get(0);
        tables.push(wit::TableExpectation {
            table: wit::TableRef { schema, name },
            rows: n as u64,
        });
    }
    Ok(tables)
}
