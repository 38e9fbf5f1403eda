//! A misbehaving plugin is contained: each misbehaviour is an error of that
//! call, named for what happened, and the next call of a well-behaved plugin
//! (and of the same plugin) succeeds.

use crate::harness;
use firedrill::caps::types::{Decision, RequestFacts};
use firedrill::caps::CallContext;
use firedrill::runtime::{CallError, Plugin};
use std::time::{Duration, Instant};

const HOSTILE: &str = r#"
world = "authorizer"
wasm = "hostile.wasm"
[limits]
memory = "32MiB"
deadline = "300ms"
output = "1MiB"
[grants]
keyvalue = { prefixes = ["rl:"] }
"#;

pub fn facts(path: &str) -> RequestFacts {
    RequestFacts {
        method: "GET".into(),
        path: path.into(),
        query: None,
        headers: vec![],
        peer: "127.0.0.1".into(),
        time: 0,
        request_id: "t".into(),
    }
}

fn hostile() -> Plugin {
    harness::load("hostile", HOSTILE).unwrap()
}

fn well_behaved() -> Plugin {
    let p = harness::load(
        "authorizer-token",
        "world = \"authorizer\"\nwasm = \"authorizer_token.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\ntoken = \"t0k\"\nrole = \"admin\"",
    )
    .unwrap();
    p
}

/// After a failure, both a good plugin and the same hostile one still serve.
fn still_serving(hostile: &Plugin, good: &Plugin) {
    let mut f = facts("/v1/backups");
    f.headers.push(firedrill::caps::types::Header {
        name: "authorization".into(),
        value: "Bearer t0k".into(),
    });
    assert!(matches!(
        good.authorize(&CallContext::default(), &f).unwrap(),
        Decision::Allow(_)
    ));
    match hostile
        .authorize(&CallContext::default(), &facts("/ok"))
        .unwrap()
    {
        Decision::Allow(g) => assert_eq!(g.principal, "ok"),
        d => panic!("{d:?}"),
    }
}

#[test]
fn an_infinite_loop_is_stopped_at_its_deadline() {
    let (p, good) = (hostile(), well_behaved());
    let start = Instant::now();
    let e = p
        .authorize(&CallContext::default(), &facts("/loop"))
        .unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, CallError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("limits.deadline"), "{e}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "stopped after {took:?}"
    );
    assert_eq!(
        p.stats()
            .timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    still_serving(&p, &good);
}

#[test]
fn fuel_bounds_instructions_when_a_policy_sets_it() {
    let p = harness::load(
        "hostile",
        &HOSTILE.replace("output = \"1MiB\"", "output = \"1MiB\"\nfuel = 5_000_000"),
    )
    .unwrap();
    let e = p
        .authorize(&CallContext::default(), &facts("/loop"))
        .unwrap_err();
    assert!(
        matches!(
            e,
            CallError::OutOfFuel {
                fuel: 5_000_000,
                ..
            }
        ),
        "{e}"
    );
    still_serving(&p, &well_behaved());
}

#[test]
fn unbounded_memory_growth_is_stopped_at_its_limit() {
    let (p, good) = (hostile(), well_behaved());
    let e = p
        .authorize(&CallContext::default(), &facts("/grow"))
        .unwrap_err();
    assert!(
        matches!(e, CallError::OutOfMemory { limit, .. } if limit == 32 << 20),
        "{e}"
    );
    still_serving(&p, &good);
}

#[test]
fn a_trap_is_an_error_quoting_the_panic() {
    let (p, good) = (hostile(), well_behaved());
    let e = p
        .authorize(&CallContext::default(), &facts("/trap"))
        .unwrap_err();
    let CallError::Trap { message, .. } = &e else {
        panic!("{e}")
    };
    assert!(
        message.contains("hostile plugin panics on purpose"),
        "{message}"
    );
    still_serving(&p, &good);
}

#[test]
fn deep_recursion_is_a_trap() {
    let (p, good) = (hostile(), well_behaved());
    let e = p
        .authorize(&CallContext::default(), &facts("/recurse"))
        .unwrap_err();
    assert!(matches!(e, CallError::Trap { .. }), "{e}");
    still_serving(&p, &good);
}

#[test]
fn an_oversized_output_is_refused() {
    let (p, good) = (hostile(), well_behaved());
    let e = p
        .authorize(&CallContext::default(), &facts("/big/4"))
        .unwrap_err();
    assert!(
        matches!(e, CallError::OutputTooLarge { size, limit, .. } if size > 4 << 20 && limit == 1 << 20),
        "{e}"
    );
    // Under the limit the same call passes.
    assert!(p
        .authorize(&CallContext::default(), &facts("/big/0"))
        .is_ok());
    still_serving(&p, &good);
}

#[test]
fn an_ungranted_import_is_refused_at_load_naming_it() {
    let e = harness::load("hostile", "world = \"authorizer\"\nwasm = \"hostile.wasm\"")
        .err()
        .expect("must be refused");
    assert_eq!(e.field.as_deref(), Some("grants"));
    assert!(
        e.message.contains("wasi:keyvalue/store@0.2.0-draft") && e.message.contains("keyvalue"),
        "{e}"
    );
    still_serving(&hostile(), &well_behaved());
}

#[test]
fn the_sandbox_has_no_environment_and_no_files() {
    std::env::set_var("FIREDRILL_SECRET_PROBE", "do-not-leak");
    match hostile()
        .authorize(&CallContext::default(), &facts("/env"))
        .unwrap()
    {
        Decision::Allow(g) => assert_eq!(g.principal, "env=0 files=0"),
        d => panic!("{d:?}"),
    }
}

#[test]
fn host_files_and_sockets_are_out_of_reach() {
    let (p, good) = (hostile(), well_behaved());
    let refused = |path: &str| match p.authorize(&CallContext::default(), &facts(path)) {
        Ok(Decision::Deny(r)) => r.reason,
        other => panic!("{path}: {other:?}"),
    };
    let why = refused("/read");
    assert!(why.starts_with("read: "), "{why}");
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let why = refused(&format!("/net/{port}"));
    assert!(
        why.starts_with("net: ") && why.contains("access-denied"),
        "{why}"
    );
    assert!(
        listener.accept().is_err(),
        "the plugin reached a host socket"
    );
    still_serving(&p, &good);
}

#[test]
fn a_plugin_of_another_world_is_not_called() {
    let p = hostile();
    let e = p
        .verify(
            &CallContext::default(),
            &crate::builtin_plugins::drill_context(vec![]),
        )
        .unwrap_err();
    assert!(matches!(e, CallError::WrongWorld { .. }), "{e}");
}

#[test]
fn calls_share_no_state() {
    let p = hostile();
    for _ in 0..3 {
        // A static counter inside the plugin: a reused instance would count up.
        match p
            .authorize(&CallContext::default(), &facts("/count"))
            .unwrap()
        {
            Decision::Allow(g) => assert_eq!(g.principal, "1"),
            d => panic!("{d:?}"),
        }
        assert!(p
            .authorize(&CallContext::default(), &facts("/trap"))
            .is_err());
        assert!(p.authorize(&CallContext::default(), &facts("/ok")).is_ok());
    }
    assert_eq!(
        p.stats().calls.load(std::sync::atomic::Ordering::Relaxed),
        9
    );
    assert_eq!(
        p.stats().traps.load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}
