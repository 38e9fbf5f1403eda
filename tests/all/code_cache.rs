//! Compiled code is cached on disk by sha256 and engine: a restart does not recompile.

use crate::harness;
use firedrill::runtime::{Runtime, RuntimeOptions};

/// The compiled entries of a cache directory (its key file aside).
fn entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect()
}

fn runtime_with(dir: &std::path::Path) -> Runtime {
    Runtime::new(RuntimeOptions {
        cache_dir: Some(dir.to_path_buf()),
        max_instances: 8,
        max_memory: 256 << 20,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn a_second_runtime_loads_compiled_code_from_disk() {
    let dir = harness::tempdir("cache");
    let wasm = std::fs::read(harness::component("redactor-secrets")).unwrap();
    let first = runtime_with(&dir).compile(&wasm).unwrap();
    assert!(!first.from_cache);
    let files: Vec<_> = entries(&dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].starts_with(&first.sha256) && files[0].ends_with(".cwasm"),
        "{files:?}"
    );
    // A new runtime (a restart) with the same engine settings.
    let second = runtime_with(&dir).compile(&wasm).unwrap();
    assert!(second.from_cache);
    assert_eq!(second.sha256, first.sha256);
}

#[test]
fn a_damaged_cache_entry_is_recompiled() {
    let dir = harness::tempdir("cache");
    let wasm = std::fs::read(harness::component("retention-count")).unwrap();
    runtime_with(&dir).compile(&wasm).unwrap();
    let entry = entries(&dir).pop().unwrap();
    std::fs::write(&entry, b"not compiled code").unwrap();
    let again = runtime_with(&dir).compile(&wasm).unwrap();
    assert!(!again.from_cache);
    // And the entry was replaced with good code.
    assert!(runtime_with(&dir).compile(&wasm).unwrap().from_cache);
}

#[test]
fn other_engine_settings_do_not_share_entries() {
    let dir = harness::tempdir("cache");
    let wasm = std::fs::read(harness::component("retention-count")).unwrap();
    runtime_with(&dir).compile(&wasm).unwrap();
    let other = Runtime::new(RuntimeOptions {
        cache_dir: Some(dir.clone()),
        max_instances: 8,
        max_memory: 512 << 20,
        ..Default::default()
    })
    .unwrap();
    let c = other.compile(&wasm).unwrap();
    // Either a separate entry or a valid shared one; never a mismatched load.
    let n = entries(&dir).len();
    assert!(
        c.from_cache == (n == 1),
        "from_cache={} with {n} entries",
        c.from_cache
    );
}

#[test]
fn an_entry_others_can_write_is_refused_and_recompiled() {
    use std::os::unix::fs::PermissionsExt;
    let dir = harness::tempdir("cache");
    let wasm = std::fs::read(harness::component("retention-count")).unwrap();
    runtime_with(&dir).compile(&wasm).unwrap();
    let entry = entries(&dir).pop().unwrap();
    assert_eq!(
        std::fs::metadata(&entry).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Good code, but anyone could have swapped it in meanwhile.
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
    let again = runtime_with(&dir).compile(&wasm).unwrap();
    assert!(!again.from_cache, "a world-writable entry was loaded");
    // Replaced by a private entry, which loads, and the plugin still works.
    assert_eq!(
        std::fs::metadata(&entry).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(runtime_with(&dir).compile(&wasm).unwrap().from_cache);
    let policies = harness::policy_dir(
        &["retention-count"],
        &[("keep.toml", "world = \"retention\"\nwasm = \"retention_count.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\nkeep = 1\n")],
    );
    let set = firedrill::runtime::PluginSet::load(
        &runtime_with(&dir),
        Some(&policies),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(
        set.all().iter().filter(|p| !p.policy().builtin()).count(),
        1
    );
}

#[test]
fn code_from_another_cache_or_a_stranger_is_refused() {
    let dir = harness::tempdir("cache");
    let wasm = std::fs::read(harness::component("retention-count")).unwrap();
    runtime_with(&dir).compile(&wasm).unwrap();
    let entry = entries(&dir).pop().unwrap();
    // Valid native code for this very engine, compiled under another
    // cache's key (what a planted file would be, at best).
    let other = harness::tempdir("cache-other");
    runtime_with(&other).compile(&wasm).unwrap();
    let foreign = entries(&other).pop().unwrap();
    assert_eq!(foreign.file_name(), entry.file_name());
    std::fs::copy(&foreign, &entry).unwrap();
    assert!(
        !runtime_with(&dir).compile(&wasm).unwrap().from_cache,
        "code tagged under another key was loaded"
    );
    // Untagged code, as wasmtime serializes it (and older agents cached it).
    std::fs::write(&entry, std::fs::read(&foreign).unwrap()[32..].to_vec()).unwrap();
    assert!(!runtime_with(&dir).compile(&wasm).unwrap().from_cache);
    // Each refusal recompiled and replaced the entry, which loads again.
    assert!(runtime_with(&dir).compile(&wasm).unwrap().from_cache);
}

#[test]
fn a_key_file_others_can_read_disables_the_cache_not_the_runtime() {
    use std::os::unix::fs::PermissionsExt;
    let dir = harness::tempdir("cache");
    let wasm = std::fs::read(harness::component("retention-count")).unwrap();
    runtime_with(&dir).compile(&wasm).unwrap();
    let key = dir.join("cache.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = runtime_with(&dir).compile(&wasm).unwrap();
    assert!(
        !c.from_cache,
        "entries were trusted under a key others can read"
    );
}
