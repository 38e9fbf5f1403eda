//! A backup is untrusted input: whoever can write to the store must not get
//! code execution, a superuser session, a dead agent or a deleted backup out
//! of it. Each test here is an attack that worked before the fix; each checks
//! that the attack fails, names what it found, and leaves nothing behind.

// --- Backup content: meta-commands, checksums before use, bombs ---

/// Tampered schema scripts, globals and chunks: nothing of a backup reaches
/// a shell, a checksum is known good before a statement runs, and a
/// decompression bomb stops at the size the manifest records.
mod backup_content {
    use crate::backup_restore::{backup_id, seeded};
    use crate::harness::{self, firedrill, firedrill_command, output_text};
    use sha2::Digest;
    use std::path::{Path, PathBuf};

    const SOURCE: &str = "hb";

    struct Backup {
        store: String,
        bdir: PathBuf,
        id: String,
        manifest: serde_json::Value,
        db: String,
    }

    impl Backup {
        fn new(prefix: &str, extra: &[&str]) -> Backup {
            let pg = harness::postgres();
            let (db, store, dir) = seeded(prefix);
            let url = pg.url(&db);
            let mut args = vec![
                "--database-url",
                &url,
                "--store",
                &store,
                "--source",
                SOURCE,
            ];
            args.extend_from_slice(extra);
            let id = backup_id(&args, &[]);
            let bdir = dir.join(SOURCE).join(&id);
            let manifest =
                serde_json::from_slice(&std::fs::read(bdir.join("manifest.json")).unwrap())
                    .unwrap();
            Backup {
                store,
                bdir,
                id,
                manifest,
                db,
            }
        }

        fn path(&self, what: &str) -> String {
            match what {
                "globals" => self.manifest["globals"]["path"].as_str().unwrap().into(),
                "chunk" => self.manifest["databases"][0]["tables"][0]["chunks"][0]["path"]
                    .as_str()
                    .unwrap()
                    .into(),
                section => self.manifest["databases"][0][section]["path"]
                    .as_str()
                    .unwrap()
                    .into(),
            }
        }

        fn plain(&self, rel: &str) -> Vec<u8> {
            zstd::decode_all(&std::fs::read(self.bdir.join(rel)).unwrap()[..]).unwrap()
        }

        /// Replaces an object; with `manifest`, also its size and sha256 in
        /// the manifest (and its decompressed size, with `raw`), as someone
        /// who can write to an unsigned backup's store would.
        fn replace(&self, rel: &str, stored: &[u8], manifest: bool, raw: Option<u64>) {
            std::fs::write(self.bdir.join(rel), stored).unwrap();
            if !manifest {
                return;
            }
            let mut m = self.manifest.clone();
            let mut found = 0;
            visit(&mut m, &mut |o| {
                if o.get("path").and_then(|p| p.as_str()) == Some(rel) && o.contains_key("sha256") {
                    o.insert("size".into(), stored.len().into());
                    o.insert(
                        "sha256".into(),
                        hex::encode(sha2::Sha256::digest(stored)).into(),
                    );
                    if let (Some(n), true) = (raw, o.contains_key("raw")) {
                        o.insert("raw".into(), n.into());
                    }
                    found += 1;
                }
            });
            assert_eq!(found, 1, "{rel} in the manifest");
            std::fs::write(
                self.bdir.join("manifest.json"),
                serde_json::to_vec_pretty(&m).unwrap(),
            )
            .unwrap();
        }

        fn restore_original(&self, rel: &str, original: &[u8]) {
            std::fs::write(self.bdir.join(rel), original).unwrap();
            std::fs::write(
                self.bdir.join("manifest.json"),
                serde_json::to_vec_pretty(&self.manifest).unwrap(),
            )
            .unwrap();
        }

        fn drill_args<'a>(&'a self, url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
            let mut args = vec![
                "drill",
                "--json",
                "--store",
                &self.store,
                &self.id,
                "--drill-url",
                url,
            ];
            args.extend_from_slice(extra);
            args
        }

        /// Drills the backup: (passed, everything it said).
        fn drill(&self, extra: &[&str]) -> (bool, String) {
            let url = harness::postgres().url("postgres");
            let o = firedrill(&self.drill_args(&url, extra), &[]);
            (o.status.success(), output_text(&o))
        }

        fn assert_no_drill_database(&self, what: &str) {
            let name = format!(
                "firedrill_drill_{}",
                self.id.to_ascii_lowercase().replace('-', "_")
            );
            let left: Vec<String> = harness::postgres()
                .client("postgres")
                .query(
                    "SELECT datname FROM pg_database WHERE datname LIKE $1 || '%'",
                    &[&name],
                )
                .unwrap()
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            assert!(left.is_empty(), "{what}: drill databases left: {left:?}");
        }
    }

    fn visit(
        v: &mut serde_json::Value,
        f: &mut impl FnMut(&mut serde_json::Map<String, serde_json::Value>),
    ) {
        match v {
            serde_json::Value::Object(o) => {
                f(o);
                for (_, v) in o.iter_mut() {
                    visit(v, f);
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|v| visit(v, f)),
            _ => {}
        }
    }

    fn zstd(plain: &[u8]) -> Vec<u8> {
        zstd::encode_all(plain, 3).unwrap()
    }

    /// `len` bytes of `unit` repeated, compressed as a stream: a few KiB.
    fn bomb(unit: &[u8], len: u64) -> Vec<u8> {
        use std::io::Write;
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        let block = unit.repeat((1 << 20) / unit.len());
        let mut left = len;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            e.write_all(&block[..n]).unwrap();
            left -= n as u64;
        }
        e.finish().unwrap()
    }

    fn canary(label: &str) -> PathBuf {
        harness::tempdir(label).join("pwned")
    }

    /// The line of `needle` in `text` (1-based).
    fn line_of(text: &[u8], needle: &str) -> usize {
        let text = String::from_utf8_lossy(text);
        1 + text.lines().position(|l| l.contains(needle)).unwrap()
    }

    #[test]
    fn a_shell_line_in_a_schema_script_is_refused_naming_object_and_line() {
        let b = Backup::new("hb_shell", &["--no-globals"]);
        for (section, attack) in [
            ("pre_data", "\\! touch {}"),
            ("pre_data", "COPY (SELECT 1) TO PROGRAM 'touch {}';"),
            ("post_data", "\\! touch {}"),
            ("post_data", "\\o |touch {}"),
        ] {
            let file = canary("hb-shell");
            let attack = attack.replace("{}", &file.display().to_string());
            let rel = b.path(section);
            let original = std::fs::read(b.bdir.join(&rel)).unwrap();
            let mut plain = b.plain(&rel);
            plain.extend_from_slice(format!("\n{attack}\nSET lock_timeout = 0;\n").as_bytes());
            let line = line_of(&plain, &attack);
            b.replace(&rel, &zstd(&plain), true, Some(plain.len() as u64));
            let (passed, text) = b.drill(&[]);
            assert!(!passed, "{attack} in {rel}: the drill passed: {text}");
            assert!(!file.exists(), "{attack} in {rel}: it ran: {text}");
            assert!(
                text.contains(&rel) && text.contains(&format!("line {line}")),
                "{attack} in {rel}: the error names neither the object nor line {line}: {text}"
            );
            b.assert_no_drill_database(&attack);
            b.restore_original(&rel, &original);
        }
        let (passed, text) = b.drill(&[]);
        assert!(passed, "the genuine backup no longer drills: {text}");
        b.assert_no_drill_database("the genuine drill");
    }

    #[test]
    fn a_signed_backup_with_a_swapped_script_fails_its_checksum_before_any_statement() {
        let keys = harness::tempdir("hb-keys");
        let sk = keys.join("signing.key");
        let o = firedrill(&["keygen", "signing", "--out", sk.to_str().unwrap()], &[]);
        assert!(o.status.success(), "{}", output_text(&o));
        let public = String::from_utf8(o.stdout).unwrap().trim().to_string();
        let b = Backup::new(
            "hb_signed",
            &["--no-globals", "--signing-key", sk.to_str().unwrap()],
        );
        let verify = ["--verify-key", public.as_str()];
        let rel = b.path("pre_data");
        let original = std::fs::read(b.bdir.join(&rel)).unwrap();
        let file = canary("hb-signed");
        // The shell line first, so a check at the end of the stream is too late.
        let mut plain = format!("\\! touch {}\n", file.display()).into_bytes();
        plain.extend_from_slice(&b.plain(&rel));
        b.replace(&rel, &zstd(&plain), false, None);
        let (passed, text) = b.drill(&verify);
        assert!(!passed, "the drill passed: {text}");
        assert!(!file.exists(), "the shell line ran: {text}");
        assert!(
            text.contains(&format!("{rel} is corrupt")) && text.contains("the manifest records"),
            "no checksum error naming {rel}: {text}"
        );
        b.assert_no_drill_database("swapped pre-data");
        std::fs::write(b.bdir.join(&rel), &original).unwrap();
        let (passed, text) = b.drill(&verify);
        assert!(passed, "the genuine backup no longer drills: {text}");
    }

    #[test]
    fn a_shell_line_in_globals_is_never_run_and_restore_by_hand_refuses_it() {
        let b = Backup::new("hb_globals", &[]);
        let rel = b.path("globals");
        let file = canary("hb-globals");
        let mut plain = b.plain(&rel);
        plain.extend_from_slice(format!("\\! touch {}\n", file.display()).as_bytes());
        b.replace(&rel, &zstd(&plain), true, Some(plain.len() as u64));
        // A drill checks globals (they check out: the manifest was updated)
        // and never applies them.
        let (passed, text) = b.drill(&[]);
        assert!(passed, "{text}");
        assert!(!file.exists(), "the drill ran globals: {text}");
        b.assert_no_drill_database("drill with tampered globals");
        // restore-by-hand refuses before psql sees any script.
        let pg = harness::postgres();
        let target = pg.fresh_database("hb_globals_byhand");
        let o = by_hand(&b.bdir, &b.db, &target);
        let text = output_text(&o);
        assert!(!o.status.success(), "restore-by-hand went on: {text}");
        assert!(!file.exists(), "restore-by-hand ran it: {text}");
        assert!(
            text.contains(&rel) && text.contains("meta-command"),
            "{text}"
        );
        assert_eq!(
            tables(&target),
            0,
            "restore-by-hand restored something: {text}"
        );
        drop_database(&target);
    }

    #[test]
    fn restore_by_hand_refuses_a_shell_line_and_a_bad_checksum_before_psql() {
        let b = Backup::new("hb_byhand", &["--no-globals"]);
        let pg = harness::postgres();
        let rel = b.path("pre_data");
        let original = std::fs::read(b.bdir.join(&rel)).unwrap();
        // A shell line, manifest updated; then the same without the update.
        for (what, manifest) in [("meta-command", true), ("sha256", false)] {
            let file = canary("hb-byhand");
            let mut plain = format!("\\! touch {}\n", file.display()).into_bytes();
            plain.extend_from_slice(&b.plain(&rel));
            b.replace(&rel, &zstd(&plain), manifest, Some(plain.len() as u64));
            let target = pg.fresh_database("hb_byhand_target");
            let o = by_hand(&b.bdir, &b.db, &target);
            let text = output_text(&o);
            assert!(
                !o.status.success(),
                "{what}: restore-by-hand went on: {text}"
            );
            assert!(!file.exists(), "{what}: psql ran the shell line: {text}");
            assert!(
                text.contains(&rel) || text.contains("FAILED"),
                "{what}: {text}"
            );
            assert_eq!(tables(&target), 0, "{what}: something was restored: {text}");
            drop_database(&target);
            b.restore_original(&rel, &original);
        }
    }

    fn by_hand(bdir: &Path, db: &str, target: &str) -> std::process::Output {
        let pg = harness::postgres();
        std::process::Command::new(harness::root().join("scripts/restore-by-hand"))
            .arg(bdir)
            .arg(db)
            .arg(pg.url(target))
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    pg.bin.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .output()
            .unwrap()
    }

    fn drop_database(db: &str) {
        harness::postgres()
            .client("postgres")
            .batch_execute(&format!("DROP DATABASE \"{db}\""))
            .unwrap();
    }

    fn tables(db: &str) -> i64 {
        harness::postgres()
            .client(db)
            .query_one(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND c.relkind = 'r'",
                &[],
            )
            .unwrap()
            .get(0)
    }

    /// Drills with the firedrill process's peak RSS measured.
    fn drill_measured(b: &Backup) -> (bool, String, u64) {
        let url = harness::postgres().url("postgres");
        let mut child = firedrill_command(&b.drill_args(&url, &[]), &[])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Output is small (a failed drill's report): read it after the exit.
        let (status, peak_kib) = harness::wait_with_peak_rss(&mut child);
        let o = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(peak_kib > 0, "no reading of the child's memory");
        (status.success(), text, peak_kib)
    }

    const BOMB: u64 = 1 << 30;
    const SMALL_RSS_KIB: u64 = 128 * 1024;

    #[test]
    fn a_zstd_bomb_as_globals_stops_at_the_recorded_size() {
        let b = Backup::new("hb_bomb_g", &[]);
        let rel = b.path("globals");
        let original = std::fs::read(b.bdir.join(&rel)).unwrap();
        let recorded = b.manifest["globals"]["raw"]
            .as_u64()
            .expect("globals record raw");
        let bomb = bomb(b"\0", BOMB);
        assert!(bomb.len() < 256 << 10, "{} bytes", bomb.len());
        // Size and sha256 updated, the recorded decompressed size kept.
        b.replace(&rel, &bomb, true, None);
        let (passed, text, peak) = drill_measured(&b);
        eprintln!(
            "globals bomb ({} KiB -> {} MiB): peak RSS {} MiB",
            bomb.len() >> 10,
            BOMB >> 20,
            peak >> 10
        );
        assert!(!passed, "{text}");
        assert!(
            text.contains(&rel) && text.contains(&format!("more than the {recorded} bytes")),
            "{text}"
        );
        assert!(peak < SMALL_RSS_KIB, "peak RSS {} MiB", peak >> 10);
        b.assert_no_drill_database("globals bomb");
        // A manifest from before the recorded size: the cap stops it, still
        // without holding it in memory.
        let mut m = b.manifest.clone();
        m["globals"].as_object_mut().unwrap().remove("raw");
        m["globals"]["size"] = bomb.len().into();
        m["globals"]["sha256"] = hex::encode(sha2::Sha256::digest(&bomb)).into();
        std::fs::write(
            b.bdir.join("manifest.json"),
            serde_json::to_vec_pretty(&m).unwrap(),
        )
        .unwrap();
        let (passed, text, peak) = drill_measured(&b);
        assert!(!passed, "{text}");
        assert!(
            text.contains(&rel) && text.contains("records no decompressed size"),
            "{text}"
        );
        assert!(peak < SMALL_RSS_KIB, "peak RSS {} MiB", peak >> 10);
        b.assert_no_drill_database("globals bomb, old manifest");
        b.restore_original(&rel, &original);
        let (passed, text) = b.drill(&[]);
        assert!(passed, "the genuine backup no longer drills: {text}");
    }

    #[test]
    fn a_zstd_bomb_as_a_data_chunk_stops_at_raw_bytes() {
        let b = Backup::new("hb_bomb_c", &["--no-globals"]);
        let chunk = &b.manifest["databases"][0]["tables"][0]["chunks"][0];
        let rel = b.path("chunk");
        let recorded = chunk["raw_bytes"].as_u64().unwrap();
        assert!(
            chunk.get("raw").is_none(),
            "a chunk repeats its raw size: {chunk}"
        );
        let original = std::fs::read(b.bdir.join(&rel)).unwrap();
        // Rows the table takes, so the server would load them all.
        let first_row: Vec<u8> = b
            .plain(&rel)
            .split_inclusive(|&c| c == b'\n')
            .next()
            .unwrap()
            .to_vec();
        let bomb = bomb(&first_row, BOMB);
        b.replace(&rel, &bomb, true, None);
        let (passed, text, peak) = drill_measured(&b);
        eprintln!(
            "chunk bomb ({} KiB -> {} MiB): peak RSS {} MiB",
            bomb.len() >> 10,
            BOMB >> 20,
            peak >> 10
        );
        assert!(!passed, "{text}");
        assert!(
            text.contains(&rel) && text.contains(&format!("more than the {recorded} bytes")),
            "{text}"
        );
        assert!(peak < SMALL_RSS_KIB, "peak RSS {} MiB", peak >> 10);
        b.assert_no_drill_database("chunk bomb");
        b.restore_original(&rel, &original);
        let (passed, text) = b.drill(&[]);
        assert!(passed, "the genuine backup no longer drills: {text}");
    }
}

// --- Signed means signed: planted manifests and reports ---

/// With keys configured, whoever writes the store cannot add a backup or a
/// drill that counts: planted manifests (unsigned, signed by a stranger,
/// edited after signing) and planted "passed" reports are left out of
/// `list`, drill picking and prune, named once in the log and counted on
/// `/metrics`; genuine backups and genuine signed reports still count.
mod signed_means_signed {
    use crate::backup_restore::{backup_id, seeded};
    use crate::harness::{self, firedrill, output_text};
    use firedrill::archive::manifest::{self, Manifest};
    use firedrill::archive::{KeySettings, Keys};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, SystemTime};

    const SOURCE: &str = "ss";

    /// `firedrill keygen signing`: (private key file, public key).
    fn keygen(dir: &Path, name: &str) -> (String, String) {
        let file = dir.join(format!("{name}.key"));
        let o = firedrill(&["keygen", "signing", "--out", file.to_str().unwrap()], &[]);
        assert!(o.status.success(), "{}", output_text(&o));
        (
            file.display().to_string(),
            String::from_utf8(o.stdout).unwrap().trim().to_string(),
        )
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }

    /// How a planted manifest is "signed".
    #[derive(Clone, Copy)]
    enum Forgery {
        /// The signature member removed.
        Unsigned,
        /// Re-signed with a key the readers do not trust.
        Stranger,
        /// The genuine signature kept over edited content.
        Edited,
    }

    /// Copies the genuine backup `genuine` under a new, newer id whose
    /// manifest is forged as `how`; returns the new id.
    fn plant(
        store_dir: &Path,
        genuine: &str,
        minutes_ahead: u64,
        how: Forgery,
        stranger: &str,
    ) -> String {
        let id =
            manifest::new_backup_id(SystemTime::now() + Duration::from_secs(60 * minutes_ahead));
        let src = store_dir.join(SOURCE).join(genuine);
        let dst = store_dir.join(SOURCE).join(&id);
        copy_dir(&src, &dst);
        let _ = std::fs::remove_dir_all(dst.join("drills"));
        let text = std::fs::read_to_string(src.join("manifest.json")).unwrap();
        let edited = text.replace(genuine, &id);
        let bytes = match how {
            Forgery::Edited => edited.into_bytes(),
            Forgery::Unsigned | Forgery::Stranger => {
                let mut m: Manifest = serde_json::from_str(&edited).unwrap();
                m.signature = None;
                let keys = Keys::load(&KeySettings {
                    signing_key_file: Some(PathBuf::from(stranger)),
                    ..Default::default()
                })
                .unwrap();
                match how {
                    Forgery::Stranger => m.to_bytes(|b| keys.sign(b)),
                    _ => m.to_bytes(|_| None),
                }
            }
        };
        std::fs::write(dst.join("manifest.json"), bytes).unwrap();
        id
    }

    /// An unsigned report saying `id`'s drill passed, newer than any real one.
    fn plant_passed_report(store_dir: &Path, id: &str) -> String {
        let dir = store_dir.join(SOURCE).join(id).join("drills");
        std::fs::create_dir_all(&dir).unwrap();
        let rel = format!("{SOURCE}/{id}/drills/20991231T235959Z.json");
        let report = serde_json::json!({
            "format": "firedrill-drill/1", "backup_id": id, "source": SOURCE,
            "started": 1, "finished": 2, "passed": true, "rto_seconds": 1.0,
            "rpo_seconds": 1, "backup_bytes": 1, "backup_rows": 1, "target": "local",
            "databases": [], "checks": [], "plugins": [], "error": null, "report": rel,
        });
        std::fs::write(
            dir.join("20991231T235959Z.json"),
            serde_json::to_vec_pretty(&report).unwrap(),
        )
        .unwrap();
        rel
    }

    fn ids(v: &serde_json::Value, key: &str) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l[key].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn planted_backups_and_reports_never_steer_list_drill_or_prune() {
        let pg = harness::postgres();
        let (db, store, dir) = seeded("signed");
        let keys_dir = harness::tempdir("signed-keys");
        let (ours, public) = keygen(&keys_dir, "ours");
        let (stranger, _) = keygen(&keys_dir, "stranger");
        let signed = ["--signing-key", ours.as_str()];
        let verify = ["--verify-key", public.as_str()];
        let url = pg.url(&db);
        let drill_url = pg.url("postgres");

        // Three genuine, signed backups.
        let mut genuine = Vec::new();
        for _ in 0..3 {
            genuine.push(backup_id(
                &[
                    "--database-url",
                    &url,
                    "--store",
                    &store,
                    "--source",
                    SOURCE,
                    "--no-globals",
                    "--signing-key",
                    &ours,
                ],
                &[],
            ));
            std::thread::sleep(Duration::from_millis(1100));
        }
        let drill = |pick: &[&str]| {
            let mut args = vec![
                "drill",
                "--json",
                "--store",
                &store,
                "--drill-url",
                &drill_url,
            ];
            args.extend_from_slice(pick);
            args.extend_from_slice(&signed);
            let o = firedrill(&args, &[]);
            assert!(o.status.success(), "{}", output_text(&o));
            serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
        };
        // The middle one passes a drill; its report is signed like a manifest.
        let r = drill(&[&genuine[1]]);
        assert_eq!(r["passed"], true, "{r:#}");
        let report_path = dir.join(r["report"].as_str().unwrap());
        let stored: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
        assert_eq!(stored["signature"]["key"], public.as_str(), "{stored:#}");

        // The attacker: three newer backups, each with a "passed" drill...
        let planted = [
            plant(&dir, &genuine[2], 1, Forgery::Unsigned, &stranger),
            plant(&dir, &genuine[2], 2, Forgery::Stranger, &stranger),
            plant(&dir, &genuine[2], 3, Forgery::Edited, &stranger),
        ];
        for p in &planted {
            plant_passed_report(&dir, p);
        }
        // ...an unsigned "passed" report on the newest genuine backup, and
        // the genuine signed report copied next to the oldest.
        let fake_on_genuine = plant_passed_report(&dir, &genuine[2]);
        let replay_dir = dir.join(SOURCE).join(&genuine[0]).join("drills");
        std::fs::create_dir_all(&replay_dir).unwrap();
        std::fs::copy(&report_path, replay_dir.join("20991231T235959Z.json")).unwrap();

        // list: the genuine three, with the genuine drill only; each planted
        // object is named with its reason.
        let mut args = vec!["list", "--json", "--store", &store];
        args.extend_from_slice(&verify);
        let o = firedrill(&args, &[]);
        assert!(o.status.success(), "{}", output_text(&o));
        let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(ids(&listed, "id"), genuine, "{listed:#}");
        assert!(
            listed[0]["last_drill"].is_null(),
            "a replayed report counted: {listed:#}"
        );
        assert_eq!(listed[1]["last_drill"]["passed"], true, "{listed:#}");
        assert!(
            listed[2]["last_drill"].is_null(),
            "a planted report counted: {listed:#}"
        );
        assert!(listed
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["signed_by"] == public.as_str()));
        let log = String::from_utf8_lossy(&o.stderr).to_string();
        for (id, reason) in
            planted
                .iter()
                .zip(["unsigned", "signature by an untrusted key", "bad signature"])
        {
            let line = log
                .lines()
                .find(|l| l.contains(id.as_str()))
                .unwrap_or_else(|| panic!("{id} not named: {log}"));
            assert!(line.contains(reason) && line.contains("ignored"), "{line}");
        }
        assert!(
            log.lines()
                .any(|l| l.contains(&fake_on_genuine) && l.contains("unsigned")),
            "{log}"
        );
        assert!(
            log.lines()
                .any(|l| l.contains(&genuine[0]) && l.contains("not the backup it is stored with")),
            "{log}"
        );
        let mut args = vec!["list", "--store", &store];
        args.extend_from_slice(&verify);
        let o = firedrill(&args, &[]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("3 backups")
                && text.contains("3 manifest(s) and 2 drill report(s) ignored"),
            "{text}"
        );

        // prune: the planted backups are neither shown to the plugin nor
        // deleted, and the host guard's "last drill passed" is the genuine one.
        let prune = |keep: u32, extra: &[&str]| {
            let policies = crate::retention::policies(keep);
            let mut args = vec![
                "prune",
                "--json",
                "--store",
                &store,
                "--policies",
                policies.to_str().unwrap(),
                "--min-age",
                "0s",
            ];
            args.extend_from_slice(&verify);
            args.extend_from_slice(extra);
            let o = firedrill(&args, &[]);
            assert!(o.status.success(), "{}", output_text(&o));
            serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
        };
        let r = prune(1, &["--dry-run"]);
        assert_eq!(ids(&r["decisions"], "id"), genuine, "{r:#}");
        let deleting: Vec<&str> = r["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["delete"] == true)
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        assert_eq!(deleting, [genuine[0].as_str()], "{r:#}");
        let kept = &r["decisions"][1];
        assert!(
            kept["guarded"] == true && kept["reason"].as_str().unwrap().contains("passed a drill"),
            "{r:#}"
        );

        // Drill picking: the newest genuine backup, then the genuine one
        // never drilled (the replayed report does not count).
        let r = drill(&["--latest"]);
        assert_eq!(r["backup_id"], genuine[2].as_str(), "{r:#}");
        let r = drill(&["--latest-unverified"]);
        assert_eq!(r["backup_id"], genuine[0].as_str(), "{r:#}");

        // A real prune: the policy's choice among genuine backups, nothing else.
        let r = prune(2, &[]);
        assert_eq!(r["deleted"], serde_json::json!([genuine[0]]), "{r:#}");
        for id in &genuine[1..] {
            assert!(
                dir.join(SOURCE).join(id).join("manifest.json").exists(),
                "{id} deleted"
            );
        }
        for id in &planted {
            assert!(
                dir.join(SOURCE).join(id).join("manifest.json").exists(),
                "{id}: what cannot be verified is not deleted either"
            );
        }
    }

    fn agent_config(dir: &Path, store: &str, port: u16, keys: &str) -> PathBuf {
        let config = dir.join(format!("firedrill-{port}.toml"));
        std::fs::write(
            &config,
            format!(
                "[agent]\nlisten = \"127.0.0.1:{port}\"\npolicies = \"{}\"\n[store]\nurl = \"{store}\"\n{keys}\n\
                 [coordination]\nredis_url = \"{}\"\nnamespace = \"signed-{}:\"\n\
                 [[source]]\nname = \"{SOURCE}\"\nurls = [\"{}\"]\nbackup = \"cron: 0 3 1 1 *\"\n",
                crate::api::signed_policies("").display(),
                harness::redis().url(),
                rand::random::<u32>(),
                harness::postgres().url("postgres"),
            ),
        )
        .unwrap();
        config
    }

    #[test]
    fn the_agent_names_counts_and_warns() {
        let pg = harness::postgres();
        let (db, store, dir) = seeded("signedagent");
        let keys_dir = harness::tempdir("signed-agent-keys");
        let (ours, public) = keygen(&keys_dir, "ours");
        let (stranger, _) = keygen(&keys_dir, "stranger");
        let genuine = backup_id(
            &[
                "--database-url",
                &pg.url(&db),
                "--store",
                &store,
                "--source",
                SOURCE,
                "--no-globals",
                "--signing-key",
                &ours,
            ],
            &[],
        );
        let planted = [
            plant(&dir, &genuine, 1, Forgery::Unsigned, &stranger),
            plant(&dir, &genuine, 2, Forgery::Stranger, &stranger),
        ];
        let conf_dir = harness::tempdir("signed-agent-conf");

        // Without keys: config check and the agent's start-up say so, once.
        let port = harness::free_port();
        let bare = agent_config(&conf_dir, &store, port, "");
        let o = firedrill(
            &["config", "check", "--config", bare.to_str().unwrap()],
            &[],
        );
        assert!(o.status.success(), "{}", output_text(&o));
        let text = output_text(&o);
        assert_eq!(
            text.matches("anyone who can write the store").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("signing_key_file") && text.contains("verify_keys"),
            "{text}"
        );
        let child = harness::start_agent(&bare, port, &[("FIREDRILL_TOKEN_KEY", crate::api::KEY)]);
        let out = harness::run_agent_for(child, 1);
        let text = output_text(&out);
        assert_eq!(
            text.matches("anyone who can write the store").count(),
            1,
            "{text}"
        );

        // With a key: no warning; the API lists the genuine backup only and
        // says what it left out; each object is logged and counted once,
        // however often it is listed.
        let port = harness::free_port();
        let keyed = agent_config(
            &conf_dir,
            &store,
            port,
            &format!("signing_key_file = \"{ours}\"\nverify_keys = [\"{public}\"]"),
        );
        let o = firedrill(
            &["config", "check", "--config", keyed.to_str().unwrap()],
            &[],
        );
        assert!(o.status.success(), "{}", output_text(&o));
        assert!(!output_text(&o).contains("warning"), "{}", output_text(&o));
        let child = harness::start_agent(&keyed, port, &[("FIREDRILL_TOKEN_KEY", crate::api::KEY)]);
        let (token, _) = crate::api::issue("viewer", "auditor");
        for _ in 0..2 {
            let r = crate::api::get(port, "/v1/backups", &token);
            assert_eq!(r.status, 200, "{}", r.body);
            let v = r.json();
            assert_eq!(ids(&v["backups"], "id"), [genuine.clone()], "{v:#}");
            let ignored = ids(&v["ignored"], "object");
            for p in &planted {
                assert!(
                    ignored.contains(&format!("{SOURCE}/{p}/manifest.json")),
                    "{v:#}"
                );
            }
            assert_eq!(ignored.len(), 2, "{v:#}");
        }
        let metrics = crate::api::get(port, "/metrics", &token).body;
        assert!(
            metrics.contains("firedrill_untrusted_objects_ignored_total{kind=\"manifest\"} 2"),
            "{metrics}"
        );
        let out = harness::run_agent_for(child, 0);
        let text = output_text(&out);
        assert!(!text.contains("anyone who can write the store"), "{text}");
        for p in &planted {
            let named = text
                .lines()
                .filter(|l| l.contains(p.as_str()) && l.contains("ignored"))
                .count();
            assert_eq!(named, 1, "{p}: {text}");
        }
    }
}
