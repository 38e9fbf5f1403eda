//! Retention: the built-in plugins decide, the host guards, prune deletes
//! manifest first.

use crate::backup_restore::{backup, backup_id, seeded};
use crate::harness::{self, firedrill, output_text};
use firedrill::caps::types::{Action, BackupInfo, BackupKind, DrillStatus};
use firedrill::caps::CallContext;

const DAY: i64 = 86_400;
/// 2026-11-22 12:00 UTC, a Sunday.
const NOW: i64 = 20_779 * DAY + 12 * 3600;

fn info(id: &str, created: i64) -> BackupInfo {
    BackupInfo {
        id: id.into(),
        source: "app".into(),
        kind: BackupKind::Postgres,
        created,
        size_bytes: 1,
        complete: true,
        drill: DrillStatus::Never,
        last_drill: None,
        labels: vec![],
    }
}

fn kept(plugin: &firedrill::runtime::Plugin, backups: &[BackupInfo]) -> Vec<String> {
    let plan = plugin
        .plan_retention(&CallContext::default(), backups, NOW)
        .unwrap();
    assert_eq!(plan.len(), backups.len());
    let mut k: Vec<String> = plan
        .into_iter()
        .filter(|d| d.action == Action::Keep)
        .map(|d| d.id)
        .collect();
    k.sort();
    k
}

#[test]
fn gfs_keeps_the_newest_of_each_day_week_and_month() {
    let p = harness::load(
        "retention-gfs",
        "world = \"retention\"\nwasm = \"retention_gfs.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\ndaily = 3\nweekly = 2\nmonthly = 3\nyearly = 0",
    )
    .unwrap();
    // Two backups a day (02:00 and 14:00) for 100 days back from today.
    let mut backups = Vec::new();
    for d in 0..100 {
        for h in [2, 14] {
            let t = (20_779 - d) * DAY + h * 3600;
            if t <= NOW {
                backups.push(info(&format!("d{:03}h{h:02}", d), t));
            }
        }
    }
    let k = kept(&p, &backups);
    let expected = [
        "d000h02", // today: daily, weekly (this week), monthly (November)
        "d001h14", // Saturday: daily
        "d002h14", // Friday: daily
        "d007h14", // Sunday 2026-11-15: the newest of the week before (weekly 2)
        "d022h14", // 2026-10-31: the newest of October (monthly)
        "d053h14", // 2026-09-30: the newest of September (monthly 3)
    ];
    assert_eq!(k, expected, "{k:?}");
}

#[test]
fn age_keeps_what_is_younger_than_its_days() {
    let p = harness::load("retention-age", "world = \"retention\"\nwasm = \"retention_age.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\ndays = 7").unwrap();
    let backups = vec![
        info("new", NOW - DAY),
        info("edge", NOW - 7 * DAY),
        info("old", NOW - 8 * DAY),
    ];
    assert_eq!(kept(&p, &backups), ["edge", "new"]);
}

pub fn policies(keep: u32) -> std::path::PathBuf {
    harness::policy_dir(
        &["retention-count"],
        &[("keep.toml", &format!("world = \"retention\"\nwasm = \"retention_count.wasm\"\n[grants]\nlogging = true\nconfig = true\n[config]\nkeep = {keep}"))],
    )
}

/// `firedrill prune --json` of `store` under a keep-the-newest-`keep`
/// policy, with `extra` flags; it must succeed: its report.
pub fn prune(store: &str, keep: u32, extra: &[&str]) -> serde_json::Value {
    let policies = policies(keep);
    let mut args = vec![
        "prune",
        "--json",
        "--store",
        store,
        "--policies",
        policies.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = firedrill(&args, &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn prune_follows_the_plugin_within_the_guards() {
    let pg = harness::postgres();
    let (db, store, dir) = seeded("pruned");
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            backup(
                &[
                    "--database-url",
                    &pg.url(&db),
                    "--store",
                    &store,
                    "--source",
                    "p",
                    "--no-globals",
                ],
                &[],
            )["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    // The second one is the newest with a passed drill.
    let o = firedrill(
        &[
            "drill",
            "--store",
            &store,
            &ids[1],
            "--drill-url",
            &pg.url("postgres"),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let keep1 = policies(1);
    let prune = |extra: &[&str]| {
        let mut args = vec![
            "prune",
            "--json",
            "--store",
            &store,
            "--policies",
            keep1.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = firedrill(&args, &[]);
        assert!(o.status.success(), "{}", output_text(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let decision = |r: &serde_json::Value, id: &str| {
        r["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .unwrap()
            .clone()
    };
    // Too young for anything to go.
    let r = prune(&["--dry-run"]);
    assert!(
        r["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["delete"] == false),
        "{r:#}"
    );
    assert!(
        decision(&r, &ids[0])["reason"]
            .as_str()
            .unwrap()
            .contains("minimum age"),
        "{r:#}"
    );
    // Without the age guard: the plugin keeps the newest, the host keeps the drilled one.
    let r = prune(&["--dry-run", "--min-age", "0s"]);
    let deleting: Vec<&str> = r["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["delete"] == true)
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(deleting, [ids[0].as_str(), ids[2].as_str()], "{r:#}");
    assert!(
        decision(&r, &ids[1])["reason"]
            .as_str()
            .unwrap()
            .contains("passed a drill"),
        "{r:#}"
    );
    assert_eq!(decision(&r, &ids[1])["guarded"], true);
    assert!(
        dir.join("p").join(&ids[0]).join("manifest.json").exists(),
        "a dry run deletes nothing"
    );
    // At most one deletion per run.
    let r = prune(&["--min-age", "0s", "--max-deletions", "1"]);
    assert_eq!(r["deleted"], serde_json::json!([ids[0]]));
    assert!(
        decision(&r, &ids[2])["reason"]
            .as_str()
            .unwrap()
            .contains("at most 1 deletions"),
        "{r:#}"
    );
    assert!(!dir.join("p").join(&ids[0]).exists(), "deleted entirely");
    let r = prune(&["--min-age", "0s"]);
    assert_eq!(r["deleted"], serde_json::json!([ids[2]]));
    let o = firedrill(&["list", "--store", &store, "--json"], &[]);
    let listed: Vec<String> = serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, [ids[1].clone(), ids[3].clone()]);
}

#[test]
fn prune_leaves_backups_in_progress_and_clears_leftovers() {
    let pg = harness::postgres();
    let (db, store, dir) = seeded("leftover");
    let id = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "l",
            "--no-globals",
        ],
        &[],
    );
    std::fs::remove_file(dir.join("l").join(&id).join("manifest.json")).unwrap();
    let run = |abandon: &str| prune(&store, 5, &["--abandon-after", abandon]);
    let r = run("1h");
    assert_eq!(r["decisions"][0]["delete"], false);
    assert!(
        r["decisions"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("may be in progress"),
        "{r:#}"
    );
    let r = run("0s");
    assert_eq!(r["deleted"], serde_json::json!([id]));
    assert!(!dir.join("l").join(&id).exists());
}
