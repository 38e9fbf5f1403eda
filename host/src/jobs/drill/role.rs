//! The role plugin and assertion SQL runs as in a drill: one per drill
//! database, made after the restore and dropped right after the database.
//!
//! The restored database is production data on a server where firedrill is
//! (often) superuser; a verifier or an assertion file must not act with that
//! power (`COPY ... TO PROGRAM`, `pg_read_file`, `lo_import`, other sessions).
//! So the role is LOGIN only (no superuser, createdb, createrole,
//! replication), a few connections, a random password stored as a SCRAM
//! verifier (the plain password never reaches the server's log), CONNECT on
//! its drill database only (taken from PUBLIC there), and SELECT on every
//! table and sequence of that database's schemas.
//!
//! Explicit grants rather than `pg_read_all_data`: that role reads every
//! database it can connect to, and a shared drill server holds other drills'
//! databases. BYPASSRLS when the drill's own role may hand it out: the role
//! reads nothing beyond those grants with it, and without it a table with
//! row-level security counts fewer rows than the backup did, a false alarm.
//!
//! Roles are cluster-wide: the name is the drill database's plus a random
//! suffix, so concurrent drills from different hosts never collide, and a
//! role whose database is gone is an orphan [`sweep_orphans`] drops.

use crate::jobs::JobError;
use crate::servers::pg::{ident, PgUrl};

/// Connections one drill's role may hold at once (a verifier's, an
/// assertion run's, and room for one reconnecting).
const CONNECTIONS: u32 = 5;

/// A role made for one drill database.
#[derive(Clone)]
pub struct DrillRole {
    pub name: String,
    /// The drill database as that role (holds its password).
    pub url: PgUrl,
}

impl std::fmt::Debug for DrillRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// `<database>_r<8 hex>`; within the 63 bytes of an identifier.
fn role_name(database: &str) -> String {
    let base: String = database.chars().take(50).collect();
    format!("{base}_r{}", hex::encode(rand::random::<[u8; 4]>()))
}

/// Makes the role for the database `admin` points at (as the drill's own,
/// privileged, role).
pub async fn create(admin: &PgUrl) -> Result<DrillRole, JobError> {
    let db = admin.database();
    let sql = |what: &str, e| JobError::sql(&db, what, e);
    let client = admin.connect().await?;
    let may_bypass: bool = client
        .query_one(
            "SELECT rolsuper OR (rolbypassrls AND current_setting('server_version_num')::int >= 160000) FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| sql("read the drill role's attributes", e))?
        .get(0);
    let schemas: Vec<String> = client
        .query(
            "SELECT nspname::text FROM pg_namespace WHERE nspname <> 'information_schema' AND nspname NOT LIKE 'pg\\_%' ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| sql("list the schemas", e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let name = role_name(&db);
    let password = crate::servers::local_pg::random_password();
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let role = ident(&name);
    let mut ddl = format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION {} NOINHERIT CONNECTION LIMIT {CONNECTIONS} PASSWORD '{verifier}';
         REVOKE ALL ON DATABASE {db_id} FROM PUBLIC;
         GRANT CONNECT ON DATABASE {db_id} TO {role};",
        if may_bypass { "BYPASSRLS" } else { "NOBYPASSRLS" },
        db_id = ident(&db),
    );
    if !schemas.is_empty() {
        let list = schemas
            .iter()
            .map(|s| ident(s))
            .collect::<Vec<_>>()
            .join(", ");
        ddl.push_str(&format!(
            "GRANT USAGE ON SCHEMA {list} TO {role};
             GRANT SELECT ON ALL TABLES IN SCHEMA {list} TO {role};
             GRANT SELECT ON ALL SEQUENCES IN SCHEMA {list} TO {role};"
        ));
    }
    // One transaction: a role without its grants (or grants without a role)
    // is never left behind.
    client
        .batch_execute(&format!("BEGIN; {ddl} COMMIT;"))
        .await
        .map_err(|e| sql(&format!("create the drill's role {name}"), e))?;
    Ok(DrillRole {
        url: admin.with_login(&name, &password),
        name,
    })
}

/// Drops a drill's role; `server` is the drill server as the drill's own
/// role. After its database is gone (its grants go with it).
pub async fn drop(server: &PgUrl, name: &str) -> Result<(), JobError> {
    let admin = server.with_database("postgres").connect().await?;
    admin
        .batch_execute(&format!("DROP ROLE IF EXISTS {}", ident(name)))
        .await
        .map_err(|e| JobError::sql("postgres", &format!("drop the drill's role {name}"), e))
}

/// Drops the drill roles whose database is gone (a crash between dropping
/// the database and the role, or a run killed before either). A role is
/// made only once its database exists and dropped before the database is
/// made again, so "no database" means no drill is using it.
pub async fn sweep_orphans(admin: &tokio_postgres::Client) {
    let Ok(rows) = admin
        .query(
            "SELECT r.rolname::text FROM pg_roles r WHERE r.rolname ~ '^firedrill_drill_.*_r[0-9a-f]{8}$' \
             AND NOT EXISTS (SELECT 1 FROM pg_database d WHERE d.datname = regexp_replace(r.rolname, '_r[0-9a-f]{8}$', ''))",
            &[],
        )
        .await
    else {
        return;
    };
    for r in rows {
        let name: String = r.get(0);
        tracing::warn!(role = %name, "dropping a drill role left by a crashed run");
        if let Err(e) = admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {}", ident(&name)))
            .await
        {
            tracing::warn!(role = %name, "cannot drop a leftover drill role: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_fit_and_differ() {
        let db = "firedrill_drill_20261122t210000z_k3x9qa_12";
        let (a, b) = (role_name(db), role_name(db));
        assert_ne!(a, b);
        assert!(a.starts_with(db) && a.len() <= 63, "{a}");
        assert!(role_name(&"x".repeat(80)).len() <= 63);
    }

    #[test]
    fn a_role_url_keeps_the_server_and_drops_overriding_parameters() {
        let admin = PgUrl::parse("postgres://admin:s3cret@db:6543/firedrill_drill_x?sslmode=disable&user=admin&password=s3cret").unwrap();
        let u = admin.with_login("firedrill_drill_x_r0a1b2c3d", "pw");
        let s = u.secret_url();
        assert!(s.starts_with("postgres://firedrill_drill_x_r0a1b2c3d:pw@db:6543/firedrill_drill_x?sslmode=disable"), "{s}");
        assert!(!s.contains("s3cret") && !s.contains("user=admin"), "{s}");
    }
}
