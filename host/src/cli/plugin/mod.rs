//! `firedrill plugin check|sign|new|test`: a plugin author's tools.

pub mod fixture;
pub mod new;

use anyhow::{bail, Context};
use firedrill::caps;
use firedrill::runtime::signature::{self, PluginTrust, Signed};
use firedrill::runtime::{Runtime, RuntimeOptions, World};
use serde::Serialize;
use std::path::Path;
use std::process::ExitCode;

#[derive(Serialize)]
struct Report {
    file: String,
    world: String,
    size: u64,
    sha256: String,
    compile_ms: f64,
    exports: Vec<String>,
    imports: Vec<Import>,
    /// Whether `<file>.sig` holds a valid signature, and by which key.
    signature: Signed,
}

#[derive(Serialize)]
struct Import {
    name: String,
    /// The `[grants]` key a policy needs for it; none for the sandboxed WASI base and types.
    grant: Option<&'static str>,
    #[serde(skip)]
    cap: caps::Import,
}

pub fn check(file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    // Any valid signature is shown; whether its key is trusted is the agent's call.
    let signature = PluginTrust::default()
        .check(file, &wasm)
        .map_err(|e| anyhow::anyhow!(e))?;
    // No cache: the compile time shown is the real one.
    let runtime = Runtime::new(RuntimeOptions {
        cache_dir: None,
        ..Default::default()
    })?;
    let compiled = runtime
        .compile(&wasm)
        .with_context(|| file.display().to_string())?;
    let (imports, exports) = runtime.describe(&compiled.component);
    let Some(world) = World::by_exports(&exports) else {
        bail!(
            "{}: exports [{}] match no firedrill world (dump-planner: plan + transform, verifier: verify, retention: plan, authorizer: authorize, redactor: redact, notifier: notify)",
            file.display(),
            exports.join(", ")
        );
    };
    let mut listed = Vec::new();
    for name in imports {
        let Some(cap) = caps::Import::of(&name) else {
            bail!(
                "{}: imports `{name}`, which firedrill does not provide to plugins",
                file.display()
            );
        };
        listed.push(Import {
            name,
            grant: cap.grant_key(),
            cap,
        });
    }
    if let Err(e) = firedrill::runtime::worlds::check_world(&runtime, world, &compiled.component) {
        bail!("{}: {e}", file.display());
    }
    let report = Report {
        file: file.display().to_string(),
        world: world.to_string(),
        size: wasm.len() as u64,
        sha256: compiled.sha256,
        compile_ms: compiled.compile_time.as_secs_f64() * 1000.0,
        exports,
        imports: listed,
        signature,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("plugin:   {}", report.file);
    println!("world:    {}", report.world);
    println!("size:     {} bytes", report.size);
    println!("sha256:   {}", report.sha256);
    println!("compile:  {:.1} ms", report.compile_ms);
    println!("exports:  {}", report.exports.join(", "));
    match &report.signature {
        Signed::Unsigned => println!("signed:   no"),
        Signed::BuiltIn => println!("signed:   built in"),
        Signed::Trusted(k) | Signed::Untrusted(k) => println!("signed:   by {k}"),
    }
    for (i, imp) in report.imports.iter().enumerate() {
        let why = match (imp.grant, imp.cap) {
            (Some(g), _) => format!("needs `{g}` under [grants]"),
            (None, caps::Import::Types) => "types only".to_string(),
            (None, _) => "WASI base, sandboxed: no files, environment or network".to_string(),
        };
        println!(
            "{}{:<44} {why}",
            if i == 0 { "imports:  " } else { "          " },
            imp.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `firedrill plugin sign --key KEYFILE FILE.wasm`: writes `FILE.wasm.sig`.
pub fn sign(key: &Path, file: &Path) -> anyhow::Result<ExitCode> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (text, public) = signature::sign(key, &wasm)?;
    let out = signature::sig_path(file);
    std::fs::write(&out, text).with_context(|| format!("cannot write {}", out.display()))?;
    println!("signed {} by {public}: {}", file.display(), out.display());
    println!("agents that trust this key list it in agent.trusted_plugin_keys (or FIREDRILL_TRUSTED_PLUGIN_KEYS)");
    Ok(ExitCode::SUCCESS)
}
