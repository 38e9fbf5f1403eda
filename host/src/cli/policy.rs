//! `firedrill policy check DIR`.

use firedrill::runtime::PluginSet;
use serde::Serialize;
use std::path::Path;
use std::process::ExitCode;

#[derive(Serialize)]
struct Row {
    name: String,
    world: String,
    file: String,
    wasm: String,
    sha256: String,
    grants: Vec<String>,
    memory: u64,
    deadline_ms: u128,
    fuel: Option<u64>,
    /// A built-in default for a world the directory leaves empty.
    builtin: bool,
}

pub fn check(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let runtime = super::plugin_runtime()?;
    let set = match PluginSet::load(&runtime, Some(dir), &Default::default()) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} problem(s); the agent would keep its previous policies",
                dir.display(),
                errors.0.len()
            );
            return Ok(ExitCode::from(1));
        }
    };
    let rows: Vec<Row> = set
        .all()
        .iter()
        .map(|p| {
            let pol = p.policy();
            let grants = pol.grants.summary();
            Row {
                name: p.name().to_string(),
                world: p.world().name().to_string(),
                file: pol.file.display().to_string(),
                wasm: pol.wasm.display().to_string(),
                sha256: p.sha256().to_string(),
                grants,
                memory: pol.limits.memory,
                deadline_ms: pol.limits.deadline.as_millis(),
                fuel: pol.limits.fuel,
                builtin: pol.builtin(),
            }
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<22} {:<13} {:<14} {:>9} {:>9}  grants",
            "policy", "world", "sha256", "memory", "deadline"
        );
        for r in &rows {
            println!(
                "{:<22} {:<13} {:<14} {:>8}M {:>7}ms  {}",
                if r.builtin {
                    format!("{} (built-in)", r.name)
                } else {
                    r.name.clone()
                },
                r.world,
                &r.sha256[..12],
                r.memory >> 20,
                r.deadline_ms,
                r.grants.join(", ")
            );
        }
        let builtins = rows.iter().filter(|r| r.builtin).count();
        println!(
            "{}: {} policies, all valid{}",
            dir.display(),
            rows.len() - builtins,
            if builtins > 0 {
                format!(" (and {builtins} built-in for the worlds it leaves empty)")
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
