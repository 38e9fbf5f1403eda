//! Client-side encryption (age) and signed manifests: a node backs up with
//! public keys only; drills and restores need an identity; objects are plain
//! age payloads that the age CLI decrypts; rekey rotates recipients by
//! rewriting headers only, survives being killed, and leaves the data
//! byte-for-byte alone; tampering and wrong keys are refused before any data
//! is restored.

use crate::backup_restore::{backup_id, fingerprint, restore, restore_by_hand, seeded};
use crate::harness::{self, firedrill, output_text};
use firedrill::archive::{self as arch, KeySettings, Keys, Store};
use rand::Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Key files for one test: age identities `a`, `b`, `c` (a made by the
/// age CLI's age-keygen, the others by `firedrill keygen`), and a signing key.
struct TestKeys {
    dir: PathBuf,
    public: BTreeMap<&'static str, String>,
}

impl TestKeys {
    fn new() -> TestKeys {
        let dir = harness::tempdir("keys");
        let mut public = BTreeMap::new();
        let a = dir.join("a.key");
        let o = std::process::Command::new("age-keygen")
            .arg("-o")
            .arg(&a)
            .output()
            .expect("age-keygen (scripts/setup installs age)");
        assert!(o.status.success(), "{}", output_text(&o));
        let o = std::process::Command::new("age-keygen")
            .arg("-y")
            .arg(&a)
            .output()
            .unwrap();
        public.insert("a", String::from_utf8(o.stdout).unwrap().trim().to_string());
        for name in ["b", "c"] {
            let path = dir.join(format!("{name}.key"));
            let o = firedrill(&["keygen", "age", "--out", path.to_str().unwrap()], &[]);
            assert!(o.status.success(), "{}", output_text(&o));
            public.insert(
                name,
                String::from_utf8(o.stdout).unwrap().trim().to_string(),
            );
        }
        let sk = dir.join("signing.key");
        let o = firedrill(&["keygen", "signing", "--out", sk.to_str().unwrap()], &[]);
        assert!(o.status.success(), "{}", output_text(&o));
        public.insert(
            "signing",
            String::from_utf8(o.stdout).unwrap().trim().to_string(),
        );
        TestKeys { dir, public }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(format!("{name}.key")).display().to_string()
    }

    fn public(&self, name: &str) -> &str {
        &self.public[name]
    }

    /// Every private key's text: none may show up in output or the store.
    fn secrets(&self) -> Vec<String> {
        ["a", "b", "c", "signing"]
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(self.file(n)).unwrap();
                text.lines()
                    .find(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .unwrap()
                    .trim()
                    .to_string()
            })
            .collect()
    }

    /// A store opened as a reader holding `identities` and trusting the signing key.
    fn reader(&self, store: &str, identities: &[&str]) -> Store {
        let keys = Keys::load(&KeySettings {
            identity_files: identities.iter().map(|n| self.file(n).into()).collect(),
            verify_keys: vec![self.public("signing").to_string()],
            ..Default::default()
        })
        .unwrap();
        Store::open(store, &Default::default())
            .unwrap()
            .with_keys(keys)
    }
}

fn assert_no_secrets(keys: &TestKeys, texts: &[&str], store_dir: &Path) {
    let stored = read_tree(store_dir);
    for secret in keys.secrets() {
        for t in texts {
            assert!(
                !t.contains(&secret),
                "a private key leaked into output:\n{t}"
            );
        }
        for (path, bytes) in &stored {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a private key is stored in {path}"
            );
        }
    }
}

/// Every file under `dir`, by path relative to it.
fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn drill(store: &str, id: &str, keys: &[&str]) -> (bool, serde_json::Value, String) {
    let pg = harness::postgres();
    let mut args = vec!["drill", "--json", "--store", store, id, "--drill-url"];
    let url = pg.url("postgres");
    args.push(&url);
    args.extend_from_slice(keys);
    let o = firedrill(&args, &[]);
    let text = output_text(&o);
    let report = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::json!({}));
    (o.status.success(), report, text)
}

fn database_exists(name: &str) -> bool {
    harness::postgres()
        .client("postgres")
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .unwrap()
        .get::<_, i64>(0)
        == 1
}

#[test]
fn encrypted_backups_need_public_keys_to_write_and_an_identity_to_read() {
    let pg = harness::postgres();
    let keys = TestKeys::new();
    let (db, store, dir) = seeded("enc");
    // The node holds public keys only: an operator's and an escrow key.
    let id = backup_id(
        &[
            "--database-url",
            &pg.url(&db),
            "--store",
            &store,
            "--source",
            "e",
            "--chunk-size",
            "256KiB",
            "--recipient",
            keys.public("a"),
            "--recipient",
            keys.public("b"),
            "--signing-key",
            &keys.file("signing"),
        ],
        &[],
    );
    let bdir = dir.join("e").join(&id);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bdir.join("manifest.json")).unwrap()).unwrap();
    let enc = &m["encryption"];
    assert_eq!(enc["scheme"], "age-v1");
    assert_eq!(enc["header"]["path"], "keys/1.age");
    let fps: Vec<&str> = enc["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(fps.len(), 2);
    assert!(fps.iter().all(|f| f.starts_with("age:")), "{fps:?}");
    assert_eq!(m["signature"]["algorithm"], "ed25519");
    assert_eq!(m["signature"]["key"], keys.public("signing"));

    // Nothing but the header and the manifest is readable: every other
    // object is an age payload, not a zstd frame.
    let header = std::fs::read(bdir.join("keys/1.age")).unwrap();
    assert!(header.starts_with(b"age-encryption.org/v1\n-> X25519 "));
    let objects = read_tree(&bdir);
    let data: Vec<&String> = objects.keys().filter(|p| p.ends_with(".zst")).collect();
    assert!(data.len() > 5, "{:?}", objects.keys());
    for p in &data {
        assert!(
            !objects[*p].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
            "{p} is stored unencrypted"
        );
    }

    // Standard tools read it: header + object is an age file (identity made
    // by age-keygen), and inside is the zstd-compressed COPY text.
    let chunk = data
        .iter()
        .find(|p| p.contains("public.events"))
        .expect("a chunk of events");
    let combined = [header.clone(), objects[*chunk].clone()].concat();
    let age_file = harness::tempdir("agefile").join("chunk.age");
    std::fs::write(&age_file, &combined).unwrap();
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "age -d -i {} {} | zstd -dc",
            keys.file("a"),
            age_file.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    // events row 1's payload is md5('1') repeated.
    assert!(
        text.contains("c4ca4238a0b923820dcc509a6f75849b"),
        "{}",
        &text[..200.min(text.len())]
    );

    // No identity: the drill stops before restoring anything, and says what is needed.
    let (ok, report, out_none) = drill(&store, &id, &[]);
    assert!(!ok);
    let err = report["error"].as_str().unwrap_or(&out_none).to_string();
    assert!(
        err.contains("is encrypted") && err.contains("--identity"),
        "{err}"
    );
    assert!(report["databases"].as_array().is_none_or(|d| d.is_empty()));

    // The escrow identity drills it, with the signature checked.
    let (ok, report, out_ok) = drill(
        &store,
        &id,
        &[
            "--identity",
            &keys.file("b"),
            "--verify-key",
            keys.public("signing"),
        ],
    );
    assert!(ok, "{out_ok}");
    let checks: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        checks.contains(&"manifest.signature") && checks.contains(&"archive.encryption"),
        "{checks:?}"
    );

    // The operator's identity restores it, identical to the source.
    let restore_as = |key: &str, target: &str| {
        let (url, identity) = (pg.url(target), keys.file(key));
        restore(
            &[
                &id,
                "--store",
                &store,
                "--target-url",
                &url,
                "--identity",
                &identity,
            ],
            &[],
        )
    };
    let target = pg.fresh_database("enc_restored");
    let o = restore_as("a", &target);
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(fingerprint(&target), fingerprint(&db));

    // By hand, with the stock age and zstd CLIs (docs/RESTORE-BY-HAND.md).
    let by_hand = pg.fresh_database("enc_by_hand");
    restore_by_hand(&bdir, &db, &by_hand, &[("AGE_IDENTITY", keys.file("b"))]);
    assert_eq!(fingerprint(&by_hand), fingerprint(&db));

    // A key that is not a recipient: refused, and no database is created.
    let wrong = format!("enc_wrong_{}", std::process::id());
    let o = restore_as("c", &wrong);
    let out_wrong = output_text(&o);
    assert!(!o.status.success());
    assert!(
        out_wrong.contains("none of the identities") && out_wrong.contains(fps[0]),
        "{out_wrong}"
    );
    assert!(
        !database_exists(&wrong),
        "a refused restore created its database"
    );
    assert_no_secrets(&keys, &[&out_none, &out_ok, &out_wrong], &dir);
}

#[test]
fn tampering_and_unsigned_manifests_fail_drills_and_restores_by_name() {
    let pg = harness::postgres();
    let keys = TestKeys::new();
    let (db, store, dir) = seeded("sig");
    let db_url = pg.url(&db);
    let backup = |extra: &[&str]| {
        let mut args = vec![
            "--database-url",
            &db_url,
            "--store",
            &store,
            "--source",
            "s",
            "--no-globals",
            "--recipient",
            keys.public("a"),
        ];
        args.extend_from_slice(extra);
        backup_id(&args, &[])
    };
    let signed = ["--signing-key", &keys.file("signing")];
    let reader = [
        "--identity",
        &keys.file("a"),
        "--verify-key",
        keys.public("signing"),
    ];
    let restore_refused = |id: &str, what: &str, expect: &str| {
        let target = format!("sig_{}_{}", what, std::process::id());
        let mut args = vec![id, "--store", &store, "--target-url"];
        let url = pg.url(&target);
        args.push(&url);
        args.extend_from_slice(&reader);
        let o = restore(&args, &[]);
        let text = output_text(&o);
        assert!(!o.status.success(), "{what}: restore succeeded");
        assert!(text.contains(expect), "{what}: {text}");
        assert!(
            !database_exists(&target),
            "{what}: restore created its database"
        );
    };
    let drill_refused = |id: &str, what: &str, expect: &str| {
        let (ok, report, text) = drill(&store, id, &reader);
        assert!(!ok, "{what}: drill passed");
        let err = report["error"].as_str().unwrap_or(&text).to_string();
        assert!(err.contains(expect), "{what}: {err}");
    };

    // The untouched backup passes.
    let good = backup(&signed);
    let (ok, _, text) = drill(&store, &good, &reader);
    assert!(ok, "{text}");

    // A row count changed in the manifest text.
    let id = backup(&signed);
    let mpath = dir.join("s").join(&id).join("manifest.json");
    let text = std::fs::read_to_string(&mpath).unwrap();
    let edited = text.replacen("\"rows\": 20000", "\"rows\": 19999", 1);
    assert_ne!(edited, text);
    std::fs::write(&mpath, edited).unwrap();
    drill_refused(&id, "edited rows", "modified after it was signed");
    restore_refused(&id, "edited_rows", "modified after it was signed");

    // A chunk dropped from the object list and the signature removed.
    let id = backup(&signed);
    let mpath = dir.join("s").join(&id).join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m.as_object_mut().unwrap().remove("signature");
    m["databases"][0]["tables"][0]["chunks"]
        .as_array_mut()
        .unwrap()
        .clear();
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    drill_refused(&id, "unsigned list", "not signed");
    restore_refused(&id, "unsigned_list", "not signed");

    // A member appended after the signature (it would be outside what was signed).
    let id = backup(&signed);
    let mpath = dir.join("s").join(&id).join("manifest.json");
    let text = std::fs::read_to_string(&mpath).unwrap();
    let appended = format!(
        "{},\n  \"redis\": null\n}}",
        text.trim_end().strip_suffix('}').unwrap().trim_end()
    );
    std::fs::write(&mpath, appended).unwrap();
    drill_refused(&id, "appended", "changed after it was signed");

    // Signed by a key this reader does not trust.
    let other = keys.dir.join("other-signing.key");
    let o = firedrill(
        &["keygen", "signing", "--out", other.to_str().unwrap()],
        &[],
    );
    assert!(o.status.success());
    let id = backup(&["--signing-key", other.to_str().unwrap()]);
    drill_refused(&id, "stranger", "not a trusted key");

    // Never signed, read by a store that requires signatures.
    let id = backup(&[]);
    drill_refused(&id, "unsigned", "not signed");

    // A flipped byte in the key header: named, before any data.
    let id = backup(&signed);
    let hpath = dir.join("s").join(&id).join("keys/1.age");
    let mut h = std::fs::read(&hpath).unwrap();
    let n = h.len();
    h[n - 10] ^= 1;
    std::fs::write(&hpath, h).unwrap();
    drill_refused(&id, "header", "keys/1.age is corrupt");
    restore_refused(&id, "header", "keys/1.age is corrupt");

    // A flipped byte in an encrypted chunk: the chunk is named.
    let id = backup(&signed);
    let chunk = read_tree(&dir.join("s").join(&id))
        .into_keys()
        .find(|p| p.contains("public.events"))
        .unwrap();
    let cpath = dir.join("s").join(&id).join(&chunk);
    let mut c = std::fs::read(&cpath).unwrap();
    c[100] ^= 1;
    std::fs::write(&cpath, c).unwrap();
    drill_refused(&id, "chunk", &chunk);
}

/// `n` small encrypted, signed backups of one database (for rekey).
fn small_backups(n: usize, store: &str, keys: &TestKeys) -> Vec<String> {
    let pg = harness::postgres();
    let db = pg.fresh_database("rekey");
    pg.client(&db)
        .batch_execute(
            "CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 2000) g",
        )
        .unwrap();
    (0..n)
        .map(|_| {
            backup_id(
                &[
                    "--database-url",
                    &pg.url(&db),
                    "--store",
                    store,
                    "--source",
                    "k",
                    "--no-globals",
                    "--recipient",
                    keys.public("a"),
                    "--recipient",
                    keys.public("b"),
                    "--signing-key",
                    &keys.file("signing"),
                ],
                &[],
            )
        })
        .collect()
}

/// Each encrypted object's sha256 as stored, by path (headers and manifests left out).
fn data_hashes(dir: &Path) -> BTreeMap<String, String> {
    read_tree(dir)
        .into_iter()
        .filter(|(p, _)| p.ends_with(".zst"))
        .map(|(p, b)| (p, sha(&b)))
        .collect()
}

#[test]
fn rekey_rewrites_headers_only_and_a_killed_run_resumes() {
    let keys = TestKeys::new();
    let (store, dir) = crate::backup_restore::file_store();
    let ids = small_backups(12, &store, &keys);
    let before = data_hashes(&dir);
    let rt = tokio::runtime::Runtime::new().unwrap();

    let rekey_args: Vec<String> = [
        "rekey",
        "--json",
        "--store",
        &store,
        "--identity",
        &keys.file("a"),
        "--signing-key",
        &keys.file("signing"),
        "--add-recipient",
        keys.public("c"),
        "--remove-recipient",
        keys.public("a"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let args: Vec<&str> = rekey_args.iter().map(String::as_str).collect();

    // A dry run changes nothing.
    let mut dry = args.clone();
    dry.push("--dry-run");
    let o = firedrill(&dry, &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(plan
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["action"] == "would rekey"));
    assert_eq!(
        read_tree(&dir)
            .keys()
            .filter(|p| p.contains("keys/"))
            .count(),
        12
    );

    // How long a whole run takes here (on a copy), to spread kills over it.
    let copy = harness::tempdir("rekey-copy");
    let o = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", dir.display()))
        .arg(&copy)
        .output()
        .unwrap();
    assert!(o.status.success());
    let copy_store = format!("file://{}", copy.display());
    let mut timed = args.clone();
    timed[3] = &copy_store;
    let start = Instant::now();
    let o = firedrill(&timed, &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    let full = start.elapsed();

    // Kill runs at random points; after each, every backup still opens (with
    // b, a recipient before and after) and reads with a or c.
    let mut rng = rand::rng();
    let mut progress = Vec::new();
    // Until a kill lands mid-run, the delay is bisected (start-up can take
    // most of a run here): too early leaves nothing rotated, too late all,
    // and then the store goes back to how it was before the runs.
    let pristine = harness::tempdir("rekey-pristine");
    let copy_all = |from: &std::path::Path, to: &std::path::Path| {
        let o = std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", from.display()))
            .arg(to)
            .output()
            .unwrap();
        assert!(o.status.success());
    };
    copy_all(&dir, &pristine);
    let (mut early, mut late) = (0.0, 1.0);
    for _ in 0..15 {
        let mid_run_seen = progress.iter().any(|&n| n > 0 && n < 12);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_firedrill"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let at = match mid_run_seen {
            false => (early + late) / 2.0,
            true => rng.random_range(0.0..1.0),
        };
        std::thread::sleep(full.mul_f64(at));
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        rt.block_on(async {
            let by_b = keys.reader(&store, &["b"]);
            let by_ac = keys.reader(&store, &["a", "c"]);
            let mut rotated = 0;
            for id in &ids {
                let b = arch::open_backup(&by_b, "k", id)
                    .await
                    .unwrap_or_else(|e| panic!("{id} unreadable after a kill: {e}"));
                rotated += (b.manifest.encryption.unwrap().generation > 1) as usize;
                arch::open_backup(&by_ac, "k", id)
                    .await
                    .unwrap_or_else(|e| panic!("{id} unreadable by a or c after a kill: {e}"));
            }
            progress.push(rotated);
        });
        let rotated = *progress.last().unwrap();
        if !mid_run_seen && rotated == 0 {
            early = at;
        } else if !mid_run_seen && rotated == 12 {
            late = at;
            std::fs::remove_dir_all(&dir).unwrap();
            std::fs::create_dir_all(&dir).unwrap();
            copy_all(&pristine, &dir);
        }
    }
    eprintln!("15 kills over a {full:?} rekey of 12 backups; rotated after each: {progress:?}");
    assert!(
        progress.iter().any(|&n| n > 0 && n < 12),
        "no kill landed mid-run: {progress:?}"
    );
    // A run to the end, still with a's identity: finished backups are skipped.
    let o = firedrill(&args, &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    let done: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(done.as_array().unwrap().len(), 12);

    // The data did not change, byte for byte; each backup has one header, the new one.
    assert_eq!(data_hashes(&dir), before, "rekey touched encrypted data");
    let c_fp = firedrill::archive::age::Recipient::parse(keys.public("c"))
        .unwrap()
        .fingerprint();
    rt.block_on(async {
        let by_a = keys.reader(&store, &["a"]);
        let by_c = keys.reader(&store, &["c"]);
        for id in &ids {
            let b = arch::open_backup(&by_c, "k", id).await.unwrap();
            let enc = b.manifest.encryption.as_ref().unwrap();
            assert!(enc.generation >= 2);
            let fps: Vec<&str> = enc
                .recipients
                .iter()
                .map(|r| r.fingerprint.as_str())
                .collect();
            assert_eq!(fps.len(), 2, "{fps:?}");
            assert!(fps.contains(&c_fp.as_str()));
            let headers = by_c.list(&format!("k/{id}/keys/")).await.unwrap();
            assert_eq!(headers, vec![format!("{}.age", enc.generation)], "{id}");
            let e = arch::open_backup(&by_a, "k", id)
                .await
                .err()
                .expect("a was removed");
            assert!(e.to_string().contains("none of the identities"), "{e}");
        }
    });
    // A second run changes nothing.
    let o = firedrill(&args, &[]);
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(again
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["action"] == "unchanged"));

    // The new recipient drills a rotated backup.
    let (ok, report, text) = drill(
        &store,
        &ids[0],
        &[
            "--identity",
            &keys.file("c"),
            "--verify-key",
            keys.public("signing"),
        ],
    );
    assert!(ok, "{text}");
    assert_eq!(report["passed"], true);

    // Leaving a backup with no recipient is refused.
    let o = firedrill(
        &[
            "rekey",
            "--store",
            &store,
            "--identity",
            &keys.file("c"),
            "--signing-key",
            &keys.file("signing"),
            "--remove-recipient",
            keys.public("b"),
            "--remove-recipient",
            keys.public("c"),
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(
        output_text(&o).contains("nobody able to read it"),
        "{}",
        output_text(&o)
    );
    // A signed manifest is never rewritten without the signing key.
    let o = firedrill(
        &[
            "rekey",
            "--store",
            &store,
            "--identity",
            &keys.file("c"),
            "--add-recipient",
            keys.public("a"),
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(
        output_text(&o).contains("--signing-key"),
        "{}",
        output_text(&o)
    );
}

#[test]
fn redis_snapshots_are_encrypted_and_drilled_too() {
    let keys = TestKeys::new();
    let redis = harness::OwnRedis::start(&[]);
    let mut c = redis.connection("");
    redis::cmd("SET")
        .arg("greeting")
        .arg("hello")
        .query::<()>(&mut c)
        .unwrap();
    let (store, dir) = crate::backup_restore::file_store();
    let id = backup_id(
        &[
            "--redis-url",
            &redis.url(""),
            "--store",
            &store,
            "--source",
            "cache",
            "--recipient",
            keys.public("b"),
        ],
        &[],
    );
    let rdb = std::fs::read(dir.join("cache").join(&id).join("redis/dump.rdb.zst")).unwrap();
    assert!(!rdb.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]));
    let o = firedrill(
        &[
            "drill",
            "--json",
            "--store",
            &store,
            &id,
            "--identity",
            &keys.file("b"),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", output_text(&o));
}

#[test]
fn an_agent_encrypts_signs_and_drills_with_its_configured_keys() {
    let pg = harness::postgres();
    let keys = TestKeys::new();
    let (db, store, dir) = seeded("agent_enc");
    // Recipients from a file (as `age -R` reads), the identity of one of them.
    let recipients = keys.dir.join("recipients.txt");
    std::fs::write(
        &recipients,
        format!(
            "# operator\n{}\n# escrow\n{}\n",
            keys.public("a"),
            keys.public("b")
        ),
    )
    .unwrap();
    let port = harness::free_port();
    let config = harness::tempdir("agent-enc").join("firedrill.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\n\
             [store]\nurl = \"{store}\"\nrecipients = [\"{}\"]\nidentity_files = [\"{}\"]\nsigning_key_file = \"{}\"\n\
             [drill]\ntarget = \"{}\"\n\
             [[source]]\nname = \"app\"\nurls = [\"{}\"]\nbackup = \"1s\"\ndrill = \"2s\"\njobs = 2\n",
            recipients.display(),
            keys.file("b"),
            keys.file("signing"),
            pg.url("postgres"),
            pg.url(&db)
        ),
    )
    .unwrap();
    let child = harness::start_agent(&config, port, &[]);
    let o = harness::run_agent_for(child, 7);
    let log = output_text(&o);
    assert!(log.contains("drill passed"), "{log}");
    let tree = read_tree(&dir);
    let manifests: Vec<serde_json::Value> = tree
        .iter()
        .filter(|(p, _)| p.ends_with("manifest.json"))
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect();
    assert!(!manifests.is_empty());
    for m in &manifests {
        assert_eq!(m["encryption"]["recipients"].as_array().unwrap().len(), 2);
        assert_eq!(m["signature"]["key"], keys.public("signing"));
    }
    assert_no_secrets(&keys, &[&log], &dir);
}
