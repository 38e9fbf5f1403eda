//! Google Cloud Storage (gs://) and Azure Blob Storage (azblob://), against
//! real emulators the harness starts: fake-gcs-server and Azurite. For each:
//! backup -> list -> drill -> restore identical -> prune; an object larger
//! than the multipart part size; a run through the fault proxy; and
//! credentials that are missing or wrong fail with a message that names
//! what to set and shows no secret.

use crate::backup_restore::{backup, fingerprint, restore, seed};
use crate::harness::{self, firedrill, output_text, FaultProxy, Faults};
use crate::retention::policies;
use std::sync::atomic::Ordering::Relaxed;

/// One emulated store: its URL, the CLI's environment for it, and the
/// emulator's own view of what is stored (name, size).
struct Target {
    url: String,
    env: Vec<(&'static str, String)>,
    objects: Box<dyn Fn() -> Vec<(String, u64)>>,
}

fn gcs(prefix: &str, via: Option<&FaultProxy>) -> Target {
    let g = harness::gcs();
    let bucket = g.bucket(prefix);
    let port = via.map(|p| p.port).unwrap_or(g.port);
    let b = bucket.clone();
    Target {
        url: format!("gs://{bucket}/pg"),
        env: vec![("STORAGE_EMULATOR_HOST", format!("127.0.0.1:{port}"))],
        objects: Box::new(move || harness::gcs().objects(&b)),
    }
}

fn azure(prefix: &str, via: Option<&FaultProxy>) -> Target {
    let a = harness::azurite();
    let container = a.container(prefix);
    let mut env = a.env();
    if let Some(p) = via {
        env[0].1 = format!("http://127.0.0.1:{}/{}", p.port, a.account);
    }
    let c = container.clone();
    Target {
        url: format!("azblob://{container}/pg"),
        env,
        objects: Box::new(move || harness::azurite().blobs(&c)),
    }
}

fn with_store(t: &Target) -> Vec<(&'static str, String)> {
    let mut env = t.env.clone();
    env.push(("FIREDRILL_STORE", t.url.clone()));
    env
}

fn listed(env: &[(&str, String)]) -> Vec<String> {
    let o = firedrill(&["list", "--json"], env);
    assert!(o.status.success(), "list: {}", output_text(&o));
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap_or_else(|e| panic!("list is not JSON ({e}): {}", output_text(&o)))
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

fn drill(env: &[(&str, String)]) {
    let o = firedrill(
        &[
            "drill",
            "--latest",
            "--drill-url",
            &harness::postgres().url("postgres"),
            "--json",
        ],
        env,
    );
    assert!(o.status.success(), "drill: {}", output_text(&o));
}

fn restored_identical(db: &str, id: &str, env: &[(&str, String)]) {
    let target = format!("{db}_restored");
    let o = restore(
        &[id, "--target-url", &harness::postgres().url(&target)],
        env,
    );
    assert!(o.status.success(), "restore: {}", output_text(&o));
    assert_eq!(fingerprint(db), fingerprint(&target));
}

fn round_trip(t: Target, db: &str) {
    let pg = harness::postgres();
    seed(db);
    let env = with_store(&t);
    let args = ["--database-url", &pg.url(db), "--source", "app"];
    let first = backup(&args, &env)["id"].as_str().unwrap().to_string();
    // Ids sort by their second: two in one second would order by chance.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = backup(&args, &env)["id"].as_str().unwrap().to_string();
    assert_eq!(listed(&env), [first.clone(), second.clone()]);
    let stored = (t.objects)();
    assert!(
        stored
            .iter()
            .any(|(n, _)| n.contains(&format!("pg/app/{first}/")))
            && stored
                .iter()
                .any(|(n, _)| n.contains(&format!("pg/app/{second}/"))),
        "both backups are under the URL's prefix in the emulator: {stored:?}"
    );
    drill(&env);
    restored_identical(db, &second, &env);
    // Keep one: the older backup goes, every object of it.
    let o = firedrill(
        &[
            "prune",
            "--policies",
            policies(1).to_str().unwrap(),
            "--min-age",
            "0s",
            "--json",
        ],
        &env,
    );
    assert!(o.status.success(), "prune: {}", output_text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["deleted"], serde_json::json!([first]), "{r:#}");
    assert_eq!(listed(&env), std::slice::from_ref(&second));
    let stored = (t.objects)();
    assert!(
        !stored.iter().any(|(n, _)| n.contains(&first)),
        "a pruned backup leaves no object: {stored:?}"
    );
    assert!(stored.iter().any(|(n, _)| n.contains(&second)));
}

#[test]
fn gs_backup_list_drill_restore_and_prune() {
    let db = harness::postgres().fresh_database("gs_trip");
    round_trip(gcs("trip", None), &db);
}

#[test]
fn azblob_backup_list_drill_restore_and_prune() {
    let db = harness::postgres().fresh_database("az_trip");
    round_trip(azure("trip", None), &db);
}

/// A table whose one chunk is stored larger than the part size, so the
/// upload goes in parts (GCS: a resumable session; Azure: blocks).
fn multipart_object(t: Target, db: &str) {
    let pg = harness::postgres();
    seed(db);
    // Random hex: zstd gets it to about half, ~16 MiB stored from ~32 MiB.
    pg.client(db)
        .batch_execute(
            "CREATE TABLE big (id int PRIMARY KEY, v text NOT NULL);
             INSERT INTO big SELECT g, md5(random()::text) || md5(random()::text)
             FROM generate_series(1, 500000) g;",
        )
        .unwrap();
    let env = with_store(&t);
    let b = backup(
        &[
            "--database-url",
            &pg.url(db),
            "--source",
            "big",
            "--chunk-size",
            "256MiB",
            "-j",
            "1",
        ],
        &env,
    );
    let id = b["id"].as_str().unwrap().to_string();
    let part = firedrill::archive::store::PART_SIZE as u64;
    let largest = (t.objects)().into_iter().max_by_key(|(_, s)| *s).unwrap();
    assert!(
        largest.1 > 2 * part,
        "an object of more than two parts ({part} bytes each) is stored: {largest:?}"
    );
    drill(&env);
    restored_identical(db, &id, &env);
}

#[test]
fn gs_object_larger_than_a_part() {
    let db = harness::postgres().fresh_database("gs_big");
    multipart_object(gcs("big", None), &db);
}

#[test]
fn azblob_object_larger_than_a_part() {
    let db = harness::postgres().fresh_database("az_big");
    multipart_object(azure("big", None), &db);
}

/// Backup, drill and restore through the fault proxy: every kind of fault
/// lands on some request and the data comes back identical.
fn through_faults(t: Target, proxy: &FaultProxy, db: &str) {
    let pg = harness::postgres();
    seed(db);
    let env = with_store(&t);
    // Smallish chunks: enough objects (a few hundred requests) that every
    // kind of fault lands on some, few enough that the retries stay short.
    let b = backup(
        &[
            "--database-url",
            &pg.url(db),
            "--source",
            "app",
            "--chunk-size",
            "256KiB",
            "-j",
            "2",
        ],
        &env,
    );
    let id = b["id"].as_str().unwrap().to_string();
    drill(&env);
    restored_identical(db, &id, &env);
    let c = &proxy.counts;
    eprintln!("faulty {}: {c:?}", t.url);
    assert!(
        c.errors.load(Relaxed) > 0
            && c.dropped.load(Relaxed) > 0
            && c.cut.load(Relaxed) > 0
            && c.slow.load(Relaxed) > 0,
        "not every fault was exercised: {c:?}"
    );
}

#[test]
fn gs_backups_drills_and_restores_complete_through_a_faulty_store() {
    let proxy = FaultProxy::start_to(harness::gcs().port, Faults::Some);
    let db = harness::postgres().fresh_database("gs_faulty");
    through_faults(gcs("faulty", Some(&proxy)), &proxy, &db);
}

#[test]
fn azblob_backups_drills_and_restores_complete_through_a_faulty_store() {
    let proxy = FaultProxy::start_to(harness::azurite().port, Faults::Some);
    let db = harness::postgres().fresh_database("az_faulty");
    through_faults(azure("faulty", Some(&proxy)), &proxy, &db);
}

/// `firedrill list` on `url` with `env` fails; its output, which must hold
/// every one of `expect` and none of `secrets`.
fn fails_clearly(url: &str, env: &[(&'static str, String)], expect: &[&str], secrets: &[&str]) {
    let mut env = env.to_vec();
    env.push(("FIREDRILL_STORE", url.to_string()));
    let mut cmd = harness::firedrill_command(&["list"], &env);
    // Nothing of this machine's own cloud settings leaks into the case.
    for k in [
        "GOOGLE_APPLICATION_CREDENTIALS",
        "STORAGE_EMULATOR_HOST",
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_STORAGE_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
        "AZURE_STORAGE_SERVICE_ENDPOINT",
    ] {
        if !env.iter().any(|(e, _)| *e == k) {
            cmd.env_remove(k);
        }
    }
    let o = cmd.output().unwrap();
    let text = output_text(&o);
    assert!(
        !o.status.success(),
        "{url} with {expect:?}: succeeded: {text}"
    );
    for e in expect {
        assert!(text.contains(e), "{url}: the message names {e:?}: {text}");
    }
    for s in secrets {
        assert!(
            !text.contains(s),
            "{url}: a secret is in the message: {text}"
        );
    }
}

#[test]
fn gs_without_usable_credentials_fails_naming_what_to_set() {
    let bucket = harness::gcs().bucket("creds");
    let url = format!("gs://{bucket}/pg");
    fails_clearly(
        &url,
        &[],
        &[
            &url,
            "GOOGLE_APPLICATION_CREDENTIALS",
            "STORAGE_EMULATOR_HOST",
        ],
        &[],
    );
    let dir = harness::tempdir("gcs-creds");
    let missing = dir.join("absent.json");
    fails_clearly(
        &url,
        &[(
            "GOOGLE_APPLICATION_CREDENTIALS",
            missing.display().to_string(),
        )],
        &[
            "GOOGLE_APPLICATION_CREDENTIALS",
            "absent.json",
            "cannot read",
        ],
        &[],
    );
    // A key file without its key: named, and nothing of its content shown.
    let secret = "private-bits-that-must-not-show";
    let bad = dir.join("key.json");
    std::fs::write(
        &bad,
        format!("{{\"type\":\"service_account\",\"client_email\":\"\",\"private_key_id\":\"{secret}\"}}"),
    )
    .unwrap();
    fails_clearly(
        &url,
        &[("GOOGLE_APPLICATION_CREDENTIALS", bad.display().to_string())],
        &["key.json", "service_account", "private_key"],
        &[secret],
    );
    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, format!("not json {secret}")).unwrap();
    fails_clearly(
        &url,
        &[(
            "GOOGLE_APPLICATION_CREDENTIALS",
            garbage.display().to_string(),
        )],
        &["garbage.json", "not JSON"],
        &[secret],
    );
}

#[test]
fn azblob_with_missing_or_wrong_credentials_fails_without_showing_a_key() {
    let a = harness::azurite();
    let container = a.container("creds");
    let url = format!("azblob://{container}/pg");
    // Nothing at all.
    fails_clearly(
        &url,
        &[],
        &[
            &url,
            "AZURE_STORAGE_CONNECTION_STRING",
            "AZURE_STORAGE_ACCOUNT",
            "AZURE_STORAGE_KEY",
        ],
        &[],
    );
    // An account without its key.
    let mut env = a.env();
    env.retain(|(k, _)| *k != "AZURE_STORAGE_KEY");
    fails_clearly(&url, &env, &["AZURE_STORAGE_KEY"], &[]);
    // A key that is not one.
    let mut env = a.env();
    env[2].1 = "not a key!".into();
    fails_clearly(
        &url,
        &env,
        &["AZURE_STORAGE_KEY", "base64"],
        &["not a key!"],
    );
    // A well-formed key of the wrong account: Azurite refuses the signature.
    use base64::Engine as _;
    let wrong = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    let mut env = a.env();
    env[2].1 = wrong.clone();
    let refused = "refused these credentials";
    fails_clearly(&url, &env, &[&url, refused], &[&wrong, &a.key]);
    // The same through a connection string, which holds the key too.
    let cs = a.connection_string().replace(&a.key, &wrong);
    fails_clearly(
        &url,
        &[("AZURE_STORAGE_CONNECTION_STRING", cs.clone())],
        &[&url, refused],
        &[&wrong, &a.key, &cs],
    );
    // A connection string without any key.
    fails_clearly(
        &url,
        &[(
            "AZURE_STORAGE_CONNECTION_STRING",
            format!("AccountName={};BlobEndpoint={}", a.account, a.endpoint()),
        )],
        &["AZURE_STORAGE_CONNECTION_STRING", "AccountKey"],
        &[],
    );
    // The right connection string works (the same command, nothing else).
    let mut cmd = harness::firedrill_command(
        &["list", "--json"],
        &[
            ("AZURE_STORAGE_CONNECTION_STRING", a.connection_string()),
            ("FIREDRILL_STORE", url.clone()),
        ],
    );
    let o = cmd.env_remove("AZURE_STORAGE_KEY").output().unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
}

#[test]
fn config_check_accepts_the_cloud_schemes_and_names_what_is_wrong() {
    let a = harness::azurite();
    let dir = harness::tempdir("store-config");
    let check = |url: &str, env: &[(&'static str, String)]| {
        let file = dir.join("firedrill.toml");
        std::fs::write(
            &file,
            format!("[store]\nurl = \"{url}\"\n[[source]]\nname = \"app\"\nurls = [\"postgres://u@db/app\"]\nbackup = \"1h\"\n"),
        )
        .unwrap();
        let mut cmd = harness::firedrill_command(
            &["config", "check", "--config", file.to_str().unwrap()],
            env,
        );
        for k in [
            "STORAGE_EMULATOR_HOST",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "AZURE_STORAGE_KEY",
            "AZURE_STORAGE_ACCOUNT",
            "AZURE_STORAGE_CONNECTION_STRING",
        ] {
            if !env.iter().any(|(e, _)| *e == k) {
                cmd.env_remove(k);
            }
        }
        let o = cmd.output().unwrap();
        (o.status.success(), output_text(&o))
    };
    let emulator = [("STORAGE_EMULATOR_HOST", "127.0.0.1:1".to_string())];
    let (ok, text) = check("gs://backups-1/pg", &emulator);
    assert!(ok, "{text}");
    assert!(text.contains("gs://backups-1/pg"), "{text}");
    let (ok, text) = check("azblob://backups/pg", &a.env());
    assert!(ok, "{text}");
    assert!(!text.contains(&a.key), "{text}");
    for (url, env, expect) in [
        ("gs://", &emulator[..], "no bucket"),
        (
            "gs://Bad_Bucket/pg",
            &emulator[..],
            "not a Google Cloud Storage bucket name",
        ),
        ("gcs://b/pg", &emulator[..], "gs://bucket/prefix"),
        (
            "azblob://Backups/pg",
            &a.env()[..],
            "not an Azure container name",
        ),
        ("azblob:///pg", &a.env()[..], "no container"),
        (
            "azure://backups/pg",
            &a.env()[..],
            "azblob://container/prefix",
        ),
        (
            "gs://backups-1/pg",
            &[][..],
            "GOOGLE_APPLICATION_CREDENTIALS",
        ),
        ("azblob://backups/pg", &[][..], "AZURE_STORAGE_ACCOUNT"),
        ("ftp://host/x", &[][..], "azblob://container/prefix"),
    ] {
        let (ok, text) = check(url, env);
        assert!(!ok, "{url} accepted: {text}");
        assert!(text.contains("store"), "{url}: names the setting: {text}");
        assert!(text.contains(expect), "{url}: {expect:?} in {text}");
    }
}
