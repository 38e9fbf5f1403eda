//! pg_dump's plain-format scripts (pre-data, post-data, pg_dumpall's
//! globals), split into statements for firedrill to execute over its own
//! connection, one at a time.
//!
//! A backup is untrusted input, and psql is a shell-capable client: it runs
//! meta-commands (`\!` a shell command, `\o |cmd`, `\copy ... program`, `\i`,
//! backticks in arguments) wherever its lexer sees a backslash outside a
//! literal. So nothing of a backup goes to psql; this module does psql's
//! splitting (the same rules as its lexer, psqlscan.l: quotes, `E''`
//! escapes, dollar quotes, nested comments, parentheses, `BEGIN ATOMIC`
//! bodies) and refuses what pg_dump never writes in these sections:
//!
//! - any meta-command but `\restrict KEY` / `\unrestrict KEY` (recent minors
//!   write them around the script) and `\connect` (pg_dumpall writes it;
//!   ignored: a restore goes into the target it chose);
//! - statements that do something at restore time rather than define
//!   something: `COPY`, `DO`, `CALL`, `LOAD`, `EXECUTE`, `ALTER SYSTEM`, and
//!   `SELECT` other than pg_dump's own `pg_catalog.set_config`, `setval` and
//!   `lo_create` with literal arguments; and, as pg_dump writes only
//!   definitions here, any statement that does not start with one of its
//!   words (`SET`, `RESET`, `CREATE`, `ALTER`, `COMMENT`, `SECURITY LABEL`,
//!   `GRANT`, `REVOKE`, `REFRESH`).
//!
//! The server still parses every statement; this only needs to agree with it
//! on where a literal ends and a statement ends. The caller runs each
//! statement alone (the extended protocol refuses two commands in one), so
//! a disagreement is an error, never a second statement.
//!
//! Hand-written rather than a crate: `pg_query` needs libpg_query's C build,
//! and `sqlparser` does not parse all of PostgreSQL's DDL (function bodies,
//! operator classes, `BEGIN ATOMIC`), so it would refuse genuine backups.

/// One statement of a script, as the server will receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement<'a> {
    /// Line of the script where the statement starts (1-based).
    pub line: usize,
    /// The statement's text, from its first token to its `;` (included).
    pub sql: &'a str,
    /// What it does, as far as running it beside others goes.
    pub shape: Shape,
}

/// A table as the server names it: (schema, name), unquoted.
pub type TableName = (String, String);

/// What a statement does, for running post-data side by side
/// (`post_data`). Only the forms pg_dump writes are recognised; anything
/// else is `Other` and runs alone, in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// `SET`, `RESET`, `SELECT pg_catalog.set_config(...)`: the session's
    /// state, keyed by the setting's name.
    Session(String),
    /// `CREATE [UNIQUE] INDEX name ON [ONLY] schema.table ...` (a share
    /// lock: builds beside other indexes of the same table). `only`: no
    /// partition is touched, whatever the table is.
    Index {
        table: TableName,
        only: bool,
    },
    /// `ALTER TABLE ONLY schema.table ADD CONSTRAINT name PRIMARY KEY |
    /// UNIQUE | EXCLUDE | CHECK ...` (locks the table alone).
    Constraint {
        table: TableName,
    },
    /// `ALTER TABLE ONLY schema.table ADD CONSTRAINT name FOREIGN KEY (...)
    /// REFERENCES schema.other ...`; `not_valid` when the dump says so
    /// (the rows were never checked: they must not be now).
    ForeignKey {
        table: TableName,
        name: String,
        references: TableName,
        not_valid: bool,
    },
    /// `COMMENT ON INDEX | CONSTRAINT`: belongs with the statement before.
    Comment,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    #[error(
        "line {line}: psql meta-command `{command}` refused: pg_dump writes no such line, \
         and a backup is never given to a shell-capable client; the backup was tampered with \
         (or not written by firedrill)"
    )]
    MetaCommand { line: usize, command: String },
    #[error(
        "line {line}: statement `{statement}` refused: pg_dump writes no {kind} in a schema \
         script, and it would run something at restore time; the backup was tampered with \
         (or not written by firedrill)"
    )]
    Statement {
        line: usize,
        kind: String,
        statement: String,
    },
    #[error("line {line}: {what} that never ends: the script is cut short or corrupt")]
    Unterminated { line: usize, what: &'static str },
    #[error(
        "line {line}: not UTF-8: firedrill applies schema scripts written in UTF-8 (backups \
         written since this check are); restore this one by hand (docs/RESTORE-BY-HAND.md)"
    )]
    NotUtf8 { line: usize },
}

/// The meta-commands pg_dump and pg_dumpall write, which a restore skips.
/// `\restrict` takes one alphanumeric key; `\connect` anything but another
/// backslash (a second meta-command) or a backtick (psql runs it in a shell).
fn allowed_meta(text: &str) -> bool {
    let text = text.trim_end();
    let (name, args) = text[1..]
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((&text[1..], ""));
    let args = args.trim();
    match name {
        "restrict" | "unrestrict" => {
            !args.is_empty() && args.bytes().all(|b| b.is_ascii_alphanumeric())
        }
        "connect" => !args.is_empty() && !args.contains(['\\', '`']),
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    Word(&'a str),
    /// A quoted literal, quotes included.
    Str(&'a str),
    Num,
    Punct(u8),
}

/// The statement's words and literals, for the checks on its kind.
struct Pending<'a> {
    start: usize,
    line: usize,
    toks: Vec<Tok<'a>>,
}

/// Splits `script` into statements, refusing what pg_dump would not write.
pub fn split(script: &[u8]) -> Result<Vec<Statement<'_>>, ScriptError> {
    let s = std::str::from_utf8(script).map_err(|e| ScriptError::NotUtf8 {
        line: 1 + memchr::memchr_iter(b'\n', &script[..e.valid_up_to()]).count(),
    })?;
    let b = s.as_bytes();
    let n = b.len();
    let mut out = Vec::new();
    let mut line = 1usize;
    let mut i = 0usize;
    let mut cur: Option<Pending<'_>> = None;
    let mut paren = 0i64;
    let mut begin_depth = 0u32;
    // pg_dump sets it on, but follows the server's setting; so does psql.
    let mut std_strings = true;

    while i < n {
        let c = b[i];
        let next = b.get(i + 1).copied();
        match c {
            b'\n' => {
                line += 1;
                i += 1;
                continue;
            }
            c if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'-' if next == Some(b'-') => {
                i = memchr::memchr(b'\n', &b[i..]).map_or(n, |p| i + p);
                continue;
            }
            b'/' if next == Some(b'*') => {
                let from = line;
                let mut depth = 0u32;
                loop {
                    match (b.get(i), b.get(i + 1)) {
                        (None, _) => {
                            return Err(ScriptError::Unterminated {
                                line: from,
                                what: "a /* comment */",
                            })
                        }
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        (Some(b'\n'), _) => {
                            line += 1;
                            i += 1;
                        }
                        _ => i += 1,
                    }
                }
                continue;
            }
            b'\\' => {
                let end = memchr::memchr(b'\n', &b[i..]).map_or(n, |p| i + p);
                let text = &s[i..end];
                // Mid-statement, psql would run it with the statement pending.
                if cur.is_some() || !allowed_meta(text) {
                    return Err(ScriptError::MetaCommand {
                        line,
                        command: shorten(text.trim_end()),
                    });
                }
                i = end;
                continue;
            }
            _ => {}
        }
        let p = cur.get_or_insert_with(|| Pending {
            start: i,
            line,
            toks: Vec::new(),
        });
        match c {
            b'\'' => {
                let end = quoted(b, i, b'\'', !std_strings, &mut line, "a quoted string")?;
                p.toks.push(Tok::Str(&s[i..end]));
                i = end;
            }
            b'"' => {
                let end = quoted(b, i, b'"', false, &mut line, "a quoted identifier")?;
                p.toks.push(Tok::Word(&s[i..end]));
                i = end;
            }
            b'$' => match dollar_tag(b, i) {
                Some(tag_end) => {
                    let tag = &b[i..tag_end];
                    let from = line;
                    let close = memchr::memmem::find(&b[tag_end..], tag).ok_or(
                        ScriptError::Unterminated {
                            line: from,
                            what: "a $$ dollar-quoted string",
                        },
                    )?;
                    let end = tag_end + close + tag.len();
                    line += memchr::memchr_iter(b'\n', &b[i..end]).count();
                    p.toks.push(Tok::Str(&s[i..end]));
                    i = end;
                }
                None => {
                    // A parameter ($1): not in a script, but not a quote either.
                    p.toks.push(Tok::Punct(b'$'));
                    i += 1;
                }
            },
            b'(' => {
                paren += 1;
                p.toks.push(Tok::Punct(c));
                i += 1;
            }
            b')' => {
                paren -= 1;
                p.toks.push(Tok::Punct(c));
                i += 1;
            }
            b';' => {
                i += 1;
                if paren <= 0 && begin_depth == 0 {
                    p.toks.push(Tok::Punct(c));
                    let p = cur.take().expect("a statement is pending");
                    finish(s, p, i, &mut std_strings, &mut out)?;
                    paren = 0;
                } else {
                    p.toks.push(Tok::Punct(c));
                }
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < n && is_ident_cont(b[i]) {
                    i += 1;
                }
                let word = &s[start..i];
                if word.eq_ignore_ascii_case("e") && b.get(i) == Some(&b'\'') {
                    let end = quoted(b, i, b'\'', true, &mut line, "an E'' string")?;
                    p.toks.push(Tok::Str(&s[start..end]));
                    i = end;
                    continue;
                }
                p.toks.push(Tok::Word(word));
                // psql's rule: in CREATE [OR REPLACE] FUNCTION|PROCEDURE, a
                // BEGIN (ATOMIC) ... END body holds semicolons, and so does
                // a CASE ... END within it.
                if paren == 0 && is_routine(&p.toks) {
                    if word.eq_ignore_ascii_case("begin") {
                        begin_depth += 1;
                    } else if word.eq_ignore_ascii_case("case") && begin_depth > 0 {
                        begin_depth += 1;
                    } else if word.eq_ignore_ascii_case("end") && begin_depth > 0 {
                        begin_depth -= 1;
                    }
                }
            }
            c if c.is_ascii_digit() => {
                while i < n && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                    i += 1;
                }
                p.toks.push(Tok::Num);
            }
            _ => {
                p.toks.push(Tok::Punct(c));
                i += 1;
            }
        }
        if cur.is_none() {
            begin_depth = 0;
        }
    }
    // psql sends what is left at the end of its input; so do we.
    if let Some(p) = cur.take() {
        finish(s, p, n, &mut std_strings, &mut out)?;
    }
    Ok(out)
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// `$tag$` at `i`: the end of the opening delimiter.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if b.get(j).is_some_and(|&c| is_ident_start(c)) {
        while b
            .get(j)
            .is_some_and(|&c| is_ident_start(c) || c.is_ascii_digit())
        {
            j += 1;
        }
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1)
}

/// The end of a literal opened by `quote` at `i` (a doubled quote is data;
/// with `backslash`, so is any escaped byte).
fn quoted(
    b: &[u8],
    i: usize,
    quote: u8,
    backslash: bool,
    line: &mut usize,
    what: &'static str,
) -> Result<usize, ScriptError> {
    let from = *line;
    let mut j = i + 1;
    loop {
        match b.get(j) {
            None => return Err(ScriptError::Unterminated { line: from, what }),
            Some(&c) if c == quote => {
                if b.get(j + 1) == Some(&quote) {
                    j += 2;
                } else {
                    return Ok(j + 1);
                }
            }
            Some(b'\\') if backslash => {
                if b.get(j + 1) == Some(&b'\n') {
                    *line += 1;
                }
                j += 2;
            }
            Some(b'\n') => {
                *line += 1;
                j += 1;
            }
            Some(_) => j += 1,
        }
    }
}

/// CREATE [OR REPLACE] FUNCTION|PROCEDURE, by its first words.
fn is_routine(toks: &[Tok<'_>]) -> bool {
    let w =
        |k: usize, s: &str| matches!(toks.get(k), Some(Tok::Word(x)) if x.eq_ignore_ascii_case(s));
    let routine = |k: usize| w(k, "function") || w(k, "procedure");
    w(0, "create") && (routine(1) || (w(1, "or") && w(2, "replace") && routine(3)))
}

fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

fn finish<'a>(
    s: &'a str,
    p: Pending<'a>,
    end: usize,
    std_strings: &mut bool,
    out: &mut Vec<Statement<'a>>,
) -> Result<(), ScriptError> {
    let sql = &s[p.start..end];
    check(&p.toks, p.line, sql)?;
    if let Some(on) = sets_std_strings(&p.toks) {
        *std_strings = on;
    }
    out.push(Statement {
        line: p.line,
        sql,
        shape: shape(&p.toks),
    });
    Ok(())
}

/// An identifier as the server resolves it: quoted ones as written
/// (doubled quotes undone), others folded to lower case.
fn ident_name(tok: &Tok<'_>) -> Option<String> {
    match tok {
        Tok::Word(w) if w.starts_with('"') => Some(w[1..w.len() - 1].replace("\"\"", "\"")),
        Tok::Word(w) => Some(w.to_ascii_lowercase()),
        _ => None,
    }
}

/// `schema.table` at `toks[k..]`: the name and the index after it.
fn qualified(toks: &[Tok<'_>], k: usize) -> Option<(TableName, usize)> {
    match toks.get(k..k + 3)? {
        [a, Tok::Punct(b'.'), b] => Some(((ident_name(a)?, ident_name(b)?), k + 3)),
        _ => None,
    }
}

fn shape(toks: &[Tok<'_>]) -> Shape {
    let is =
        |k: usize, s: &str| matches!(toks.get(k), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(s));
    let word = |k: usize| match toks.get(k) {
        Some(Tok::Word(w)) if !w.starts_with('"') => w.to_ascii_lowercase(),
        _ => String::new(),
    };
    match word(0).as_str() {
        "set" | "reset" => {
            let k = if is(1, "session") || is(1, "local") {
                2
            } else {
                1
            };
            match word(k).as_str() {
                // Not a setting by name (pg_dump writes none of these here).
                w @ ("role" | "authorization" | "time" | "transaction" | "constraints"
                | "characteristics" | "") => Shape::Session(format!("{w} (a form of its own)")),
                w => Shape::Session(w.to_string()),
            }
        }
        "select" if pg_dump_select(toks) && is(3, "set_config") => match toks.get(5) {
            Some(Tok::Str(name)) => Shape::Session(name.trim_matches('\'').to_ascii_lowercase()),
            _ => Shape::Other,
        },
        "create" => {
            let k = if is(1, "unique") { 2 } else { 1 };
            if !is(k, "index") || is(k + 1, "concurrently") || is(k + 1, "if") {
                return Shape::Other;
            }
            // CREATE INDEX name ON [ONLY] schema.table
            let on = k + 2;
            if !is(on, "on") {
                return Shape::Other;
            }
            let only = is(on + 1, "only");
            match qualified(toks, on + 1 + only as usize) {
                Some((table, _)) => Shape::Index { table, only },
                None => Shape::Other,
            }
        }
        "alter" if is(1, "table") && is(2, "only") => {
            let Some((table, k)) = qualified(toks, 3) else {
                return Shape::Other;
            };
            if !is(k, "add")
                || !is(k + 1, "constraint")
                || ident_name(toks.get(k + 2).unwrap_or(&Tok::Num)).is_none()
            {
                return Shape::Other;
            }
            let name = ident_name(&toks[k + 2]).unwrap_or_default();
            let kind = k + 3;
            if is(kind, "primary") || is(kind, "unique") || is(kind, "exclude") || is(kind, "check")
            {
                return Shape::Constraint { table };
            }
            if !is(kind, "foreign") {
                return Shape::Other;
            }
            let Some(refs) = toks
                .iter()
                .position(|t| matches!(t, Tok::Word(w) if w.eq_ignore_ascii_case("references")))
            else {
                return Shape::Other;
            };
            let Some((references, _)) = qualified(toks, refs + 1) else {
                return Shape::Other;
            };
            let words: Vec<String> = toks
                .iter()
                .filter_map(|t| match t {
                    Tok::Word(w) => Some(w.to_ascii_lowercase()),
                    _ => None,
                })
                .collect();
            let not = |w: &str| words.windows(2).any(|p| p[0] == "not" && p[1] == w);
            // NOT ENFORCED (18) is never checked at all: left as written.
            if not("enforced") {
                return Shape::Other;
            }
            Shape::ForeignKey {
                table,
                name,
                references,
                not_valid: not("valid"),
            }
        }
        "comment" if is(1, "on") && (is(2, "index") || is(2, "constraint")) => Shape::Comment,
        _ => Shape::Other,
    }
}

/// The first words pg_dump's pre-data, post-data and pg_dumpall's globals
/// start a statement with.
const DEFINES: &[&str] = &[
    "set", "reset", "create", "alter", "comment", "security", "grant", "revoke", "refresh",
];

/// What `SELECT` may call: pg_dump's own calls, with literal arguments.
const SELECTS: &[&str] = &["set_config", "setval", "lo_create"];

fn check(toks: &[Tok<'_>], line: usize, sql: &str) -> Result<(), ScriptError> {
    let word = |k: usize| match toks.get(k) {
        Some(Tok::Word(w)) => w.to_ascii_lowercase(),
        _ => String::new(),
    };
    let refuse = |kind: &str| ScriptError::Statement {
        line,
        kind: kind.to_string(),
        statement: shorten(
            sql.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .as_str(),
        ),
    };
    let first = word(0);
    match first.as_str() {
        "select" if pg_dump_select(toks) => Ok(()),
        "select" => Err(refuse("SELECT but pg_dump's own pg_catalog calls")),
        "alter" if word(1) == "system" => Err(refuse("ALTER SYSTEM")),
        // Only a `;` (or nothing: an empty statement) is no statement at all.
        "" if toks.iter().all(|t| *t == Tok::Punct(b';')) => Ok(()),
        w if DEFINES.contains(&w) => Ok(()),
        "" => Err(refuse("statement of this form")),
        w => Err(refuse(&w.to_ascii_uppercase())),
    }
}

/// `SELECT pg_catalog.<fn>(<literals>);`, as pg_dump writes them.
fn pg_dump_select(toks: &[Tok<'_>]) -> bool {
    let toks = toks.strip_suffix(&[Tok::Punct(b';')]).unwrap_or(toks);
    let [_, Tok::Word(schema), Tok::Punct(b'.'), Tok::Word(func), Tok::Punct(b'('), args @ .., Tok::Punct(b')')] =
        toks
    else {
        return false;
    };
    if !schema.eq_ignore_ascii_case("pg_catalog")
        || !SELECTS.iter().any(|f| func.eq_ignore_ascii_case(f))
    {
        return false;
    }
    args.iter().enumerate().all(|(k, t)| match (k % 2, t) {
        (0, Tok::Str(s)) => s.starts_with('\''),
        (0, Tok::Num) => true,
        (0, Tok::Word(w)) => w.eq_ignore_ascii_case("true") || w.eq_ignore_ascii_case("false"),
        (1, Tok::Punct(b',')) => true,
        _ => false,
    }) && args.len() % 2 == 1
}

/// `SET [SESSION|LOCAL] standard_conforming_strings = on|off`: the new value.
fn sets_std_strings(toks: &[Tok<'_>]) -> Option<bool> {
    let words: Vec<&Tok<'_>> = toks
        .iter()
        .filter(|t| !matches!(t, Tok::Word(w) if w.eq_ignore_ascii_case("session") || w.eq_ignore_ascii_case("local")))
        .collect();
    let is = |t: &Tok<'_>, s: &str| matches!(t, Tok::Word(w) if w.eq_ignore_ascii_case(s));
    match words.as_slice() {
        [set, name, eq, value, ..]
            if is(set, "set")
                && is(name, "standard_conforming_strings")
                && (**eq == Tok::Punct(b'=') || is(eq, "to")) =>
        {
            let v = match value {
                Tok::Word(w) => w.to_ascii_lowercase(),
                Tok::Str(s) => s.trim_matches('\'').to_ascii_lowercase(),
                _ => return None,
            };
            match v.as_str() {
                "on" | "true" | "yes" | "1" => Some(true),
                "off" | "false" | "no" | "0" => Some(false),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqls(script: &str) -> Vec<String> {
        split(script.as_bytes())
            .unwrap()
            .into_iter()
            .map(|s| s.sql.to_string())
            .collect()
    }

    fn refused(script: &str) -> ScriptError {
        split(script.as_bytes()).expect_err("refused")
    }

    #[test]
    fn splits_at_semicolons_outside_literals() {
        assert_eq!(
            sqls("SET a = 1;\nCOMMENT ON TABLE t IS 'x; y'';z';\nCREATE TABLE \"a;b\" (c int);"),
            [
                "SET a = 1;",
                "COMMENT ON TABLE t IS 'x; y'';z';",
                "CREATE TABLE \"a;b\" (c int);"
            ]
        );
    }

    #[test]
    fn dollar_quotes_with_and_without_tags() {
        let script = "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $fn$\nBEGIN\n  RAISE NOTICE $$a; b$$;\n  RETURN 1; -- $fn not the end\nEND $fn$;\nCREATE FUNCTION g() RETURNS int AS $$ select 1; $$ LANGUAGE sql;\nCREATE TABLE a$b (x$ int);";
        let got = split(script.as_bytes()).unwrap();
        assert_eq!(got.len(), 3);
        assert!(got[0].sql.ends_with("END $fn$;"));
        assert_eq!(got[1].line, 6);
        assert_eq!(got[2].sql, "CREATE TABLE a$b (x$ int);");
    }

    #[test]
    fn nested_comments_and_line_comments() {
        let script = "/* outer /* inner; */ still; */ SET a = 1;\n-- CREATE x; \\! not a command\nSET b = 2; /* \\! */";
        let got = split(script.as_bytes()).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].sql, "SET a = 1;");
        assert_eq!((got[1].line, got[1].sql), (3, "SET b = 2;"));
        assert!(matches!(
            refused("/* /* */ SET a = 1;"),
            ScriptError::Unterminated { line: 1, .. }
        ));
    }

    #[test]
    fn e_strings_take_backslash_escapes() {
        // In E'', \' is a quote inside; in a plain string, a backslash is data.
        assert_eq!(
            sqls("COMMENT ON TABLE t IS E'it\\'s; \\\\';\nCOMMENT ON TABLE u IS 'c:\\';"),
            [
                "COMMENT ON TABLE t IS E'it\\'s; \\\\';",
                "COMMENT ON TABLE u IS 'c:\\';"
            ]
        );
        // With standard_conforming_strings off, plain strings escape too.
        assert_eq!(
            sqls("SET standard_conforming_strings = off;\nCOMMENT ON TABLE t IS 'a\\'; b';"),
            [
                "SET standard_conforming_strings = off;",
                "COMMENT ON TABLE t IS 'a\\'; b';"
            ]
        );
    }

    #[test]
    fn a_backslash_inside_a_function_body_is_data() {
        let script = "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$\nBEGIN\n\\! touch /tmp/x\n  PERFORM 1;\nEND $$;\nCOMMENT ON FUNCTION f() IS '\n\\! touch /tmp/y';";
        assert_eq!(split(script.as_bytes()).unwrap().len(), 2);
    }

    #[test]
    fn a_meta_command_at_statement_start_is_refused_with_its_line() {
        let e = refused("SET a = 1;\nCREATE TABLE t (a int);\n\\! touch /tmp/x\n");
        assert_eq!(
            e,
            ScriptError::MetaCommand {
                line: 3,
                command: "\\! touch /tmp/x".into()
            }
        );
        assert!(e.to_string().contains("line 3"), "{e}");
        for cmd in [
            "\\o |sh",
            "\\copy t to program 'sh'",
            "\\i /etc/passwd",
            "\\set x 1",
            "\\gexec",
            "\\g |sh",
            "\\c other",
            "\\restrict a \\! sh",
            "\\connect `sh`",
            "\\connect db \\! sh",
        ] {
            assert!(
                matches!(
                    refused(&format!("{cmd}\n")),
                    ScriptError::MetaCommand { line: 1, .. }
                ),
                "{cmd}"
            );
        }
        // After a statement on the same line, or in the middle of one.
        assert!(matches!(
            refused("SET a = 1; \\! sh\n"),
            ScriptError::MetaCommand { line: 1, .. }
        ));
        assert!(matches!(
            refused("CREATE TABLE t\n(a int) \\! sh\n;"),
            ScriptError::MetaCommand { line: 2, .. }
        ));
    }

    #[test]
    fn restrict_and_connect_are_skipped() {
        let script = "\\restrict AbC123\nSET a = 1;\n\\connect template1\n\\connect -reuse-previous=on \"dbname='x y'\"\nSET b = 2;\n\\unrestrict AbC123\n";
        let got = split(script.as_bytes()).unwrap();
        assert_eq!(
            got.iter().map(|s| (s.line, s.sql)).collect::<Vec<_>>(),
            [(2, "SET a = 1;"), (5, "SET b = 2;")]
        );
    }

    #[test]
    fn statements_that_run_something_are_refused() {
        for (sql, kind) in [
            ("COPY (SELECT 1) TO PROGRAM 'touch /tmp/x';", "COPY"),
            ("copy t from stdin;", "COPY"),
            ("DO $$ BEGIN PERFORM 1; END $$;", "DO"),
            ("CALL p();", "CALL"),
            ("ALTER SYSTEM SET archive_command = 'sh';", "ALTER SYSTEM"),
            ("LOAD '/tmp/evil.so';", "LOAD"),
            ("EXECUTE s;", "EXECUTE"),
            ("SELECT pg_read_file('/etc/passwd');", "SELECT"),
            (
                "SELECT pg_catalog.set_config('a', pg_read_file('/x'), false);",
                "SELECT",
            ),
            ("SELECT pg_catalog.lo_export(1, '/tmp/x');", "SELECT"),
            (
                "SELECT pg_catalog.setval('s', 1, false), pg_sleep(1);",
                "SELECT",
            ),
            ("INSERT INTO t VALUES (1);", "INSERT"),
            ("DROP DATABASE postgres;", "DROP"),
            ("WITH x AS (SELECT 1) SELECT * FROM x;", "WITH"),
        ] {
            match refused(sql) {
                ScriptError::Statement {
                    line: 1, kind: k, ..
                } => {
                    assert!(k.starts_with(kind), "{sql}: {k}")
                }
                e => panic!("{sql}: {e}"),
            }
        }
        assert!(matches!(
            refused("SET a = 1;\n\nCOPY x TO PROGRAM 'sh';"),
            ScriptError::Statement { line: 3, .. }
        ));
    }

    #[test]
    fn pg_dumps_own_selects_pass() {
        assert_eq!(
            sqls("SELECT pg_catalog.set_config('search_path', '', false);\nSELECT pg_catalog.setval('public.s', 42, true);\nSELECT pg_catalog.lo_create('4242');")
                .len(),
            3
        );
    }

    #[test]
    fn begin_atomic_bodies_hold_semicolons() {
        let script = "CREATE FUNCTION app.classify(x integer) RETURNS text\n    LANGUAGE sql\n    BEGIN ATOMIC\n SELECT\n         CASE\n             WHEN (x > 0) THEN 'pos'::text\n             ELSE 'neg;'::text\n         END AS \"case\";\n SELECT 'two'::text;\nEND;\nCREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\nSET a = 1;";
        let got = split(script.as_bytes()).unwrap();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].sql.ends_with("END;"));
        assert_eq!(got[2].sql, "SET a = 1;");
    }

    #[test]
    fn unterminated_and_non_utf8_are_errors() {
        assert!(matches!(
            refused("SET a = 1;\nCOMMENT ON TABLE t IS 'open"),
            ScriptError::Unterminated { line: 2, .. }
        ));
        assert!(matches!(
            refused("CREATE FUNCTION f() AS $x$ body"),
            ScriptError::Unterminated { line: 1, .. }
        ));
        assert_eq!(
            split(b"SET a = 1;\nCOMMENT ON TABLE t IS '\xe9';").unwrap_err(),
            ScriptError::NotUtf8 { line: 2 }
        );
    }

    /// pg_dump 15.20's own output for a schema with functions (plpgsql with
    /// `\!` in a comment, SQL-standard bodies), triggers, views, rules,
    /// policies, partitions, publications, large objects: nothing refused.
    #[test]
    fn real_pg_dump_output_passes_whole() {
        for (name, script, count) in [
            ("pre-data", include_str!("testdata/pg15-pre-data.sql"), 58),
            ("post-data", include_str!("testdata/pg15-post-data.sql"), 30),
            ("globals", include_str!("testdata/pg15-globals.sql"), 7),
        ] {
            let got = split(script.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got.len(), count, "{name}");
            for st in &got {
                assert!(st.sql.ends_with(';'), "{name} line {}: {}", st.line, st.sql);
                assert!(!st.sql.starts_with('\\'), "{name}: {}", st.sql);
                // Each statement starts on the line it says.
                let first = script.lines().nth(st.line - 1).unwrap();
                assert!(
                    first.contains(st.sql.lines().next().unwrap()),
                    "{name} line {}: {first:?} vs {:?}",
                    st.line,
                    st.sql
                );
            }
        }
        let pre = split(include_str!("testdata/pg15-pre-data.sql").as_bytes()).unwrap();
        assert!(pre
            .iter()
            .any(|s| s.sql.starts_with("CREATE FUNCTION app.touch()")
                && s.sql.contains("\\! touch /tmp/nope")
                && s.sql.ends_with("END $_$;")));
    }
}
