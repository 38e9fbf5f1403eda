//! Plugins: the components `scripts/build-plugins` built, policy
//! directories holding copies of them, and a runtime whose code cache lives
//! in the run's scratch directory.

use super::{root, scratch, tempdir};
use std::path::PathBuf;

/// A plugin component built by `scripts/build-plugins`.
pub fn component(crate_name: &str) -> PathBuf {
    let p = root()
        .join("target/components")
        .join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-plugins first (scripts/test does)",
        p.display()
    );
    p
}

/// A runtime whose code cache lives in this run's scratch directory.
pub fn runtime() -> firedrill::runtime::Runtime {
    firedrill::runtime::Runtime::new(firedrill::runtime::RuntimeOptions {
        cache_dir: Some(scratch().join("code-cache")),
        max_instances: 64,
        max_memory: 1 << 30,
        trust: Default::default(),
    })
    .unwrap()
}

/// A policies directory holding `policies` (file name, TOML) and a copy of
/// each named component as `<crate>.wasm`.
pub fn policy_dir(components: &[&str], policies: &[(&str, &str)]) -> PathBuf {
    let dir = tempdir("policies");
    for c in components {
        std::fs::copy(
            component(c),
            dir.join(format!("{}.wasm", c.replace('-', "_"))),
        )
        .unwrap();
    }
    for (name, text) in policies {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

/// Loads one plugin from a policy text in a fresh directory.
pub fn load(
    component_name: &str,
    policy: &str,
) -> Result<firedrill::runtime::Plugin, firedrill::runtime::PolicyError> {
    let dir = policy_dir(&[component_name], &[("p.toml", policy)]);
    let policy = firedrill::runtime::Policy::load(&dir.join("p.toml"))?;
    firedrill::runtime::Plugin::load(&runtime(), policy)
}
