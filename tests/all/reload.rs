//! Policies hot reload: the whole set swaps atomically, calls in flight finish
//! on the old version, a bad set never goes live, a ConfigMap swap is seen.

use crate::harness;
use crate::hostile_plugins::facts;
use firedrill::caps::types::{Decision, Header};
use firedrill::caps::CallContext;
use firedrill::runtime::{Policies, World};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEBOUNCE: Duration = Duration::from_millis(100);

fn token_policy(principal: &str) -> String {
    format!("world = \"authorizer\"\nwasm = \"authorizer_token.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\ntoken = \"t\"\nprincipal = \"{principal}\"")
}

/// The principal the authorizer in force answers with.
fn principal(p: &Policies) -> String {
    let set = p.current();
    let plugin = set
        .of_world(World::Authorizer)
        .next()
        .expect("an authorizer");
    let mut f = facts("/v1/backups");
    f.headers.push(Header {
        name: "authorization".into(),
        value: "Bearer t".into(),
    });
    match plugin
        .authorize(&CallContext::default(), &f)
        .expect("the call succeeds")
    {
        Decision::Allow(g) => g.principal,
        Decision::Deny(r) => panic!("denied: {}", r.reason),
    }
}

/// Writes a file the way deploy tools do: aside, then renamed into place.
fn land(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn wait_for(p: &Policies, want: &str) -> Duration {
    let start = Instant::now();
    while principal(p) != want {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never served {want}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

#[test]
fn a_replaced_plugin_serves_every_call_without_a_failure() {
    let dir = harness::policy_dir(&["authorizer-token"], &[("auth.toml", &token_policy("v1"))]);
    let policies = Policies::load(&harness::runtime(), Some(&dir), Default::default()).unwrap();
    let _watch = policies.watch(DEBOUNCE).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let (p, stop, calls, failures) = (
                policies.clone(),
                stop.clone(),
                calls.clone(),
                failures.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let set = p.current();
                    let plugin = set.of_world(World::Authorizer).next().unwrap();
                    let mut f = facts("/v1/backups");
                    f.headers.push(Header {
                        name: "authorization".into(),
                        value: "Bearer t".into(),
                    });
                    match plugin.authorize(&CallContext::default(), &f) {
                        Ok(Decision::Allow(_)) => {}
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for v in ["v2", "v3", "v4"] {
        land(&dir, "auth.toml", &token_policy(v));
        wait_for(&policies, v);
    }
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.join().unwrap();
    }
    assert!(
        calls.load(Ordering::Relaxed) > 100,
        "calls were running: {}",
        calls.load(Ordering::Relaxed)
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(policies.stats.succeeded.load(Ordering::Relaxed) >= 4);
}

#[test]
fn an_invalid_policy_is_rejected_and_the_old_set_keeps_serving() {
    let dir = harness::policy_dir(
        &["authorizer-token"],
        &[("auth.toml", &token_policy("good"))],
    );
    let policies = Policies::load(&harness::runtime(), Some(&dir), Default::default()).unwrap();
    let _watch = policies.watch(DEBOUNCE).unwrap();
    land(
        &dir,
        "broken.toml",
        "world = \"authorizer\"\nwasm = \"authorizer_token.wasm\"\n[limits]\nmemory = \"lots\"",
    );
    let start = Instant::now();
    while policies.stats.failed.load(Ordering::Relaxed) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the bad policy was never looked at"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        policies
            .last_error()
            .unwrap()
            .contains("broken.toml: limits.memory"),
        "{:?}",
        policies.last_error()
    );
    assert_eq!(principal(&policies), "good", "the old set still serves");
    // Also when the new version itself is broken: the old one stays.
    land(
        &dir,
        "auth.toml",
        &token_policy("changed").replace("[grants]\nconfig = true", "[grants]"),
    );
    std::fs::remove_file(dir.join("broken.toml")).unwrap();
    std::thread::sleep(DEBOUNCE * 5);
    assert_eq!(principal(&policies), "good");
    assert!(
        policies
            .last_error()
            .unwrap()
            .contains("does not grant `config`"),
        "{:?}",
        policies.last_error()
    );
    // Fixed, it goes live.
    land(&dir, "auth.toml", &token_policy("fixed"));
    wait_for(&policies, "fixed");
    assert_eq!(policies.last_error(), None);
}

#[test]
fn a_configmap_data_swap_is_picked_up() {
    // Kubernetes: files are symlinks through ..data, which is swapped atomically.
    let dir = harness::tempdir("configmap");
    let wasm = std::fs::read(harness::component("authorizer-token")).unwrap();
    let version = |n: u32, principal: &str| {
        let v = dir.join(format!("..2026_11_22_21_00_0{n}.000"));
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("authorizer_token.wasm"), &wasm).unwrap();
        std::fs::write(v.join("auth.toml"), token_policy(principal)).unwrap();
        v.file_name().unwrap().to_string_lossy().into_owned()
    };
    let first = version(1, "cm-1");
    std::os::unix::fs::symlink(&first, dir.join("..data")).unwrap();
    for f in ["auth.toml", "authorizer_token.wasm"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
    }
    let policies = Policies::load(&harness::runtime(), Some(&dir), Default::default()).unwrap();
    let _watch = policies.watch(DEBOUNCE).unwrap();
    assert_eq!(principal(&policies), "cm-1");
    let second = version(2, "cm-2");
    std::os::unix::fs::symlink(&second, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join(&first)).unwrap();
    wait_for(&policies, "cm-2");
}

#[test]
fn a_plugin_that_traps_at_start_up_never_goes_live() {
    // The self-test instantiates each plugin: a component that cannot start
    // within its limits is refused with the rest of its set.
    let dir = harness::policy_dir(
        &["authorizer-token"],
        &[(
            "auth.toml",
            &token_policy("ok").replace("[grants]", "[limits]\nmemory = \"1MiB\"\n[grants]"),
        )],
    );
    let e = Policies::load(&harness::runtime(), Some(&dir), Default::default())
        .err()
        .expect("refused");
    assert!(e.to_string().contains("auth.toml: self-test"), "{e}");
}
