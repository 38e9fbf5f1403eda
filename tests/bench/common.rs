//! What the benches share: one built-in plugin, loaded as the agent would
//! (no code cache, so nothing carries over between runs).

use firedrill::runtime::{Plugin, Policy, Runtime, RuntimeOptions};
use std::path::Path;

/// `target/components/<file>` under a policy whose other lines are `rest`
/// (limits, grants, config).
pub fn load_plugin(world: &str, file: &str, rest: &str) -> Plugin {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let wasm = root.join("target/components").join(file);
    assert!(
        wasm.exists(),
        "{} missing: run scripts/build-plugins",
        wasm.display()
    );
    let text = format!("world = \"{world}\"\nwasm = \"{}\"\n{rest}", wasm.display());
    let policy = Policy::parse(&root.join("bench.toml"), &text, |_| None).unwrap();
    let runtime = Runtime::new(RuntimeOptions {
        cache_dir: None,
        ..Default::default()
    })
    .unwrap();
    Plugin::load(&runtime, policy).unwrap()
}
