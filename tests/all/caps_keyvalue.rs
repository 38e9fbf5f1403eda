//! The keyvalue capability against a real Redis: scoped to granted prefixes,
//! under the agent's namespace.

use crate::harness;
use crate::hostile_plugins::facts;
use firedrill::caps::keyvalue::KvTarget;
use firedrill::caps::types::Decision;
use firedrill::caps::CallContext;
use firedrill::runtime::Plugin;

fn plugin() -> Plugin {
    harness::load(
        "hostile",
        "world = \"authorizer\"\nwasm = \"hostile.wasm\"\n[grants]\nkeyvalue = { prefixes = [\"rl:\", \"revoked:\"] }",
    )
    .unwrap()
}

fn ctx(namespace: &str) -> CallContext {
    CallContext {
        keyvalue: Some(KvTarget::new(&harness::redis().url(), namespace).unwrap()),
        ..Default::default()
    }
}

fn call(p: &Plugin, ctx: &CallContext, path: &str) -> Result<String, String> {
    match p.authorize(ctx, &facts(path)).unwrap() {
        Decision::Allow(g) => Ok(g.principal),
        Decision::Deny(r) => Err(r.reason),
    }
}

#[test]
fn counters_and_values_live_under_the_namespace() {
    let (p, ctx) = (plugin(), ctx("fdtest:kv1:"));
    assert_eq!(call(&p, &ctx, "/kv/incr/rl:alice/5"), Ok("5".into()));
    assert_eq!(call(&p, &ctx, "/kv/incr/rl:alice/2"), Ok("7".into()));
    assert_eq!(call(&p, &ctx, "/kv/set/revoked:tok1/yes"), Ok("ok".into()));
    assert_eq!(call(&p, &ctx, "/kv/get/revoked:tok1"), Ok("yes".into()));
    assert_eq!(
        call(&p, &ctx, "/kv/exists/revoked:tok2"),
        Ok("false".into())
    );
    assert_eq!(
        call(&p, &ctx, "/kv/list/x"),
        Ok("revoked:tok1,rl:alice".into())
    );
    assert_eq!(call(&p, &ctx, "/kv/del/revoked:tok1"), Ok("ok".into()));
    assert_eq!(call(&p, &ctx, "/kv/get/revoked:tok1"), Ok("<none>".into()));
    // What Redis holds: the namespaced key, nothing bare.
    let mut c = harness::redis().connection();
    let v: i64 = redis::cmd("GET")
        .arg("fdtest:kv1:rl:alice")
        .query(&mut c)
        .unwrap();
    assert_eq!(v, 7);
    let bare: Option<String> = redis::cmd("GET").arg("rl:alice").query(&mut c).unwrap();
    assert_eq!(bare, None);
}

#[test]
fn keys_outside_the_granted_prefixes_are_denied() {
    let (p, ctx) = (plugin(), ctx("fdtest:kv2:"));
    let mut c = harness::redis().connection();
    let _: () = redis::cmd("SET")
        .arg("fdtest:kv2:secret")
        .arg("agent-owned")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        call(&p, &ctx, "/kv/get/secret"),
        Err("access-denied".into())
    );
    assert_eq!(
        call(&p, &ctx, "/kv/set/other:x/1"),
        Err("access-denied".into())
    );
    assert_eq!(call(&p, &ctx, "/kv/incr/r/1"), Err("access-denied".into()));
    // Listing shows only granted keys.
    assert_eq!(call(&p, &ctx, "/kv/list/x"), Ok("".into()));
    let still: String = redis::cmd("GET")
        .arg("fdtest:kv2:secret")
        .query(&mut c)
        .unwrap();
    assert_eq!(still, "agent-owned");
}

#[test]
fn without_a_store_the_plugin_gets_an_error_not_a_crash() {
    let p = plugin();
    let e = call(&p, &CallContext::default(), "/kv/get/rl:x").unwrap_err();
    assert!(e.contains("no-such-store"), "{e}");
    // A Redis that is down is an error of the call too.
    let down = CallContext {
        keyvalue: Some(
            KvTarget::new(
                &format!("redis://127.0.0.1:{}/", harness::free_port()),
                "x:",
            )
            .unwrap(),
        ),
        ..Default::default()
    };
    let e = call(&p, &down, "/kv/get/rl:x").unwrap_err();
    assert!(e.starts_with("other: redis"), "{e}");
}

#[test]
fn a_huge_value_is_refused_before_it_is_read() {
    let ctx = ctx("fdtest:kvbig:");
    let mut c = harness::redis().connection();
    let big = vec![b'x'; 8 << 20];
    let _: () = redis::cmd("SET")
        .arg("fdtest:kvbig:rl:big")
        .arg(&big)
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("fdtest:kvbig:rl:small")
        .arg("tiny")
        .query(&mut c)
        .unwrap();
    for (grant, limit) in [
        ("keyvalue = { prefixes = [\"rl:\"] }", "4194304"),
        (
            "keyvalue = { prefixes = [\"rl:\"], max_bytes = \"1MiB\" }",
            "1048576",
        ),
    ] {
        let p = harness::load(
            "hostile",
            &format!("world = \"authorizer\"\nwasm = \"hostile.wasm\"\n[grants]\n{grant}"),
        )
        .unwrap();
        let e = call(&p, &ctx, "/kv/get/rl:big").unwrap_err();
        assert!(
            e.contains("8388608 bytes") && e.contains("max_bytes") && e.contains(limit),
            "{grant}: {e}"
        );
        // The next call is served.
        assert_eq!(call(&p, &ctx, "/kv/get/rl:small"), Ok("tiny".into()));
        assert_eq!(call(&p, &ctx, "/kv/get/rl:none"), Ok("<none>".into()));
    }
    let _: () = redis::cmd("DEL")
        .arg("fdtest:kvbig:rl:big")
        .arg("fdtest:kvbig:rl:small")
        .query(&mut c)
        .unwrap();
}
