//! Policies directories load as one set, or not at all, with every problem
//! named by file and field.

use crate::harness;
use firedrill::runtime::{Defaults, PluginSet, World};

const ALL: [&str; 8] = [
    "planner-all",
    "verifier-sql",
    "retention-count",
    "retention-age",
    "retention-gfs",
    "authorizer-token",
    "authorizer-signed",
    "redactor-secrets",
];

fn shipped_policies() -> std::path::PathBuf {
    let files: Vec<(String, String)> = std::fs::read_dir(harness::root().join("policies"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    harness::policy_dir(&ALL, &refs)
}

#[test]
fn the_shipped_policies_load_one_per_world() {
    std::env::set_var(
        "FIREDRILL_TOKEN_KEY",
        "shipped-test-key-of-at-least-32-bytes",
    );
    let set = PluginSet::load(
        &harness::runtime(),
        Some(&shipped_policies()),
        &Defaults::default(),
    )
    .unwrap();
    // A notifier's destinations are the site's own: none is shipped.
    for w in World::ALL {
        let shipped = usize::from(w != World::Notifier);
        assert_eq!(set.of_world(w).count(), shipped, "{w}");
    }
    assert!(set
        .get("verifier-sql")
        .unwrap()
        .version()
        .starts_with("verifier-sql@"));
}

#[test]
fn one_bad_policy_fails_the_whole_set_naming_each_problem() {
    let dir = shipped_policies();
    std::fs::write(
        dir.join("broken.toml"),
        "world = \"verifier\"\nwasm = \"verifier_sql.wasm\"\n[limits]\nmemroy = \"1MiB\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("missing.toml"),
        "world = \"retention\"\nwasm = \"nope.wasm\"\n",
    )
    .unwrap();
    std::env::set_var(
        "FIREDRILL_TOKEN_KEY",
        "shipped-test-key-of-at-least-32-bytes",
    );
    let errors = PluginSet::load(&harness::runtime(), Some(&dir), &Defaults::default())
        .err()
        .expect("must fail")
        .0;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].file.ends_with("broken.toml") && errors[0].message.contains("memroy"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].file.ends_with("missing.toml") && errors[1].field.as_deref() == Some("wasm"),
        "{}",
        errors[1]
    );
    assert!(errors[1].to_string().contains("nope.wasm"), "{}", errors[1]);
}

#[test]
fn a_sha256_pin_must_match() {
    let wasm = std::fs::read(harness::component("retention-count")).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&wasm))
    };
    let good = format!("world = \"retention\"\nwasm = \"retention_count.wasm\"\nsha256 = \"{sha}\"\n[grants]\nlogging = true\nconfig = true");
    assert!(harness::load("retention-count", &good).is_ok());
    let bad = good.replace(&sha[..4], if &sha[..4] == "0000" { "1111" } else { "0000" });
    let e = harness::load("retention-count", &bad).err().unwrap();
    assert_eq!(e.field.as_deref(), Some("sha256"));
    assert!(e.message.contains(&sha), "{e}");
}

#[test]
fn the_wrong_world_is_named() {
    let e = harness::load("retention-count", "world = \"verifier\"\nwasm = \"retention_count.wasm\"\n[grants]\nlogging = true\nconfig = true")
        .err()
        .unwrap();
    assert_eq!(e.field.as_deref(), Some("world"), "{e}");
    assert!(e.message.contains("verifier"), "{e}");
}

#[test]
fn duplicate_names_are_refused() {
    let p = "name = \"keep\"\nworld = \"retention\"\nwasm = \"retention_count.wasm\"\n[grants]\nlogging = true\nconfig = true";
    let dir = harness::policy_dir(&["retention-count"], &[("a.toml", p), ("b.toml", p)]);
    let errors = PluginSet::load(&harness::runtime(), Some(&dir), &Defaults::default())
        .err()
        .unwrap()
        .0;
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].message.contains("already the name of") && errors[0].message.contains("a.toml"),
        "{}",
        errors[0]
    );
}

#[test]
fn a_configmap_mount_loads_through_its_symlinks() {
    // Kubernetes mounts a ConfigMap as ..data -> ..2026_11_22_xx/, and each
    // key as a symlink through ..data.
    let dir = harness::tempdir("configmap");
    let real = dir.join("..2026_11_22_21_00_00.123");
    std::fs::create_dir(&real).unwrap();
    std::fs::copy(
        harness::component("retention-count"),
        real.join("retention_count.wasm"),
    )
    .unwrap();
    std::fs::write(real.join("keep.toml"), "world = \"retention\"\nwasm = \"retention_count.wasm\"\n[grants]\nlogging = true\nconfig = true").unwrap();
    std::os::unix::fs::symlink("..2026_11_22_21_00_00.123", dir.join("..data")).unwrap();
    for f in ["keep.toml", "retention_count.wasm"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
    }
    let set = PluginSet::load(&harness::runtime(), Some(&dir), &Defaults::default()).unwrap();
    let files: Vec<&str> = set
        .all()
        .iter()
        .filter(|p| !p.policy().builtin())
        .map(|p| p.name())
        .collect();
    assert_eq!(
        files,
        ["keep"],
        "the hidden ..data entries are not loaded twice"
    );
}

/// Of every world but the verifier's, one policy is in force: a second
/// planner (or retention policy, authorizer, redactor) would be silently
/// ignored by whichever job picked the first, so the set does not load.
#[test]
fn a_second_policy_of_a_single_world_is_refused_naming_both() {
    let retention = "world = \"retention\"\nwasm = \"retention_age.wasm\"\n[grants]\nconfig = true\n[config]\ndays = 7\n";
    let dir = harness::policy_dir(
        &["retention-age", "verifier-sql"],
        &[
            ("a-week.toml", retention),
            ("a-month.toml", &retention.replace("7", "30")),
        ],
    );
    let err = match PluginSet::load(&harness::runtime(), Some(&dir), &Defaults::default()) {
        Ok(_) => panic!("two retention policies loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("more than one retention policy")
            && err.contains("a-month")
            && err.contains("a-week"),
        "{err}"
    );
    // Verifiers add up: two are one set.
    let verifier = "world = \"verifier\"\nwasm = \"verifier_sql.wasm\"\n[grants]\nlogging = true\nconfig = true\nsql = { database = \"drill\" }\n";
    let dir = harness::policy_dir(
        &["verifier-sql"],
        &[("one.toml", verifier), ("two.toml", verifier)],
    );
    let set = PluginSet::load(&harness::runtime(), Some(&dir), &Defaults::default()).unwrap();
    assert_eq!(set.of_world(World::Verifier).count(), 2);
}

/// A policy file may run a plugin built into the binary, with no `.wasm`
/// beside it; a name the binary does not carry is refused, naming it.
#[test]
fn a_policy_file_runs_a_builtin_by_name() {
    let dir = harness::tempdir("builtin-by-name");
    std::fs::write(
        dir.join("keep.toml"),
        "world = \"retention\"\nwasm = \"builtin:retention_count.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\nkeep = 3\n",
    )
    .unwrap();
    let set = PluginSet::load(&harness::runtime(), Some(&dir), &Defaults::default()).unwrap();
    let keep = set.get("keep").unwrap();
    assert_eq!(keep.world(), World::Retention);
    assert!(!keep.policy().builtin(), "the policy is the directory's");
    std::fs::write(
        dir.join("keep.toml"),
        "world = \"retention\"\nwasm = \"builtin:retention_forever.wasm\"\n",
    )
    .unwrap();
    let e = PluginSet::load(&harness::runtime(), Some(&dir), &Defaults::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("retention_forever.wasm") && e.contains("retention_count.wasm"),
        "{e}"
    );
}
