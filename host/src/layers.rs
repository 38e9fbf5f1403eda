//! The host crate's dependencies run one way: this test reads every source
//! file under `src/` and fails on any path into a module of a higher layer
//! (see [`LAYERS`]), naming the file, the line and the rule.
//!
//! It reads paths, not the compiler's name resolution: `crate::m`,
//! `$crate::m`, `firedrill::m` (the binary's way into the library),
//! `crate::{m::.., ..}` groups and `super::` chains that climb to the crate
//! root, in `use` items and inline paths alike, tests included. Comments and
//! string literals are not code and are skipped. A module reached only
//! through a re-export of a lower module would not be seen; the layering
//! keeps re-exports downward too, so there are none.

use std::collections::BTreeSet;
use std::path::Path;

/// The layers of the host crate, lowest first. A module may import the
/// modules of its own layer and of the layers below it; it never imports a
/// module of a layer above. Written out, with what each layer never imports:
///
/// 1. `layers`: this check (test-only); imports nothing of the crate.
/// 2. `telemetry` (logs, metrics, OTLP, redaction, job progress): imports no
///    other module. The redactor plugin reaches it through
///    `telemetry::redact::PluginRedactor`, which the plugin host implements.
/// 3. `archive` (the store, manifests, chunks, encryption and keys): never
///    servers, the plugin host, coord, jobs or anything above.
/// 4. `servers` (PostgreSQL and Redis clients, TLS, local throwaway
///    servers): never the plugin host, coord, jobs or anything above; its
///    errors are `servers::ServerError`, which the jobs wrap.
/// 5. `runtime` + `caps` (the plugin host: engine, policies, plugins, and
///    the capabilities they are granted; one layer, since a capability uses
///    the runtime's types and the runtime links the capabilities): never
///    coord, jobs or anything above.
/// 5½. `notify` (the notifier's messages and their delivery): never coord,
///    jobs or anything above; the agent hands it each job's outcome.
/// 6. `coord` (leases, the drill quota, events): never jobs, catalog,
///    config, agent, api, launch, the binary.
/// 7. `jobs` (backup, drill, restore, prune, rekey): never catalog, config,
///    agent, api, launch, the binary; a job takes its options, not the
///    configuration, and never leases or counts itself.
/// 8. `catalog` (the Postgres catalog of backups and drills): never config,
///    agent, api, launch, the binary.
/// 9. `config` (the file, the environment, validation): never agent, api,
///    launch, the binary.
/// 10. `agent` (assembly, schedules, dispatch, the job table): never api,
///     launch, the binary.
/// 11. `api` (HTTP routes, authorization, events): never launch, the binary.
/// 12. `launch` (the composition root: a running agent): never the binary.
/// 13. `cli` + `main` (the binary, `src/main.rs` and `src/cli/`): may import
///     everything.
pub(crate) const LAYERS: &[&[&str]] = &[
    &["layers"],
    &["telemetry"],
    &["archive"],
    &["servers"],
    &["runtime", "caps"],
    &["notify"],
    &["coord"],
    &["jobs"],
    &["catalog"],
    &["config"],
    &["agent"],
    &["api"],
    &["launch"],
    &["cli", "main"],
];

/// Names that start a path at a crate root: the library's own, and the
/// binary's way into the library.
const ROOTS: [&str; 3] = ["crate", "$crate", "firedrill"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level module a file under `src/` belongs to (`None`: the library
/// root, which only declares the modules).
fn top_module(file: &str) -> Option<&str> {
    match file {
        "lib.rs" => None,
        "main.rs" => Some("main"),
        _ => Some(
            file.split('/')
                .next()
                .map(|f| f.strip_suffix(".rs").unwrap_or(f))
                .unwrap_or(file),
        ),
    }
}

/// The module path of a file: `jobs/backup/mod.rs` is `jobs::backup`,
/// `jobs/prune.rs` is `jobs::prune`.
fn module_path(file: &str) -> Vec<String> {
    let mut parts: Vec<String> = file.split('/').map(str::to_string).collect();
    let last = parts.pop().unwrap_or_default();
    if !matches!(last.as_str(), "mod.rs" | "lib.rs" | "main.rs") {
        parts.push(last.trim_end_matches(".rs").to_string());
    }
    parts
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
}

/// The code tokens of a Rust source with their 1-based lines: comments,
/// string, byte-string, raw-string and char literals left out.
fn tokens(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    // Skips to the end of a quoted literal opened just before `i`.
    let skip_quoted = |i: &mut usize, line: &mut usize, quote: char| {
        while *i < c.len() && c[*i] != quote {
            if c[*i] == '\\' {
                *i += 1;
            }
            if c.get(*i) == Some(&'\n') {
                *line += 1;
            }
            *i += 1;
        }
        *i += 1;
    };
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ch == '"' {
            i += 1;
            skip_quoted(&mut i, &mut line, '"');
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\''), else a lifetime or a label.
            if next == Some('\\') {
                i += 2;
                skip_quoted(&mut i, &mut line, '\'');
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' || (ch == '$' && next == Some('c')) {
            let start = i;
            i += 1;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let hashes = c[i..].iter().take_while(|&&h| h == '#').count();
            match (word.as_str(), c.get(i + hashes)) {
                // Raw strings: r"..", r#".."#, br"..", cr"..".
                ("r" | "br" | "cr", Some('"')) => {
                    let end: String = std::iter::once('"')
                        .chain(std::iter::repeat_n('#', hashes))
                        .collect();
                    let rest: String = c[i + hashes + 1..].iter().collect();
                    let len = rest.find(&end).map_or(rest.len(), |n| n + end.len());
                    line += rest[..len].matches('\n').count();
                    i += hashes + 1 + rest[..len].chars().count();
                }
                // Byte and C strings, byte chars.
                ("b" | "c", Some('"')) if hashes == 0 => {
                    i += 1;
                    skip_quoted(&mut i, &mut line, '"');
                }
                ("b", Some('\'')) if hashes == 0 => {
                    i += 1;
                    skip_quoted(&mut i, &mut line, '\'');
                }
                // A raw identifier: r#type.
                ("r", _) if hashes == 1 => {
                    let start = i + 1;
                    i = start;
                    while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                        i += 1;
                    }
                    out.push((Tok::Ident(c[start..i].iter().collect()), line));
                }
                _ => out.push((Tok::Ident(word), line)),
            }
        } else if ch == ':' && next == Some(':') {
            out.push((Tok::Sep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// The top-level modules that `src` (the file `file`) names, with the line
/// of each path.
fn references(file: &str, src: &str) -> Vec<(usize, String)> {
    let toks = tokens(src);
    let ident = |k: usize| match toks.get(k) {
        Some((Tok::Ident(s), _)) => Some(s.as_str()),
        _ => None,
    };
    let is = |k: usize, t: Tok| toks.get(k).map(|(x, _)| x) == Some(&t);
    let base = module_path(file);
    // Inline modules (`mod tests { .. }`) deepen the path `super` climbs.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut out = Vec::new();
    // The first segment after position `k` (a `::`), or each one of a group.
    let firsts = |k: usize| -> Vec<String> {
        if let Some(m) = ident(k + 1) {
            return vec![m.to_string()];
        }
        if !is(k + 1, Tok::Punct('{')) {
            return vec![];
        }
        let (mut names, mut level, mut j, mut expect) = (vec![], 0, k + 1, true);
        while let Some((t, _)) = toks.get(j) {
            match t {
                Tok::Punct('{') => level += 1,
                Tok::Punct('}') => {
                    level -= 1;
                    if level == 0 {
                        break;
                    }
                }
                Tok::Punct(',') if level == 1 => expect = true,
                Tok::Ident(s) if level == 1 && expect => {
                    names.push(s.clone());
                    expect = false;
                }
                _ => {}
            }
            j += 1;
        }
        names
    };
    let mut k = 0;
    while k < toks.len() {
        let (tok, line) = &toks[k];
        let after_sep = k > 0 && is(k - 1, Tok::Sep);
        match tok {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d > depth) {
                    inline.pop();
                }
            }
            Tok::Ident(w) if w == "mod" && is(k + 2, Tok::Punct('{')) => {
                if let Some(name) = ident(k + 1) {
                    inline.push((name.to_string(), depth + 1));
                }
            }
            Tok::Ident(w) if ROOTS.contains(&w.as_str()) && !after_sep && is(k + 1, Tok::Sep) => {
                for m in firsts(k + 1) {
                    out.push((*line, m));
                }
            }
            Tok::Ident(w) if w == "super" && !after_sep && is(k + 1, Tok::Sep) => {
                let mut path: Vec<String> = base.clone();
                path.extend(inline.iter().map(|(n, _)| n.clone()));
                let mut j = k;
                while ident(j) == Some("super") && is(j + 1, Tok::Sep) {
                    if path.pop().is_none() {
                        break;
                    }
                    j += 2;
                }
                match path.first() {
                    Some(top) => out.push((*line, top.clone())),
                    None => {
                        for m in firsts(j - 1) {
                            out.push((*line, m));
                        }
                    }
                }
                k = j;
                continue;
            }
            _ => {}
        }
        k += 1;
    }
    out
}

/// Every import against [`LAYERS`] in `files` (paths under `src/`, with
/// their text), as `file:line: <module> imports <other> (the rule: ...)`.
fn violations(files: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (file, src) in files {
        let Some(module) = top_module(file) else {
            continue;
        };
        let Some(own) = layer_of(module) else {
            out.push(format!(
                "{file}: module {module} is in no layer (place it in LAYERS in src/layers.rs)"
            ));
            continue;
        };
        let above: Vec<&str> = LAYERS[own + 1..]
            .iter()
            .flat_map(|l| l.iter().copied())
            .collect();
        for (line, other) in references(file, src) {
            if layer_of(&other).is_some_and(|l| l > own) {
                out.push(format!(
                    "{file}:{line}: {module} imports {other} (the rule: {module} never imports {})",
                    above.join(", ")
                ));
            }
        }
    }
    out
}

/// Every `.rs` file under `dir`, as (path relative to `root`, text).
fn sources(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(root, &path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let rel = path.strip_prefix(root).expect("under src");
            let rel = rel.to_string_lossy().replace('\\', "/");
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((rel, text));
        }
    }
}

/// The modules a crate root declares (`mod x;`, `pub mod x;`, any attributes).
fn declared_modules(root_src: &str) -> BTreeSet<String> {
    let toks = tokens(root_src);
    toks.windows(3)
        .filter_map(|w| match w {
            [(Tok::Ident(m), _), (Tok::Ident(name), _), (Tok::Punct(';'), _)] if m == "mod" => {
                Some(name.clone())
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    #[test]
    fn every_import_goes_down_the_layers() {
        let root = src_dir();
        let mut files = Vec::new();
        sources(&root, &root, &mut files);
        assert!(
            files.len() > 50,
            "only {} files under {}",
            files.len(),
            root.display()
        );
        let found = violations(&files);
        assert!(
            found.is_empty(),
            "{} imports against the layering (docs/ARCHITECTURE.md, src/layers.rs):\n{}",
            found.len(),
            found.join("\n")
        );
    }

    #[test]
    fn every_top_level_module_has_a_layer() {
        let read = |f: &str| std::fs::read_to_string(src_dir().join(f)).expect(f);
        let mut modules = declared_modules(&read("lib.rs"));
        assert!(
            modules.contains("telemetry") && modules.contains("layers"),
            "{modules:?}"
        );
        // The binary's modules, and its root file.
        modules.extend(declared_modules(&read("main.rs")));
        modules.insert("main".into());
        let placed: BTreeSet<String> = LAYERS
            .iter()
            .flat_map(|l| l.iter().map(|m| m.to_string()))
            .collect();
        let unplaced: Vec<_> = modules.difference(&placed).collect();
        let stale: Vec<_> = placed.difference(&modules).collect();
        assert!(
            unplaced.is_empty() && stale.is_empty(),
            "modules in no layer: {unplaced:?} (place each in LAYERS in src/layers.rs and its rule in docs/ARCHITECTURE.md); layers naming no module: {stale:?}"
        );
    }

    fn check(files: &[(&str, &str)]) -> Vec<String> {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(f, s)| (f.to_string(), s.to_string()))
            .collect();
        violations(&files)
    }

    #[test]
    fn the_checker_finds_paths_upward_in_every_form() {
        let found = check(&[
            (
                "telemetry/redact.rs",
                "use crate::runtime::Plugin;\n\
                 // crate::api in a comment is no import\n\
                 const S: &str = \"crate::api\";\n\
                 const R: &str = r#\"crate::api \"quoted\"\"#;\n\
                 fn f<'a>(x: &'a str) -> char { let _ = crate::coord::x(); '\"' }\n",
            ),
            (
                "jobs/mod.rs",
                "use crate::{archive::X, agent::{self, Y}};\n",
            ),
            (
                "servers/pg.rs",
                "fn f() {\n    super::super::jobs::run();\n    super::pg_tls::x();\n}\n",
            ),
            (
                "coord/mod.rs",
                "mod tests {\n    use super::Event;\n    use super::super::config::C;\n}\n\
                 use crate::telemetry::x;\nmacro_rules! m { () => { $crate::catalog::x() } }\n",
            ),
            (
                "cli/agent.rs",
                "use firedrill::launch::start;\nuse crate::cli::x;\n",
            ),
            ("api/mod.rs", "use firedrill::launch::start;\n"),
            ("newroom/mod.rs", "use crate::telemetry::x;\n"),
        ]);
        let never = |m: &str| {
            let own = layer_of(m).unwrap();
            LAYERS[own + 1..]
                .iter()
                .flat_map(|l| l.iter().copied())
                .collect::<Vec<_>>()
                .join(", ")
        };
        assert_eq!(
            found,
            [
                format!("telemetry/redact.rs:1: telemetry imports runtime (the rule: telemetry never imports {})", never("telemetry")),
                format!("telemetry/redact.rs:5: telemetry imports coord (the rule: telemetry never imports {})", never("telemetry")),
                format!("jobs/mod.rs:1: jobs imports agent (the rule: jobs never imports {})", never("jobs")),
                format!("servers/pg.rs:2: servers imports jobs (the rule: servers never imports {})", never("servers")),
                format!("coord/mod.rs:3: coord imports config (the rule: coord never imports {})", never("coord")),
                format!("coord/mod.rs:6: coord imports catalog (the rule: coord never imports {})", never("coord")),
                format!("api/mod.rs:1: api imports launch (the rule: api never imports {})", never("api")),
                "newroom/mod.rs: module newroom is in no layer (place it in LAYERS in src/layers.rs)".to_string(),
            ]
        );
        assert!(never("telemetry").starts_with("archive, servers, runtime, caps, notify, coord"));
        assert_eq!(never("launch"), "cli, main");
    }

    #[test]
    fn the_tokens_leave_out_comments_and_literals() {
        let toks = tokens(
            "/* crate::a /* nested */ crate::b */ let c = b'x'; let s = b\"crate::c\";\n\
             let r = br##\"a \"# crate::d\"##; let l: &'static str; r#type::x",
        );
        let idents: Vec<String> = toks
            .iter()
            .filter_map(|(t, _)| match t {
                Tok::Ident(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            idents,
            ["let", "c", "let", "s", "let", "r", "let", "l", "static", "str", "type", "x"]
        );
        assert_eq!(toks.last().map(|(_, line)| *line), Some(2));
        assert_eq!(
            declared_modules("//! doc\npub mod a;\n#[cfg(test)]\nmod b;\nmod c { }\nuse d;"),
            BTreeSet::from(["a".to_string(), "b".to_string()])
        );
    }
}
