//! The `firedrill` binary's plugin and policy commands.

use crate::harness;
use std::process::{Command, Output};

fn firedrill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_firedrill"))
        .args(args)
        .env("FIREDRILL_CACHE_DIR", harness::scratch().join("cli-cache"))
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn plugin_check_names_the_world_of_each_builtin() {
    for (c, world) in [
        ("planner-all", "dump-planner"),
        ("verifier-sql", "verifier"),
        ("retention-count", "retention"),
        ("authorizer-token", "authorizer"),
        ("redactor-secrets", "redactor"),
    ] {
        let path = harness::component(c);
        let o = firedrill(&["plugin", "check", path.to_str().unwrap()]);
        assert!(o.status.success(), "{c}: {}", text(&o));
        let out = text(&o);
        assert!(
            out.contains(&format!("world:    firedrill:plugin/{world}@0.1.0")),
            "{out}"
        );
        assert!(out.contains("compile:") && out.contains("bytes"), "{out}");
    }
    let o = firedrill(&[
        "plugin",
        "check",
        harness::component("verifier-sql").to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let imports: Vec<&str> = v["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert!(
        imports.contains(&"firedrill:plugin/sql@0.1.0"),
        "{imports:?}"
    );
}

#[test]
fn plugin_check_refuses_what_the_agent_could_not_load() {
    let dir = harness::tempdir("cli");
    let cases: [(&str, &[u8], &str); 3] = [
        ("text.wasm", b"hello", "not WebAssembly"),
        (
            "core.wasm",
            b"\0asm\x01\0\0\0",
            "core WebAssembly module, not a component",
        ),
        (
            "truncated.wasm",
            &std::fs::read(harness::component("retention-count")).unwrap()[..2000],
            "not a loadable",
        ),
    ];
    for (name, bytes, needle) in cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let o = firedrill(&["plugin", "check", p.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{name}: {}", text(&o));
        assert!(text(&o).contains(needle), "{name}: {}", text(&o));
    }
    let o = firedrill(&["plugin", "check", dir.join("absent.wasm").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("cannot read"), "{}", text(&o));
}

#[test]
fn policy_check_lists_a_good_directory_and_names_problems_in_a_bad_one() {
    let p = "world = \"retention\"\nwasm = \"retention_count.wasm\"\n[grants]\nlogging = true\nconfig = true";
    let dir = harness::policy_dir(&["retention-count"], &[("keep.toml", p)]);
    let o = firedrill(&["policy", "check", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("keep") && text(&o).contains("1 policies, all valid"),
        "{}",
        text(&o)
    );
    std::fs::write(
        dir.join("bad.toml"),
        "world = \"retention\"\nwasm = \"retention_count.wasm\"\n[limits]\ndeadline = \"forever\"",
    )
    .unwrap();
    let o = firedrill(&["policy", "check", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("bad.toml: limits.deadline:"),
        "{}",
        text(&o)
    );
}
