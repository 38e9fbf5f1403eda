//! Compiled code is cached on disk by sha256 and engine: a restart does not recompile.

use crate::harness;
use firedrill::runtime::{Runtime, RuntimeOptions};

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
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
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
    let entry = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
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
    let n = std::fs::read_dir(&dir).unwrap().count();
    assert!(
        c.from_cache == (n == 1),
        "from_cache={} with {n} entries",
        c.from_cache
    );
}
