//! Jobs: what the agent does. Each takes a store and options, does its work
//! natively (plugins only decide), and returns a summary.
//!
//! - `backup/`: a consistent, parallel, streaming dump of a server's databases
//!   (`redis`: a Redis server's RDB snapshot).
//! - `restore/`: one database of a backup into a new (or emptied) database
//!   (`script`: the schema scripts firedrill agrees to execute).
//! - `drill/`: prove a backup (`redis`: Redis drills; `role`: the drill's
//!   least-privileged role).
//! - `prune`: delete the backups a retention policy lets go; `rekey`.
//! - `large_objects`: their backup and restore.
//! - `status`: a job's kind and state, as the API and the catalog name them.
//!
//! Jobs never take leases or count themselves: the agent (`crate::agent`)
//! runs every job, whatever its trigger.
//!
//! Invariant: a job's failure names what failed (the object, the table, the
//! tool) and never leaves a half-written backup listed as complete.

pub mod backup;
pub mod drill;
pub mod large_objects;
pub mod prune;
pub mod rekey;
pub mod restore;
pub mod status;
pub mod wal;

use crate::archive::ArchiveError;
use crate::runtime::CallError;
use crate::servers::ServerError;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Config(String),
    /// A server's failure (a URL, a connection, a statement, a client
    /// tool), in the servers' own words.
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("the target database {database} is not empty ({objects} tables, views or sequences); restore into a new database, or pass --force to replace it")]
    TargetNotEmpty { database: String, objects: i64 },
    #[error("dump plan: {0}")]
    Plan(String),
    /// A schema script that firedrill refuses to execute (see `restore::script`).
    #[error("{object}: {source}")]
    Script {
        object: String,
        source: restore::script::ScriptError,
    },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Plugin(#[from] CallError),
    #[error(transparent)]
    Coord(#[from] crate::coord::CoordError),
    #[error("internal error: {0}")]
    Internal(String),
    /// A drill with no backup of the kind it was asked for (none yet, or
    /// every one drilled): nothing to prove, which a scheduled drill skips.
    #[error("{0}")]
    NothingToDrill(String),
}

impl JobError {
    /// See [`ServerError::sql`]: the same message and hints.
    pub(crate) fn sql(database: &str, what: &str, e: tokio_postgres::Error) -> JobError {
        ServerError::sql(database, what, e).into()
    }

    /// A statement on `database` that cannot go on for a reason firedrill
    /// names itself (`message` says the fix).
    pub(crate) fn refused(database: &str, what: impl Into<String>, message: String) -> JobError {
        ServerError::Sql {
            database: database.into(),
            what: what.into(),
            message,
        }
        .into()
    }

    /// A client tool or a local server that failed.
    pub(crate) fn tool(tool: &str, message: String) -> JobError {
        ServerError::Tool {
            tool: tool.into(),
            message,
        }
        .into()
    }
}
