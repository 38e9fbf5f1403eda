//! `firedrill:plugin/sql`: one statement per call against the database the
//! grant names, in its own transaction.
//!
//! Grant: `sql = { database = "drill" }` (or `"source"`), read-only unless
//! `write = true`; `max_rows` (default 100000) and `max_bytes` (default
//! 16MiB) bound one statement's result; `allow_superuser = true` lets a
//! `source` grant run as a role that is (or can become) a superuser. The
//! call's [`SqlTarget`] says which real database that scope is for this call;
//! a grant for another scope reaches nothing.
//!
//! Who the statements run as is the first bound, not this file: a drill's
//! target is a per-drill role with SELECT on the drill database only (see
//! `jobs::drill::role`), a source's is the role the operator named in
//! `plugin_sql_url`, checked here at connect.
//!
//! Read-only is enforced by the server, not by parsing SQL: every statement
//! runs inside `BEGIN READ ONLY` after a snapshot has been taken (so it cannot
//! switch the transaction to read-write) and is rolled back. Each statement
//! gets `statement_timeout` = what is left of the plugin's deadline.
//!
//! Results stream in: the rows and their bytes are counted as they arrive
//! and the statement is cancelled as soon as either passes the grant's
//! limit. One row is whole in memory before it can be counted (the client
//! library reads a DataRow message at once; PostgreSQL caps a field at 1GB).

use super::bindings::firedrill::plugin::sql::{self, Column, Error, Rows, Value};
use super::{Call, CapState, Capability};
use postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use serde::{Deserialize, Serialize};
use std::error::Error as StdError;
use std::time::{Duration, Instant};
use wasmtime::component::{HasData, Linker};

/// At most this many rows come back from one statement, unless the grant says.
const MAX_ROWS: usize = 100_000;
/// At most this many bytes of values, unless the grant says.
const MAX_BYTES: u64 = 16 << 20;
/// A statement's text and parameters.
const MAX_STATEMENT_BYTES: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SqlScope {
    /// The database being backed up (dump planners).
    Source,
    /// The throwaway database a drill restored into (verifiers).
    Drill,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlGrant {
    pub database: SqlScope,
    #[serde(default)]
    pub write: bool,
    /// A `source` grant refuses a role that is, or can become, a superuser
    /// (or runs programs or reads/writes files on the server) unless this says so.
    #[serde(default)]
    pub allow_superuser: bool,
    /// The most rows one statement may return.
    #[serde(default)]
    pub max_rows: Option<usize>,
    /// The most bytes of values one statement may return, e.g. "16MiB".
    #[serde(default)]
    pub max_bytes: Option<String>,
}

impl SqlGrant {
    /// A problem with the grant itself, for the policy loader.
    pub fn problem(&self) -> Option<String> {
        if let Some(b) = &self.max_bytes {
            match crate::runtime::policy::parse_size(b) {
                Err(e) => return Some(format!("`max_bytes`: {e}")),
                Ok(0) => return Some("`max_bytes` is 0: no result could come back".into()),
                Ok(_) => {}
            }
        }
        if self.max_rows == Some(0) {
            return Some("`max_rows` is 0: no result could come back".into());
        }
        if self.allow_superuser && self.database != SqlScope::Source {
            return Some(
                "`allow_superuser` applies to `database = \"source\"` only: a drill's role is made by firedrill".into(),
            );
        }
        None
    }

    fn max_rows(&self) -> usize {
        self.max_rows.unwrap_or(MAX_ROWS)
    }

    fn max_bytes(&self) -> u64 {
        self.max_bytes
            .as_deref()
            .and_then(|b| crate::runtime::policy::parse_size(b).ok())
            .unwrap_or(MAX_BYTES)
    }
}

/// Whether the connected role is a superuser or can act as one (membership
/// lets it `SET ROLE`), or may run programs or touch the server's files.
const POWERFUL_ROLE: &str = "SELECT EXISTS (SELECT 1 FROM pg_roles r WHERE pg_has_role(session_user, r.oid, 'MEMBER') \
     AND (r.rolsuper OR r.rolname IN ('pg_execute_server_program', 'pg_read_server_files', 'pg_write_server_files')))";

/// The real database behind a scope, for one call.
#[derive(Clone)]
pub struct SqlTarget {
    pub scope: SqlScope,
    /// A libpq-style URL; never shown to the plugin.
    pub url: String,
}

pub struct SqlCap {
    grant: Option<SqlGrant>,
    target: Option<SqlTarget>,
    deadline: Instant,
    conn: Option<postgres::Client>,
    /// The connection's TLS, for cancel requests.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl SqlCap {
    pub(crate) fn new(
        grant: Option<SqlGrant>,
        target: Option<SqlTarget>,
        deadline: Instant,
    ) -> SqlCap {
        SqlCap {
            grant,
            target,
            deadline,
            conn: None,
            tls: None,
        }
    }

    fn run(&mut self, statement: &str, params: &[Value]) -> Result<Rows, Error> {
        let Some(grant) = self.grant.clone() else {
            return Err(Error::NotGranted("the policy grants no sql".into()));
        };
        let target = match &self.target {
            Some(t) if t.scope == grant.database => t.clone(),
            _ if grant.database == SqlScope::Source => {
                return Err(Error::NotGranted(
                    "no source database is open to this call: plugins reach a source only as the role its plugin_sql_url names".into(),
                ))
            }
            _ => {
                return Err(Error::NotGranted(format!(
                    "no {:?} database is open to this call",
                    grant.database
                )))
            }
        };
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(5) {
            return Err(Error::Timeout);
        }
        if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
            // The agent's own TLS settings for this URL (see `servers::pg_tls`).
            let how = crate::servers::pg_tls::PgConnect::from_url(&target.url)
                .map_err(Error::Connection)?;
            let mut conn = how
                .connect_blocking(|cfg| {
                    cfg.connect_timeout(left.min(CONNECT_TIMEOUT));
                    cfg.application_name("firedrill-plugin");
                })
                .map_err(Error::Connection)?;
            self.tls = Some(how.tls());
            if target.scope == SqlScope::Source && !grant.allow_superuser {
                let powerful: bool = conn
                    .query_one(POWERFUL_ROLE, &[])
                    .map_err(query_error)?
                    .get(0);
                if powerful {
                    return Err(Error::NotGranted(
                        "the source's plugin role is a superuser (or can become one, or may run programs or files on the server): name a role of its own in the source's plugin_sql_url, or set allow_superuser = true on the policy's sql grant".into(),
                    ));
                }
            }
            self.conn = Some(conn);
        }
        let statement_bytes = statement.len() + params.iter().map(value_size).sum::<usize>();
        if statement_bytes > MAX_STATEMENT_BYTES {
            return Err(Error::Conversion(format!(
                "the statement and its parameters are {statement_bytes} bytes: more than {}",
                human(MAX_STATEMENT_BYTES as u64)
            )));
        }
        let (max_rows, max_bytes) = (grant.max_rows(), grant.max_bytes());
        let conn = self.conn.as_mut().expect("connected above");
        let cancel = conn.cancel_token();
        let mut tx = conn
            .build_transaction()
            .read_only(!grant.write)
            .start()
            .map_err(query_error)?;
        // The SELECT takes the snapshot: after it, SET TRANSACTION READ WRITE is refused.
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}; SELECT 1",
            left.as_millis().max(1)
        ))
        .map_err(query_error)?;
        let stmt = tx.prepare(statement).map_err(query_error)?;
        if stmt.params().len() != params.len() {
            return Err(Error::Conversion(format!(
                "the statement takes {} parameters, {} given",
                stmt.params().len(),
                params.len()
            )));
        }
        let args: Vec<Param> = params.iter().map(Param).collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let columns: Vec<Column> = stmt
            .columns()
            .iter()
            .map(|c| Column {
                name: c.name().to_string(),
                type_name: c.type_().name().to_string(),
            })
            .collect();
        let mut out = Rows {
            columns,
            rows: Vec::new(),
            affected: 0,
        };
        if stmt.columns().is_empty() {
            out.affected = tx.execute(&stmt, &refs).map_err(query_error)?;
        } else {
            use postgres::fallible_iterator::FallibleIterator;
            let mut rows = tx.query_raw(&stmt, refs).map_err(query_error)?;
            let mut bytes = 0u64;
            let mut over = None;
            while let Some(row) = rows.next().map_err(query_error)? {
                for i in 0..row.len() {
                    bytes += row.try_get::<_, RawSize>(i).map_or(0, |r| r.0) as u64;
                }
                if out.rows.len() >= max_rows {
                    over = Some(format!("more than {max_rows} rows"));
                } else if bytes > max_bytes {
                    over = Some(format!("more than {} of values", human(max_bytes)));
                }
                if over.is_some() {
                    break;
                }
                let mut values = Vec::with_capacity(row.len());
                for i in 0..row.len() {
                    let v: AnyValue = row.try_get(i).map_err(|e| {
                        Error::Conversion(format!(
                            "column {:?}: {}",
                            row.columns()[i].name(),
                            source_text(&e)
                        ))
                    })?;
                    values.push(v.0);
                }
                out.rows.push(values);
            }
            if let Some(over) = over {
                // The server would go on producing rows the client then
                // discards: stop it, so that the rollback answers at once.
                drop(rows);
                if let Some(tls) = self.tls.clone() {
                    let _ = cancel.cancel_query(tls);
                }
                return Err(Error::Conversion(format!(
                    "the result has {over}; add a LIMIT or aggregate in SQL (the grant's max_rows / max_bytes set the limits)"
                )));
            }
        }
        if grant.write {
            tx.commit().map_err(query_error)?;
        } else {
            tx.rollback().map_err(query_error)?;
        }
        Ok(out)
    }
}

/// How many bytes a value of any type takes on the wire.
struct RawSize(usize);

impl<'a> FromSql<'a> for RawSize {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(RawSize(raw.len()))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(RawSize(0))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn value_size(v: &Value) -> usize {
    match v {
        Value::Text(s) | Value::Numeric(s) | Value::Json(s) | Value::Uuid(s) => s.len(),
        Value::Bytes(b) => b.len(),
        _ => 8,
    }
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

fn source_text(e: &postgres::Error) -> String {
    e.source()
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.to_string())
}

fn query_error(e: postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        if db.code().code() == "57014" {
            return Error::Timeout;
        }
        return Error::Query((db.code().code().to_string(), db.message().to_string()));
    }
    if e.is_closed() {
        return Error::Connection(e.to_string());
    }
    Error::Conversion(source_text(&e))
}

impl sql::Host for SqlCap {
    fn query(
        &mut self,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<Rows, Error>> {
        let result = self.run(&statement, &params);
        if matches!(result, Err(Error::Connection(_))) {
            self.conn = None;
        }
        Ok(result)
    }
}

// Postgres counts time from 2000-01-01; the WIT types from 1970-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i32 = 10_957;

type BoxError = Box<dyn StdError + Sync + Send>;

/// A parameter, encoded as whatever type the server expects for it.
#[derive(Debug)]
struct Param<'a>(&'a Value);

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        let mismatch = || -> BoxError {
            format!(
                "a {} value does not fit a parameter of type {ty}; cast the parameter in SQL",
                kind(self.0)
            )
            .into()
        };
        match (self.0, ty) {
            (Value::Null, _) => return Ok(IsNull::Yes),
            (Value::Boolean(b), &Type::BOOL) => b.to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::OID) => u32::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Float(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Value::Float(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (Value::Text(s) | Value::Numeric(s), t) if is_text(t) => s.as_str().to_sql(ty, out),
            (Value::Bytes(b), &Type::BYTEA) => b.as_slice().to_sql(ty, out),
            (Value::Timestamp(us), &Type::TIMESTAMP | &Type::TIMESTAMPTZ) => {
                out.extend_from_slice(&(us - PG_EPOCH_MICROS).to_be_bytes());
                Ok(IsNull::No)
            }
            (Value::Date(d), &Type::DATE) => {
                out.extend_from_slice(&(d - PG_EPOCH_DAYS).to_be_bytes());
                Ok(IsNull::No)
            }
            (Value::Json(s), &Type::JSON) => s.as_str().to_sql(&Type::TEXT, out),
            (Value::Json(s), &Type::JSONB) => {
                out.extend_from_slice(&[1]);
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
            (Value::Uuid(s), &Type::UUID) => {
                let hex: String = s.chars().filter(|c| *c != '-').collect();
                let bytes = hex::decode(&hex)
                    .ok()
                    .filter(|b| b.len() == 16)
                    .ok_or_else(mismatch)?;
                out.extend_from_slice(&bytes);
                Ok(IsNull::No)
            }
            _ => Err(mismatch()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn is_text(t: &Type) -> bool {
    matches!(
        *t,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
    )
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Numeric(_) => "numeric",
        Value::Text(_) => "text",
        Value::Bytes(_) => "bytes",
        Value::Timestamp(_) => "timestamp",
        Value::Date(_) => "date",
        Value::Json(_) => "json",
        Value::Uuid(_) => "uuid",
    }
}

/// A result column of any supported type.
struct AnyValue(Value);

impl<'a> FromSql<'a> for AnyValue {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let v = match *ty {
            Type::BOOL => Value::Boolean(bool::from_sql(ty, raw)?),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::OID => Value::Int(u32::from_sql(ty, raw)?.into()),
            Type::FLOAT4 => Value::Float(f32::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Float(f64::from_sql(ty, raw)?),
            Type::NUMERIC => Value::Numeric(numeric_text(raw)?),
            Type::BYTEA => Value::Bytes(raw.to_vec()),
            Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                Value::Timestamp(i64::from_sql(&Type::INT8, raw)? + PG_EPOCH_MICROS)
            }
            Type::DATE => Value::Date(i32::from_sql(&Type::INT4, raw)? + PG_EPOCH_DAYS),
            Type::JSON => Value::Json(std::str::from_utf8(raw)?.to_string()),
            Type::JSONB => {
                Value::Json(std::str::from_utf8(raw.get(1..).unwrap_or_default())?.to_string())
            }
            Type::UUID => Value::Uuid(uuid_text(raw)?),
            ref t if is_text(t) => Value::Text(std::str::from_utf8(raw)?.to_string()),
            ref t => {
                return Err(format!(
                    "type {t} is not supported; cast it to text in the query (col::text)"
                )
                .into())
            }
        };
        Ok(AnyValue(v))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(AnyValue(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn uuid_text(raw: &[u8]) -> Result<String, BoxError> {
    if raw.len() != 16 {
        return Err("malformed uuid".into());
    }
    let h = hex::encode(raw);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// Decodes Postgres' binary numeric (base-10000 digits) into decimal text.
fn numeric_text(raw: &[u8]) -> Result<String, BoxError> {
    let word = |i: usize| -> Result<i16, BoxError> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "malformed numeric".into())
    };
    let ndigits = word(0)? as i32;
    let weight = word(1)? as i32;
    let sign = word(2)? as u16;
    let dscale = word(3)? as i32;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    let digit = |i: i32| -> Result<i16, BoxError> {
        if i < 0 || i >= ndigits {
            Ok(0)
        } else {
            word(4 + i as usize)
        }
    };
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for i in 0..=weight {
            let d = digit(i)?;
            if i == 0 {
                s.push_str(&d.to_string());
            } else {
                s.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut i = weight + 1;
        while (frac.len() as i32) < dscale {
            frac.push_str(&format!("{:04}", digit(i)?));
            i += 1;
        }
        frac.truncate(dscale as usize);
        s.push('.');
        s.push_str(&frac);
    }
    Ok(s)
}

struct Data;
impl HasData for Data {
    type Data<'a> = &'a mut SqlCap;
}

impl Capability for SqlCap {
    type Grant = Option<SqlGrant>;
    const IMPORTS: &'static [&'static str] = &["firedrill:plugin/sql@0.1.0"];
    const EXAMPLE: &'static str = "sql = { database = \"drill\" }";

    fn granted(grant: &Option<SqlGrant>) -> bool {
        grant.is_some()
    }

    fn problem(grant: &Option<SqlGrant>) -> Option<String> {
        grant.as_ref()?.problem()
    }

    fn detail(grant: &Option<SqlGrant>) -> Option<String> {
        let g = grant.as_ref()?;
        let access = if g.write { "write" } else { "read-only" };
        Some(format!("{:?}, {access}", g.database))
    }

    fn for_call(grant: &Option<SqlGrant>, call: &Call<'_>) -> SqlCap {
        SqlCap::new(grant.clone(), call.context.sql.clone(), call.deadline)
    }

    fn add_to_linker(
        linker: &mut Linker<CapState>,
        get: fn(&mut CapState) -> &mut SqlCap,
    ) -> wasmtime::Result<()> {
        sql::add_to_linker::<CapState, Data>(linker, get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: i16, weight: i16, sign: u16, dscale: i16, digits: &[i16]) -> String {
        let mut raw = Vec::new();
        for w in [ndigits, weight, sign as i16, dscale].iter().chain(digits) {
            raw.extend_from_slice(&w.to_be_bytes());
        }
        numeric_text(&raw).unwrap()
    }

    #[test]
    fn numerics_decode_exactly() {
        assert_eq!(numeric(2, 1, 0, 2, &[12, 3456]), "123456.00");
        assert_eq!(numeric(3, 0, 0x4000, 5, &[7, 5000, 1000]), "-7.50001");
        assert_eq!(numeric(3, 0, 0x4000, 3, &[7, 5000, 100]), "-7.500");
        assert_eq!(numeric(1, -1, 0, 4, &[42]), "0.0042");
        assert_eq!(numeric(1, -2, 0, 8, &[42]), "0.00000042");
        assert_eq!(numeric(0, 0, 0, 0, &[]), "0");
        assert_eq!(numeric(1, 2, 0, 0, &[5]), "500000000");
        assert_eq!(numeric(0, 0, 0xC000, 0, &[]), "NaN");
    }

    #[test]
    fn grants_name_their_own_mistakes() {
        let grant = |toml: &str| -> SqlGrant { toml::from_str(toml).unwrap() };
        let g = grant("database = \"drill\"");
        assert_eq!((g.max_rows(), g.max_bytes()), (100_000, 16 << 20));
        assert!(g.problem().is_none());
        let g = grant(
            "database = \"source\"\nmax_bytes = \"2MiB\"\nmax_rows = 5\nallow_superuser = true",
        );
        assert_eq!((g.max_rows(), g.max_bytes()), (5, 2 << 20));
        assert!(g.problem().is_none());
        assert!(grant("database = \"drill\"\nallow_superuser = true")
            .problem()
            .unwrap()
            .contains("source"));
        assert!(grant("database = \"drill\"\nmax_bytes = \"lots\"")
            .problem()
            .unwrap()
            .contains("max_bytes"));
        assert!(grant("database = \"drill\"\nmax_rows = 0")
            .problem()
            .is_some());
        assert!(toml::from_str::<SqlGrant>("database = \"drill\"\nsuperuser = true").is_err());
        assert_eq!(human(16 << 20), "16 MiB");
    }

    #[test]
    fn nothing_without_a_grant_or_a_target() {
        let far = Instant::now() + Duration::from_secs(5);
        let mut cap = SqlCap::new(None, None, far);
        assert!(matches!(
            cap.run("SELECT 1", &[]),
            Err(Error::NotGranted(_))
        ));
        let grant = SqlGrant {
            database: SqlScope::Drill,
            write: false,
            allow_superuser: false,
            max_rows: None,
            max_bytes: None,
        };
        let source = SqlTarget {
            scope: SqlScope::Source,
            url: "postgres://nowhere.invalid/x".into(),
        };
        let mut cap = SqlCap::new(Some(grant), Some(source), far);
        let Err(Error::NotGranted(m)) = cap.run("SELECT 1", &[]) else {
            panic!("a drill grant reached the source")
        };
        assert!(m.contains("Drill"), "{m}");
    }
}
