//! `firedrill plugin new --world WORLD NAME`: a plugin crate that builds
//! as it is (`scripts/build-plugins DIR`, or cargo with the wasm32-wasip2
//! target), passes `firedrill plugin check`, and comes with its policy file
//! and a fixture for `firedrill plugin test`.
//!
//! The crate carries its own copy of the WIT (embedded in this binary), so
//! it builds anywhere, not only inside the firedrill repository.

use super::fixture::Fixture;
use anyhow::{bail, Context};
use firedrill::caps::types as wit;
use firedrill::runtime::World;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The decision the plugin makes: verifier, retention, authorizer, redactor, dump-planner or notifier.
    #[arg(long)]
    world: String,
    /// The crate's name (lower case, digits and '-'); also the policy's name.
    name: String,
    /// Where to create the crate's directory (default: here).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

/// The WIT package, as this binary was built against it.
const WIT: [(&str, &str); 6] = [
    ("wit/worlds.wit", include_str!("../../../../wit/worlds.wit")),
    ("wit/types.wit", include_str!("../../../../wit/types.wit")),
    ("wit/sql.wit", include_str!("../../../../wit/sql.wit")),
    (
        "wit/deps/config/store.wit",
        include_str!("../../../../wit/deps/config/store.wit"),
    ),
    (
        "wit/deps/keyvalue/keyvalue.wit",
        include_str!("../../../../wit/deps/keyvalue/keyvalue.wit"),
    ),
    (
        "wit/deps/logging/logging.wit",
        include_str!("../../../../wit/deps/logging/logging.wit"),
    ),
];

const CARGO_TOML: &str = include_str!("templates/Cargo.toml.in");

/// The version of wit-bindgen the built-in plugins use: known to produce
/// components this host loads.
const WIT_BINDGEN: &str = "0.63";

fn source(world: World) -> &'static str {
    match world {
        World::Verifier => include_str!("templates/verifier.rs"),
        World::Retention => include_str!("templates/retention.rs"),
        World::Authorizer => include_str!("templates/authorizer.rs"),
        World::Redactor => include_str!("templates/redactor.rs"),
        World::DumpPlanner => include_str!("templates/dump-planner.rs"),
        World::Notifier => include_str!("templates/notifier.rs"),
    }
}

/// The policy's grants and config: exactly what the scaffolded code uses.
fn policy(world: World, name: &str, wasm: &str) -> String {
    let env = token_env(name);
    let body = match world {
        World::Verifier => "[grants]\nlogging = true\nconfig = true\nsql = { database = \"drill\" }   # read-only, the drill database only\n\n[config]\nmin-rows = 1\n".to_string(),
        World::Retention => "[grants]\nconfig = true\n\n[config]\nkeep = 7\nmin-days = 1\n".to_string(),
        World::Authorizer => format!("[grants]\nconfig = true\n\n[config]\n# From the agent's environment: the token never sits in this file.\ntoken = {{ env = \"{env}\" }}\nprincipal = \"{name}\"\nrole = \"operator\"\n"),
        World::Redactor => "[grants]\nconfig = true\n\n[config]\nwords = \"example-customer, db.internal.example\"\n".to_string(),
        World::DumpPlanner => "[grants]\nlogging = true\nconfig = true\n\n[config]\nexclude = \"public.sessions\"\nschema-only = \"public.audit_log\"\n".to_string(),
        World::Notifier => format!("[grants]\nlogging = true\nconfig = true\n\n[config]\ndestinations = \"ops\"\n\n# Where each destination is: the plugin names it, the host delivers.\n# From the agent's environment: the URL never sits in this file.\n[destinations.ops]\nkind = \"webhook\"\nurl = {{ env = \"{WEBHOOK_ENV}\" }}\n"),
    };
    format!(
        "# {name}: a {} plugin. To deploy, copy this file and {wasm} into the\n# agent's policies directory; the agent loads them within a second.\nworld = \"{}\"\nwasm = \"{wasm}\"\n\n{body}",
        world.name(),
        world.name()
    )
}

/// An input for `firedrill plugin test` that shows the plugin deciding
/// both ways.
fn fixture(world: World) -> (&'static str, String) {
    const DAY: i64 = 86_400;
    let now = 1_795_000_000; // 2026-11-18T06:26:40Z
    let json = |f: Fixture| serde_json::to_string_pretty(&f).expect("fixtures serialise");
    match world {
        World::Verifier => (
            "fixture.sql",
            "-- `firedrill plugin test` loads this into a throwaway database and\n-- runs the verifier against it.\nCREATE TABLE orders (id bigint PRIMARY KEY, total numeric NOT NULL, created_at timestamptz NOT NULL DEFAULT now());\nINSERT INTO orders (id, total) SELECT i, i * 1.5 FROM generate_series(1, 1000) AS i;\nCREATE TABLE empty_table (id int);\n".into(),
        ),
        World::Retention => (
            "fixture.json",
            json(Fixture {
                now: Some(now),
                backups: Some(
                    (0..10)
                        .map(|d| wit::BackupInfo {
                            id: format!("202611{:02}T030000Z-demo{d:02}", 18 - d),
                            source: "app".into(),
                            kind: wit::BackupKind::Postgres,
                            created: now - d * DAY - 3 * 3600,
                            size_bytes: 50 << 20,
                            complete: true,
                            drill: wit::DrillStatus::Passed,
                            last_drill: Some(now - d * DAY),
                            labels: vec![],
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
        ),
        World::Authorizer => {
            let request = |auth: Option<&str>| wit::RequestFacts {
                method: "POST".into(),
                path: "/v1/backups".into(),
                query: None,
                headers: auth
                    .map(|v| wit::Header {
                        name: "authorization".into(),
                        value: v.into(),
                    })
                    .into_iter()
                    .collect(),
                peer: "10.0.0.7".into(),
                time: now,
                request_id: "fixture".into(),
            };
            (
                "fixture.json",
                json(Fixture {
                    requests: Some(vec![
                        request(None),
                        request(Some("Bearer wrong-token")),
                        request(Some("Bearer example-token")),
                    ]),
                    ..Default::default()
                }),
            )
        }
        World::Redactor => (
            "fixture.json",
            json(Fixture {
                lines: Some(vec![
                    "backup of example-customer done in 12s".into(),
                    "connecting to db.internal.example:5432".into(),
                    "a clean line".into(),
                ]),
                ..Default::default()
            }),
        ),
        World::DumpPlanner => {
            let table = |name: &str, rows: i64| wit::TableInfo {
                table: wit::TableRef {
                    schema: "public".into(),
                    name: name.into(),
                },
                estimated_rows: rows,
                size_bytes: rows as u64 * 100,
                columns: vec![wit::ColumnInfo {
                    name: "id".into(),
                    type_name: "bigint".into(),
                    nullable: false,
                }],
            };
            (
                "fixture.json",
                json(Fixture {
                    database: Some(wit::DatabaseInfo {
                        source: "app".into(),
                        database: "app".into(),
                        server_version: "16.4".into(),
                        schemas: vec!["public".into()],
                        tables: vec![
                            table("orders", 120_000),
                            table("sessions", 900_000),
                            table("audit_log", 4_000_000),
                        ],
                        labels: vec![],
                    }),
                    ..Default::default()
                }),
            )
        }
        World::Notifier => {
            let drill = |kind: wit::EventKind,
                         detail: &str,
                         previous_failed: bool,
                         failed_checks: &[&str]| wit::Event {
                kind,
                source: "app".into(),
                backup_id: Some("20261118T030000Z-demo00".into()),
                detail: detail.into(),
                time: now,
                previous_failed: Some(previous_failed),
                failed_checks: failed_checks.iter().map(|c| c.to_string()).collect(),
            };
            (
                "fixture.json",
                json(Fixture {
                    events: Some(vec![
                        drill(
                            wit::EventKind::DrillFailed,
                            "1 of 3 checks failed",
                            false,
                            &["rows.public.orders: 0 rows restored, 1000 at backup time"],
                        ),
                        drill(wit::EventKind::DrillPassed, "3 checks passed", true, &[]),
                        drill(wit::EventKind::DrillPassed, "3 checks passed", false, &[]),
                    ]),
                    ..Default::default()
                }),
            )
        }
    }
}

/// The environment variable a scaffolded notifier's destination reads its URL from.
const WEBHOOK_ENV: &str = "FIREDRILL_WEBHOOK_URL";

/// The environment variable a scaffolded authorizer reads its token from.
fn token_env(name: &str) -> String {
    format!("{}_TOKEN", name.to_ascii_uppercase().replace('-', "_"))
}

fn readme(world: World, name: &str, wasm: &str, fixture: &str) -> String {
    let env = token_env(name);
    let env_note = match world {
        World::Authorizer => format!("\nThe policy reads its token from `{env}`: set it for `plugin test` and for the agent\n(`{env}=example-token` matches the fixture).\n"),
        World::Notifier => format!("\nThe policy reads its webhook's URL from `{WEBHOOK_ENV}`: set it for `plugin test`\n(any http(s) URL: the test prints the messages, it sends nothing) and for the agent.\n"),
        _ => String::new(),
    };
    format!(
        "# {name}\n\nA firedrill `{world}` plugin, made by `firedrill plugin new`.\n\n\
        | file | what |\n|---|---|\n| `src/lib.rs` | the plugin: edit it |\n| `{name}.toml` | its policy: grants, limits, config |\n| `{fixture}` | an input for `firedrill plugin test` |\n| `wit/` | the plugin contract (firedrill:plugin@0.1.0) |\n\n\
        ## Build, check, try, deploy\n\n```sh\n\
        # with rustup: rustup target add wasm32-wasip2\n\
        cargo build --release --target wasm32-wasip2\n\
        cp target/wasm32-wasip2/release/{wasm} .\n\
        # or, in a firedrill checkout: scripts/build-plugins path/to/{name}\n\n\
        firedrill plugin check {wasm}\n\
        firedrill plugin test {name}.toml --fixture {fixture}\n\
        cp {name}.toml {wasm} /etc/firedrill/policies/   # the agent reloads by itself\n```\n{env_note}\n\
        To require signed plugins, sign the build: `firedrill plugin sign --key signing.key {wasm}`\n\
        and copy `{wasm}.sig` along.\n",
        world = world.name(),
    )
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(world) = World::parse(&args.world) else {
        let names: Vec<&str> = World::ALL.iter().map(|w| w.name()).collect();
        bail!(
            "unknown world {:?}; choose one of {}",
            args.world,
            names.join(", ")
        );
    };
    let name = &args.name;
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!("{name:?} is not a plugin name: use lower-case letters, digits and '-', starting with a letter (e.g. orders-check)");
    }
    let dir = args.dir.join(name);
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} already exists and is not empty: choose another name or --dir",
            dir.display()
        );
    }
    let wasm = format!("{}.wasm", name.replace('-', "_"));
    let (fixture_name, fixture_text) = fixture(world);
    let files: Vec<(String, String)> = WIT
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .chain([
            (
                "Cargo.toml".into(),
                CARGO_TOML
                    .replace("@NAME@", name)
                    .replace("@WIT_BINDGEN@", WIT_BINDGEN),
            ),
            ("src/lib.rs".into(), source(world).replace("@NAME@", name)),
            (format!("{name}.toml"), policy(world, name, &wasm)),
            (fixture_name.into(), fixture_text),
            ("README.md".into(), readme(world, name, &wasm, fixture_name)),
            (".gitignore".into(), "/target\n/Cargo.lock\n*.wasm\n".into()),
        ])
        .collect();
    for (path, text) in &files {
        write(&dir.join(path), text)?;
    }
    println!("created {} ({} plugin)", dir.display(), world.name());
    println!("next:");
    println!(
        "  scripts/build-plugins {}     # or: cargo build --release --target wasm32-wasip2",
        dir.display()
    );
    println!("  firedrill plugin check {}", dir.join(&wasm).display());
    println!(
        "  firedrill plugin test {} --fixture {}",
        dir.join(format!("{name}.toml")).display(),
        dir.join(fixture_name).display()
    );
    Ok(ExitCode::SUCCESS)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_world_has_a_policy_that_loads_and_a_fixture_that_parses() {
        for world in World::ALL {
            let text = policy(world, "my-plugin", "my_plugin.wasm");
            // A destination's URL must be one; any other value will do.
            let p =
                firedrill::runtime::Policy::parse(Path::new("/x/my-plugin.toml"), &text, |var| {
                    Some(if var == WEBHOOK_ENV {
                        "https://hooks.example.com/t".into()
                    } else {
                        "t".into()
                    })
                })
                .unwrap_or_else(|e| panic!("{world:?}: {e}\n{text}"));
            assert_eq!(p.world, world);
            let (name, body) = fixture(world);
            if world == World::Verifier {
                assert!(name.ends_with(".sql") && body.contains("CREATE TABLE"));
            } else {
                let f: Fixture = serde_json::from_str(&body).unwrap();
                f.for_world(world)
                    .unwrap_or_else(|e| panic!("{world:?}: {e}: {body}"));
            }
        }
    }
}
