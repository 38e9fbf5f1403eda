//! The catalog's schema, one versioned migration at a time, each with its
//! way back. Versions only grow; a released migration is never edited (add
//! the next one instead).

pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub up: &'static str,
    pub down: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "backups",
        up: "CREATE TABLE firedrill.backups (
                 source text NOT NULL,
                 id text NOT NULL,
                 kind text NOT NULL,
                 created timestamptz NOT NULL,
                 size_bytes bigint NOT NULL,
                 tables integer NOT NULL,
                 seconds double precision,
                 encrypted boolean NOT NULL,
                 signed boolean NOT NULL,
                 synced timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (source, id)
             )",
        down: "DROP TABLE firedrill.backups",
    },
    Migration {
        version: 2,
        name: "drills",
        up: "CREATE TABLE firedrill.drills (
                 report text PRIMARY KEY,
                 source text NOT NULL,
                 backup_id text NOT NULL,
                 started timestamptz NOT NULL,
                 finished timestamptz NOT NULL,
                 passed boolean NOT NULL,
                 rto_seconds double precision NOT NULL,
                 rpo_seconds bigint NOT NULL,
                 failed_checks integer NOT NULL,
                 error text,
                 body jsonb NOT NULL
             );
             CREATE INDEX drills_backup ON firedrill.drills (source, backup_id)",
        down: "DROP TABLE firedrill.drills",
    },
    Migration {
        version: 3,
        name: "jobs and audit",
        up: "CREATE TABLE firedrill.jobs (
                 id text PRIMARY KEY,
                 kind text NOT NULL,
                 source text NOT NULL,
                 trigger text NOT NULL,
                 state text NOT NULL,
                 created timestamptz NOT NULL,
                 started timestamptz,
                 finished timestamptz,
                 backup_id text,
                 passed boolean,
                 error text,
                 node text NOT NULL
             );
             CREATE TABLE firedrill.audit (
                 seq bigserial PRIMARY KEY,
                 at timestamptz NOT NULL DEFAULT now(),
                 entry jsonb NOT NULL
             )",
        down: "DROP TABLE firedrill.audit; DROP TABLE firedrill.jobs",
    },
];

/// The version this firedrill writes to.
pub fn latest() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}
