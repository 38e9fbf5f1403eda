//! `firedrill demo`: will start a throwaway Postgres, back it up, drill the
//! backup and print the report. The backup engine and drills are not built
//! yet, so it says so instead of pretending.

use std::process::ExitCode;

pub fn run() -> anyhow::Result<ExitCode> {
    eprintln!(
        "firedrill demo: not yet. The demo (a throwaway Postgres, a backup, a fire drill, a report)\n\
         arrives with the backup engine and the drills. What works today: the plugin runtime;\n\
         try `firedrill policy check policies/` or `firedrill plugin check policies/verifier_sql.wasm`."
    );
    Ok(ExitCode::from(2))
}
