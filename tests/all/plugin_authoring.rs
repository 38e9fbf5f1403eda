//! The plugin author's path: `plugin new` for every world builds, passes
//! `plugin check` and decides on its fixture unchanged; a new plugin goes
//! from `plugin new` to serving in a running agent; signed plugins: an
//! unsigned, tampered or stranger-signed plugin is refused when signatures
//! are required.

use crate::harness::{self, firedrill, output_text};
use firedrill::runtime::{PluginTrust, Policies, Runtime, RuntimeOptions, World};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `scripts/build-plugins DIR`, as the scaffold's README says.
fn build(dir: &Path) {
    let o = Command::new(harness::root().join("scripts/build-plugins"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "build failed: {}", output_text(&o));
}

fn new_plugin(parent: &Path, world: &str, name: &str) -> PathBuf {
    let o = firedrill(
        &[
            "plugin",
            "new",
            "--world",
            world,
            "--dir",
            parent.to_str().unwrap(),
            name,
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    parent.join(name)
}

fn wasm_of(dir: &Path) -> PathBuf {
    let name = dir.file_name().unwrap().to_string_lossy().replace('-', "_");
    dir.join(format!("{name}.wasm"))
}

#[test]
fn a_new_plugin_of_every_world_builds_checks_and_decides_on_its_fixture() {
    let parent = harness::tempdir("plugin-new");
    for world in World::ALL {
        let name = format!("my-{}", world.name());
        let dir = new_plugin(&parent, world.name(), &name);
        build(&dir);
        let wasm = wasm_of(&dir);

        let o = firedrill(&["plugin", "check", "--json", wasm.to_str().unwrap()], &[]);
        assert!(o.status.success(), "{name}: {}", output_text(&o));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(report["world"], world.to_string(), "{report}");

        let fixture = dir.join(if world == World::Verifier {
            "fixture.sql"
        } else {
            "fixture.json"
        });
        let policy = dir.join(format!("{name}.toml"));
        let o = firedrill(
            &[
                "plugin",
                "test",
                policy.to_str().unwrap(),
                "--fixture",
                fixture.to_str().unwrap(),
            ],
            &[
                ("MY_AUTHORIZER_TOKEN", "example-token".into()),
                (
                    "FIREDRILL_WEBHOOK_URL",
                    "https://hooks.example.com/firedrill".into(),
                ),
            ],
        );
        let out = output_text(&o);
        let lines: Vec<&str> = out.lines().collect();
        match world {
            World::Verifier => {
                // 1000 orders restored as counted; an empty table under min-rows = 1.
                assert_eq!(o.status.code(), Some(1), "{out}");
                assert!(
                    out.contains("PASS  rows.public.orders") && out.contains("1000 rows"),
                    "{out}"
                );
                assert!(
                    out.contains("FAIL  rows.public.empty_table")
                        && out.contains("fewer than min-rows = 1"),
                    "{out}"
                );
            }
            World::Retention => {
                assert!(o.status.success(), "{out}");
                assert_eq!(
                    lines.iter().filter(|l| l.starts_with("keep ")).count(),
                    7,
                    "{out}"
                );
                assert_eq!(
                    lines.iter().filter(|l| l.starts_with("DELETE ")).count(),
                    3,
                    "{out}"
                );
                assert!(out.contains("10 backups: 3 to delete, 7 to keep"), "{out}");
            }
            World::Authorizer => {
                assert!(o.status.success(), "{out}");
                assert_eq!(
                    lines,
                    [
                        "POST /v1/backups -> deny 401: send Authorization: Bearer <token>",
                        "POST /v1/backups -> deny 401: unknown token",
                        "POST /v1/backups -> allow my-authorizer as operator",
                    ],
                    "{out}"
                );
            }
            World::Redactor => {
                assert!(o.status.success(), "{out}");
                assert_eq!(
                    lines,
                    [
                        "backup of [redacted] done in 12s",
                        "connecting to [redacted]:5432",
                        "a clean line",
                    ],
                    "{out}"
                );
            }
            World::DumpPlanner => {
                assert!(o.status.success(), "{out}");
                for want in [
                    "full         public.orders",
                    "exclude      public.sessions",
                    "schema-only  public.audit_log",
                ] {
                    assert!(lines.contains(&want), "{want:?} in {out}");
                }
            }
            World::Notifier => {
                // Failures and recoveries, never a pass after a pass.
                assert!(o.status.success(), "{out}");
                assert_eq!(
                    lines,
                    [
                        "drill-failed app: 1 message",
                        "-> ops: firedrill: drill failed for source app",
                        "drill-passed app: 1 message",
                        "-> ops: firedrill: drill recovered for source app",
                        "drill-passed app: no messages",
                    ],
                    "{out}"
                );
            }
        }
    }

    // The scaffold refuses to write over a crate, and names what is wrong.
    let o = firedrill(
        &[
            "plugin",
            "new",
            "--world",
            "verifier",
            "--dir",
            parent.to_str().unwrap(),
            "my-verifier",
        ],
        &[],
    );
    assert!(!o.status.success() && output_text(&o).contains("already exists"));
    let o = firedrill(&["plugin", "new", "--world", "verfier", "x"], &[]);
    assert!(
        output_text(&o).contains("choose one of dump-planner, verifier"),
        "{}",
        output_text(&o)
    );
    let o = firedrill(&["plugin", "new", "--world", "verifier", "My_Check"], &[]);
    assert!(
        output_text(&o).contains("lower-case letters"),
        "{}",
        output_text(&o)
    );
    // A fixture for another world is refused, naming the key it lacks.
    let o = firedrill(
        &[
            "plugin",
            "test",
            parent
                .join("my-retention/my-retention.toml")
                .to_str()
                .unwrap(),
            "--fixture",
            parent.join("my-redactor/fixture.json").to_str().unwrap(),
        ],
        &[],
    );
    let out = output_text(&o);
    assert!(!o.status.success() && out.contains("needs `now`"), "{out}");
}

/// The goal: from `plugin new` to the plugin serving in a running agent in
/// minutes of a person's time. The machine's part is timed and printed.
#[test]
fn a_new_authorizer_goes_from_plugin_new_to_serving_in_a_running_agent() {
    let work = harness::tempdir("quickstart");
    let policies = harness::policy_dir(
        &["authorizer-token"],
        &[("auth.toml", "world = \"authorizer\"\nwasm = \"authorizer_token.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\ntoken = \"old-token\"\nprincipal = \"old\"\nrole = \"admin\"\n")],
    );
    let port = harness::free_port();
    let config = work.join("firedrill.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\npolicies = \"{}\"\nreload_debounce = \"100ms\"\n[store]\nurl = \"file://{}\"\n\
             [[source]]\nname = \"app\"\nurls = [\"{}\"]\nbackup = \"cron: 0 3 1 1 *\"\n",
            policies.display(),
            work.join("store").display(),
            harness::postgres().url("postgres"),
        ),
    )
    .unwrap();
    let agent = harness::start_agent(
        &config,
        port,
        &[("GATE_TOKEN", "example-token"), ("RUST_LOG", "warn")],
    );
    let call = |token: &str| {
        harness::http(
            port,
            "GET",
            "/v1/backups",
            &[("authorization", &format!("Bearer {token}"))],
            "",
        )
    };
    assert_eq!(call("old-token").status, 200);
    assert_eq!(call("example-token").status, 401);

    let mut steps = Vec::new();
    let mut step =
        |label: &str, t: Instant| steps.push(format!("{label} {:.1}s", t.elapsed().as_secs_f64()));
    let t = Instant::now();
    let dir = new_plugin(&work, "authorizer", "gate");
    step("new", t);
    let t = Instant::now();
    build(&dir);
    step("build", t);
    let t = Instant::now();
    let wasm = wasm_of(&dir);
    let o = firedrill(&["plugin", "check", wasm.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    let o = firedrill(
        &[
            "plugin",
            "test",
            dir.join("gate.toml").to_str().unwrap(),
            "--fixture",
            dir.join("fixture.json").to_str().unwrap(),
        ],
        &[("GATE_TOKEN", "example-token".into())],
    );
    assert!(
        output_text(&o).contains("allow gate as operator"),
        "{}",
        output_text(&o)
    );
    step("check+test", t);
    // Deploy: copy it in, retire the old authorizer.
    let t = Instant::now();
    std::fs::copy(&wasm, policies.join("gate.wasm")).unwrap();
    std::fs::copy(dir.join("gate.toml"), policies.join("gate.toml")).unwrap();
    std::fs::remove_file(policies.join("auth.toml")).unwrap();
    while call("example-token").status != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the new plugin never served"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    step("deploy->serving", t);
    let denied = call("old-token");
    assert_eq!(denied.status, 401);
    assert!(denied.body.contains("unknown token"), "{}", denied.body);
    eprintln!("plugin new -> serving: {}", steps.join(", "));
    let out = harness::run_agent_for(agent, 0);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("example-token"));
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let o = firedrill(&["keygen", "signing", "--out", key.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    (key, String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn sign(key: &Path, wasm: &Path) {
    let o = firedrill(
        &[
            "plugin",
            "sign",
            "--key",
            key.to_str().unwrap(),
            wasm.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
}

#[test]
fn unsigned_tampered_and_stranger_signed_plugins_are_refused_when_signatures_are_required() {
    let keys = harness::tempdir("plugin-keys");
    let (ours, public) = keygen(&keys, "ours.key");
    let (theirs, stranger) = keygen(&keys, "theirs.key");
    let dir = harness::policy_dir(
        &["authorizer-token"],
        &[("auth.toml", "world = \"authorizer\"\nwasm = \"authorizer_token.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\ntoken = \"t\"\n")],
    );
    sign(&ours, &dir.join("authorizer_token.wasm"));
    let runtime = Runtime::new(RuntimeOptions {
        cache_dir: Some(harness::scratch().join("code-cache")),
        trust: PluginTrust::new(std::slice::from_ref(&public), None).unwrap(),
        ..Default::default()
    })
    .unwrap();
    let policies = Policies::load(&runtime, Some(&dir), Default::default()).unwrap();

    // A new, unsigned plugin: refused, the signed set keeps serving.
    let wasm = dir.join("retention_count.wasm");
    std::fs::copy(harness::component("retention-count"), &wasm).unwrap();
    std::fs::write(
        dir.join("keep.toml"),
        "world = \"retention\"\nwasm = \"retention_count.wasm\"\n[grants]\nconfig = true\nlogging = true\n",
    )
    .unwrap();
    // Each refusal names the file and the reason; the set in force stays.
    let refused = |why: &str| {
        let before = policies.current();
        let e = policies.reload().unwrap_err().to_string();
        assert!(e.contains("keep.toml") && e.contains(why), "{why:?} in {e}");
        assert!(Arc::ptr_eq(&before, &policies.current()));
        assert!(before.get("auth").is_some());
    };
    refused("is not signed and this agent requires signed plugins");
    assert!(policies.current().get("keep").is_none());
    sign(&theirs, &wasm);
    refused(&format!(
        "signed by {stranger}, which is not a trusted plugin key"
    ));
    sign(&ours, &wasm);
    policies.reload().unwrap();
    assert!(policies.current().get("keep").is_some());
    // Changed after signing: refused, even though the signature itself is ours.
    let mut bytes = std::fs::read(&wasm).unwrap();
    bytes.push(0);
    std::fs::write(&wasm, &bytes).unwrap();
    refused("the wasm was changed after signing");

    // The same from the command line and the agent's configuration.
    let o = firedrill(
        &["policy", "check", dir.to_str().unwrap()],
        &[("FIREDRILL_TRUSTED_PLUGIN_KEYS", public.clone())],
    );
    assert!(
        !o.status.success() && output_text(&o).contains("changed after signing"),
        "{}",
        output_text(&o)
    );
    std::fs::remove_file(format!("{}.sig", wasm.display())).unwrap();
    bytes.pop();
    std::fs::write(&wasm, &bytes).unwrap();
    let o = firedrill(
        &[
            "plugin",
            "check",
            dir.join("authorizer_token.wasm").to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        output_text(&o).contains(&format!("signed:   by {public}")),
        "{}",
        output_text(&o)
    );
    let port = harness::free_port();
    let config = keys.join("firedrill.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\npolicies = \"{}\"\ntrusted_plugin_keys = [\"{public}\"]\n[store]\nurl = \"file://{}\"\n\
             [[source]]\nname = \"app\"\nurls = [\"{}\"]\nbackup = \"cron: 0 3 1 1 *\"\n",
            dir.display(),
            keys.join("store").display(),
            harness::postgres().url("postgres"),
        ),
    )
    .unwrap();
    let o = firedrill(&["agent", "--config", config.to_str().unwrap()], &[]);
    let out = output_text(&o);
    assert!(
        !o.status.success() && out.contains("keep.toml") && out.contains("is not signed"),
        "{out}"
    );
    std::fs::write(
        &config,
        format!(
            "[agent]\nrequire_signed_plugins = true\n[store]\nurl = \"file:///tmp/x\"\n\
             [[source]]\nname = \"app\"\nurls = [\"{}\"]\nbackup = \"1h\"\n",
            harness::postgres().url("postgres")
        ),
    )
    .unwrap();
    let o = firedrill(
        &["config", "check", "--config", config.to_str().unwrap()],
        &[],
    );
    assert!(
        output_text(&o).contains("agent.require_signed_plugins"),
        "{}",
        output_text(&o)
    );
}

/// The second-language example: built with componentize-py, loaded under
/// its policy, checking a real throwaway database both ways.
#[test]
fn a_verifier_written_in_python_checks_a_throwaway_database() {
    let example = harness::root().join("examples/verifier-python");
    let o = Command::new(harness::root().join("scripts/build-python-plugin"))
        .arg(&example)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let wasm = example.join("verifier_python.wasm");
    let o = firedrill(&["plugin", "check", "--json", wasm.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["world"], "firedrill:plugin/verifier@0.1.0");
    // Only what its policy grants: no keyvalue.
    let imports = report["imports"].to_string();
    assert!(
        imports.contains("firedrill:plugin/sql") && !imports.contains("keyvalue"),
        "{imports}"
    );

    let dir = harness::tempdir("python-verifier");
    let test = |sql: &str| {
        let fixture = dir.join("fixture.sql");
        std::fs::write(&fixture, sql).unwrap();
        let o = firedrill(
            &[
                "plugin",
                "test",
                example.join("verifier-python.toml").to_str().unwrap(),
                "--fixture",
                fixture.to_str().unwrap(),
                "--database-url",
                &harness::postgres().url("postgres"),
            ],
            &[],
        );
        (o.status.code(), output_text(&o))
    };
    let (code, out) =
        test("CREATE TABLE orders (id int); INSERT INTO orders SELECT generate_series(1, 250);");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("PASS  rows.public.orders") && out.contains("250 rows"),
        "{out}"
    );
    assert!(out.contains("PASS  min_rows.public.orders"), "{out}");
    // The policy's min_rows.public.orders = 1 fails an empty orders table.
    let (code, out) = test("CREATE TABLE orders (id int);");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL  min_rows.public.orders") && out.contains("has 0 rows, minimum 1"),
        "{out}"
    );
}
