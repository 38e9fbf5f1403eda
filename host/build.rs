// `sqlx::migrate!` embeds host/migrations at compile time; a new or edited
// migration file must rebuild the crate, which cargo cannot know by itself.
//
// The built-in plugins are embedded too (`runtime::builtin`): the
// components `scripts/build-plugins` leaves in target/components (or
// FIREDRILL_COMPONENTS), so that a binary with no policies directory still
// plans, verifies, prunes and redacts. Built without them (a plain `cargo
// build` before `scripts/build-plugins`), the binary says so at start-up
// rather than failing to build: cargo cannot build wasm32 components here.
use std::path::PathBuf;

/// The built-in plugins' crates; the wasm of `a-b` is `a_b.wasm`.
const BUILTINS: &[&str] = &[
    "planner-all",
    "verifier-sql",
    "verifier-keys",
    "retention-count",
    "retention-age",
    "retention-gfs",
    "authorizer-token",
    "authorizer-signed",
    "redactor-secrets",
    "notifier-default",
];

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=FIREDRILL_COMPONENTS");
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let dir = root.join(
        std::env::var_os("FIREDRILL_COMPONENTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| "target/components".into()),
    );
    // Watched as a directory (it must exist for that: a missing path would
    // rerun this script, and rebuild the crate, on every build), so that
    // components built later are seen.
    let _ = std::fs::create_dir_all(&dir);
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut code = String::from("&[\n");
    let mut missing = vec![];
    for crate_name in BUILTINS {
        let file = format!("{}.wasm", crate_name.replace('-', "_"));
        let path = dir.join(&file);
        if path.is_file() {
            println!("cargo:rerun-if-changed={}", path.display());
            let path = path.canonicalize().unwrap();
            code.push_str(&format!(
                "    ({file:?}, include_bytes!({:?})),\n",
                path.display().to_string()
            ));
        } else {
            missing.push(file);
        }
    }
    code.push_str("]\n");
    if !missing.is_empty() {
        println!(
            "cargo:warning=built without the built-in plugins {} (not in {}): run scripts/build-plugins, then build again",
            missing.join(", "),
            dir.display()
        );
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin_plugins.rs");
    std::fs::write(out, code).unwrap();
}
