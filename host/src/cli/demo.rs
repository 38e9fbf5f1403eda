//! `firedrill demo`: the product in one command. A throwaway PostgreSQL with
//! three small, realistic databases; a backup into a local store; a fire
//! drill with the built-in checks, the built-in SQL verifier and the example
//! freshness plugin; a short report. Exits 0 only if the drill passed.

use anyhow::{bail, Context};
use firedrill::agent::{JobRequest, JobResult};
use firedrill::config::{Config, DrillTargetConfig, SourceConfig};
use firedrill::jobs::drill::Status;
use firedrill::jobs::status::Kind;
use firedrill::servers::local_pg::LocalCluster;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const SEED: &[(&str, &str)] = &[
    (
        "auth",
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, password_hash text NOT NULL,
                             created_at timestamptz NOT NULL, last_login timestamptz);
         INSERT INTO users (email, password_hash, created_at, last_login)
         SELECT 'user' || g || '@example.com', 'scrypt$' || md5(g::text), now() - (g % 720) * interval '1 hour',
                CASE WHEN g % 3 = 0 THEN NULL ELSE now() - (g % 48) * interval '1 hour' END
         FROM generate_series(1, 2000) g;",
    ),
    (
        "api",
        "CREATE TABLE profiles (id bigserial PRIMARY KEY, user_id bigint NOT NULL UNIQUE, display_name text NOT NULL,
                                bio text, settings jsonb NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL);
         CREATE INDEX profiles_created ON profiles (created_at);
         INSERT INTO profiles (user_id, display_name, bio, settings, created_at)
         SELECT g, 'User ' || g, repeat('Loves backups that restore. ', g % 5),
                jsonb_build_object('theme', CASE WHEN g % 2 = 0 THEN 'dark' ELSE 'light' END), now() - (g % 700) * interval '1 hour'
         FROM generate_series(1, 2000) g;",
    ),
    (
        "admin",
        "CREATE TABLE knowledge_bases (id serial PRIMARY KEY, name text NOT NULL UNIQUE, created_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE documents (id bigserial PRIMARY KEY, knowledge_base_id int NOT NULL REFERENCES knowledge_bases(id),
                                 title text NOT NULL, body text NOT NULL, created_at timestamptz NOT NULL);
         CREATE INDEX documents_kb ON documents (knowledge_base_id);
         INSERT INTO knowledge_bases (name) SELECT 'Runbook ' || g FROM generate_series(1, 20) g;
         INSERT INTO documents (knowledge_base_id, title, body, created_at)
         SELECT 1 + g % 20, 'Procedure ' || g, repeat('Step ' || g || ': check the drill report. ', 20), now() - (g % 300) * interval '1 hour'
         FROM generate_series(1, 500) g;",
    ),
];

pub fn run() -> anyhow::Result<ExitCode> {
    let components = find_components()?;
    let work = std::env::temp_dir().join(format!("firedrill-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = demo(&work, &components);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn demo(work: &Path, components: &Path) -> anyhow::Result<ExitCode> {
    let rt = super::runtime(4)?;
    println!("firedrill demo");
    let cluster = LocalCluster::start(work, &[]).context("starting a throwaway PostgreSQL")?;
    println!(
        "  postgres   a throwaway cluster on a private socket in {}",
        cluster.dir().display()
    );
    let urls = rt.block_on(async {
        let admin = cluster.url("postgres").connect().await?;
        let mut urls = Vec::new();
        for (db, sql) in SEED {
            admin
                .batch_execute(&format!("CREATE DATABASE {db}"))
                .await
                .map_err(|e| anyhow::anyhow!("create {db}: {e}"))?;
            let url = cluster.url(db);
            url.connect()
                .await?
                .batch_execute(sql)
                .await
                .map_err(|e| anyhow::anyhow!("seed {db}: {e}"))?;
            urls.push(url);
        }
        Ok::<_, anyhow::Error>(urls)
    })?;
    println!("  seeded     auth (users), api (profiles), admin (documents, knowledge_bases)");
    // The demo's agent: a local store, the two verifiers as policies, the
    // throwaway cluster as the drill server; its jobs take the one job path.
    let policies = work.join("policies");
    std::fs::create_dir_all(&policies)?;
    let sql = "world = \"verifier\"\n[grants]\nlogging = true\nconfig = true\nsql = { database = \"drill\" }\n";
    for (name, config) in [
        ("verifier_sql", ""),
        ("verifier_freshness", "[config]\ntable = \"profiles\"\ntimestamp-column = \"created_at\"\nmax-age = \"24h\"\n"),
    ] {
        let wasm = components.join(format!("{name}.wasm"));
        // A TOML string, whatever the path holds.
        let wasm = toml::Value::String(wasm.display().to_string());
        let text = format!("wasm = {wasm}\n{sql}{config}");
        std::fs::write(policies.join(format!("{name}.toml")), text)?;
    }
    let store_url = format!("file://{}", work.join("store").display());
    let mut config = Config::adhoc(&store_url, Default::default(), Default::default(), |_| None)?;
    config.policies = Some(policies);
    config.drill_target = DrillTargetConfig::Server(cluster.url("postgres"));
    let mut source = SourceConfig::new("demo", urls, None);
    source.chunk_bytes = 1 << 20;
    config.sources = vec![source];
    let report = rt.block_on(async {
        let agent = firedrill::agent::assemble(config, firedrill::agent::Purpose::Command).await?;
        let wait = std::time::Duration::from_secs(60);
        let req = JobRequest::new(Kind::Backup, "demo", "cli");
        let Some(JobResult::Backup(b)) = agent.run_now(&req, wait).await? else {
            bail!("the backup did not run");
        };
        println!(
            "  backup     {}: {} databases, {} tables, {} rows, {} stored in {:.2}s",
            b.id,
            b.databases.len(),
            b.tables,
            b.rows,
            super::human_bytes(b.bytes),
            b.seconds
        );
        let mut req = JobRequest::new(Kind::Drill, "demo", "cli");
        req.backup = Some(b.id.clone());
        let Some(JobResult::Drill(report)) = agent.run_now(&req, wait).await? else {
            bail!("the drill did not run");
        };
        Ok(report)
    })?;
    let count = |s: Status| report.checks.iter().filter(|c| c.status == s).count();
    println!(
        "  drill      {}: {} checks passed, {} failed, {} skipped; restore {:.2}s (RTO), backup age {}s (RPO)",
        if report.passed { "PASSED" } else { "FAILED" },
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Skip),
        report.rto_seconds,
        report.rpo_seconds
    );
    for c in report
        .checks
        .iter()
        .filter(|c| c.status != Status::Pass || c.by != "built-in" || !c.name.contains("rows."))
    {
        println!(
            "             {:<5} {:<34} {:<18} {}",
            format!("{:?}", c.status).to_lowercase(),
            c.name,
            c.by,
            c.detail
        );
    }
    println!(
        "  report     {} (in the store; the demo removes it on exit)",
        report.report
    );
    drop(cluster);
    if !report.passed {
        bail!(
            "the drill failed: {}",
            report
                .failed_checks()
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The built plugins: $FIREDRILL_COMPONENTS, next to the binary's target
/// directory, or ./target/components.
fn find_components() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("FIREDRILL_COMPONENTS")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe.parent().and_then(Path::parent) {
            candidates.push(target.join("components"));
        }
    }
    candidates.push(PathBuf::from("target/components"));
    candidates
        .into_iter()
        .find(|d| d.join("verifier_sql.wasm").exists() && d.join("verifier_freshness.wasm").exists())
        .context("the demo's plugins are not built: run scripts/demo (or scripts/build-plugins, then set FIREDRILL_COMPONENTS)")
}
