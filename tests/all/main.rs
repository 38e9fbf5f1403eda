//! Integration tests: one binary, a module per feature, all sharing the
//! harness that starts real servers.

mod harness;

mod agent;
mod api;
mod backup_restore;
mod builtin_plugins;
mod caps_keyvalue;
mod caps_sql;
mod catalog;
mod cli;
mod code_cache;
mod crash;
mod db_faults;
mod drills;
mod encryption;
mod fleet;
mod hostile_backups;
mod hostile_plugins;
mod incremental;
mod incremental_retention;
mod incremental_wiring;
mod job_path;
mod large_objects;
mod least_privilege;
mod load;
mod many_tables;
mod object_stores;
mod parallel_restore;
mod pitr;
mod pitr_faults;
mod pitr_retention;
mod plugin_authoring;
mod policies;
mod postgres_objects;
mod postgres_tls;
mod redaction;
mod redis_backups;
mod reload;
mod retention;
mod servers;
mod status;
mod store_faults;
mod telemetry;
mod torture;
mod versions;
