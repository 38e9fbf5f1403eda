//! The servers firedrill talks to and the throwaway ones it starts:
//! PostgreSQL (connection URLs, TLS, the client tools picked per server
//! major, local clusters) and Redis (URLs, a small RESP client, the RDB
//! snapshot over the replication protocol).
//!
//! Invariant: nothing here knows about jobs, plugins, the agent or the
//! archive's layout; a password never reaches a message or a command line.

pub mod local_pg;
pub mod pg;
pub mod pg_tls;
pub mod redis;
