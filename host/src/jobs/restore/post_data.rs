//! Post-data (indexes, constraints, foreign keys, triggers, ...) applied
//! over the restore's connections side by side, as `pg_restore -j` does:
//! the script is cut into steps (`plan`), each either statements that run
//! together (index builds and key constraints of different tables, the
//! validation of foreign keys) or one statement alone; steps run in the
//! script's order (the restore's `load`, which overlaps the first step with
//! the loading of the data: `Together`).
//!
//! Foreign keys are added `NOT VALID` one after another (a catalog change)
//! and validated side by side afterwards: adding one checks every row
//! under a lock on both tables, so keys that share a referenced table
//! would otherwise wait on each other; a validation locks only its own
//! table against other validations.
//!
//! Invariants: only statements whose shape is known (`script::Shape`) ever
//! leave their place, and only within a run of such statements; whatever
//! else the script holds runs alone, after everything before it and before
//! everything after it; each connection carries the script's session
//! settings (`SET ...`) as they stood where the statement was written; two
//! statements that would wait on each other's table lock never run at once.

use super::script::{Shape, Statement, TableName};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A statement to run, as the server will receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sql {
    /// The script's line, for errors (a validation names its key's line).
    pub line: usize,
    pub text: String,
}

/// Statements that run in order on one connection, holding `locks`.
#[derive(Debug, Clone)]
pub struct Job {
    pub statements: Vec<Sql>,
    /// Tables it locks: (table, exclusive against the other jobs).
    pub locks: Vec<(TableName, bool)>,
    /// Bigger first, so the longest builds start early.
    pub cost: u64,
    /// The session settings where it was written (name, statement).
    pub session: Arc<Vec<(String, String)>>,
    /// It calls a function of a schema (`app.f(...)` in an index expression
    /// or a CHECK), which may read any table: it waits for every load.
    pub calls: bool,
}

#[derive(Debug, Clone)]
pub enum Step {
    Alone(Job),
    Together(Vec<Job>),
}

/// Cuts `statements` into steps. `tables` holds the backup's ordinary
/// tables and partitions (their stored size as the cost of their
/// indexes). An index or key of any other table with `ONLY` (a partitioned
/// table's own, a catalog change) runs alone at the end of its run, so
/// its locks never meet the partitions' builds; anything else naming a
/// table not listed runs alone in its place, as it may reach partitions or
/// children that nothing here knows of.
pub fn plan(statements: &[Statement<'_>], tables: &HashMap<TableName, u64>) -> Vec<Step> {
    #[derive(PartialEq, Clone, Copy)]
    enum Went {
        Together,
        Catalog,
        Alone,
    }
    #[derive(Default)]
    struct Run {
        catalog: Vec<Job>,
        together: Vec<Job>,
    }
    impl Run {
        /// The run's side-by-side jobs first (so a restore can start them
        /// while other tables still load), then its catalog changes alone:
        /// a partitioned parent's `ONLY` index may come after its
        /// partitions' (only the `ATTACH` that follows the run needs both).
        fn flush(&mut self, steps: &mut Vec<Step>) {
            if !self.together.is_empty() {
                steps.push(Step::Together(std::mem::take(&mut self.together)));
            }
            steps.extend(self.catalog.drain(..).map(Step::Alone));
        }
    }
    let mut steps = Vec::new();
    let mut run = Run::default();
    let mut validations = Run::default();
    // Every setting the script makes, reset until it is set: a connection
    // may run a job written before a setting appeared after one written
    // after it.
    let mut session: Vec<(String, String)> = Vec::new();
    for st in statements {
        if let Shape::Session(name) = &st.shape {
            if !is_setting_name(name) {
                // Not a form pg_dump writes (SET ROLE, SET SESSION
                // AUTHORIZATION): the script as written, on one connection.
                return sequential(statements);
            }
            if !session.iter().any(|(n, _)| n == name) {
                session.push((name.clone(), format!("RESET {name};")));
            }
        }
    }
    let mut current = Arc::new(session.clone());
    let mut last = Went::Alone;
    let size = |t: &TableName| tables.get(t).copied().unwrap_or(0);
    let job = |st: &Statement<'_>, text: String, locks, cost, session: &Arc<_>| Job {
        calls: calls_a_schemas_function(&text),
        statements: vec![Sql {
            line: st.line,
            text,
        }],
        locks,
        cost,
        session: Arc::clone(session),
    };
    for st in statements {
        let listed = |t: &TableName| tables.contains_key(t);
        last = match &st.shape {
            Shape::Session(name) => {
                let s = session.iter_mut().find(|(n, _)| n == name);
                s.expect("every setting was listed").1 = st.sql.to_string();
                current = Arc::new(session.clone());
                // Settings apply to what follows: they leave nothing behind.
                continue;
            }
            // An index build takes a share lock (several run on one
            // table together); a key constraint locks the table alone.
            Shape::Index { table, .. } | Shape::Constraint { table } if listed(table) => {
                let exclusive = matches!(st.shape, Shape::Constraint { .. });
                let locks = vec![(table.clone(), exclusive)];
                run.together
                    .push(job(st, st.sql.into(), locks, size(table), &current));
                Went::Together
            }
            Shape::Index { only: true, .. } | Shape::Constraint { .. } => {
                run.catalog
                    .push(job(st, st.sql.into(), vec![], 0, &current));
                Went::Catalog
            }
            Shape::ForeignKey {
                table,
                name,
                references,
                not_valid,
            } if listed(table) && listed(references) => {
                // The referenced key must exist: the builds before go first.
                run.flush(&mut steps);
                if *not_valid {
                    steps.push(Step::Alone(job(st, st.sql.into(), vec![], 0, &current)));
                } else {
                    let body = st.sql.trim_end().trim_end_matches(';');
                    let add = format!("{body} NOT VALID;");
                    steps.push(Step::Alone(job(st, add, vec![], 0, &current)));
                    let validate = format!(
                        "ALTER TABLE ONLY {} VALIDATE CONSTRAINT {};",
                        qualified(table),
                        crate::servers::pg::ident(name)
                    );
                    let cost = size(table) + size(references);
                    let j = job(st, validate, vec![(table.clone(), true)], cost, &current);
                    validations.together.push(j);
                }
                Went::Alone
            }
            Shape::Comment if last != Went::Alone => {
                let to = match last {
                    Went::Together => &mut run.together,
                    _ => &mut run.catalog,
                };
                to.last_mut()
                    .expect("the statement before went there")
                    .statements
                    .push(Sql {
                        line: st.line,
                        text: st.sql.into(),
                    });
                last
            }
            Shape::Comment => {
                // After a statement alone (a key added): in order, and the
                // validations still wait.
                steps.push(Step::Alone(job(st, st.sql.into(), vec![], 0, &current)));
                Went::Alone
            }
            _ => {
                run.flush(&mut steps);
                validations.flush(&mut steps);
                steps.push(Step::Alone(job(st, st.sql.into(), vec![], 0, &current)));
                Went::Alone
            }
        };
    }
    run.flush(&mut steps);
    validations.flush(&mut steps);
    for s in &mut steps {
        if let Step::Together(jobs) = s {
            // Stable: equal costs keep the script's order.
            jobs.sort_by(|a, b| b.cost.cmp(&a.cost));
        }
    }
    steps
}

/// Every statement alone, in order, on the first connection (whose
/// session keeps the settings as the script makes them).
fn sequential(statements: &[Statement<'_>]) -> Vec<Step> {
    statements
        .iter()
        .map(|st| {
            Step::Alone(Job {
                statements: vec![Sql {
                    line: st.line,
                    text: st.sql.into(),
                }],
                locks: vec![],
                cost: 0,
                session: Arc::new(vec![]),
                calls: true,
            })
        })
        .collect()
}

/// Whether `sql` holds a qualified call, `name.name (` (quoted names too):
/// pg_dump writes its scripts with an empty search_path, so every function
/// outside pg_catalog appears so. Built-ins (`lower(x)`) do not, nor do
/// `USING btree (`, `KEY (`. A false yes only makes a job wait longer.
fn calls_a_schemas_function(sql: &str) -> bool {
    let b = sql.as_bytes();
    // Where the name that ends at `end` starts: a word, or "quoted" (with
    // "" inside).
    let name_start = |end: usize| -> Option<usize> {
        if end > 0 && b[end - 1] == b'"' {
            let mut j = end - 1;
            loop {
                let open = b[..j].iter().rposition(|&c| c == b'"')?;
                if open > 0 && b[open - 1] == b'"' {
                    j = open - 1;
                    continue;
                }
                return Some(open);
            }
        }
        let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
        let start = b[..end]
            .iter()
            .rposition(|&c| !word(c))
            .map_or(0, |p| p + 1);
        (start < end).then_some(start)
    };
    (0..b.len()).filter(|&i| b[i] == b'(').any(|i| {
        let mut end = i;
        while end > 0 && b[end - 1].is_ascii_whitespace() {
            end -= 1;
        }
        match name_start(end) {
            Some(f) if f > 0 && b[f - 1] == b'.' => name_start(f - 1).is_some(),
            _ => false,
        }
    })
}

/// A setting's name as `RESET` takes it.
fn is_setting_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

fn qualified(t: &TableName) -> String {
    format!(
        "{}.{}",
        crate::servers::pg::ident(&t.0),
        crate::servers::pg::ident(&t.1)
    )
}

/// Which jobs may start now, given what runs: the index of the first
/// (costliest) one that may start (`ready`) and whose locks do not meet a
/// running job's.
fn next_runnable(
    pending: &[Job],
    running: &[Vec<(TableName, bool)>],
    ready: impl Fn(&Job) -> bool,
) -> Option<usize> {
    pending.iter().position(|j| {
        ready(j)
            && !j.locks.iter().any(|(t, excl)| {
                running
                    .iter()
                    .flatten()
                    .any(|(u, other_excl)| t == u && (*excl || *other_excl))
            })
    })
}

/// What a connection does next: load `L` (a table's data) or run a job.
#[derive(Debug)]
pub enum Task<L> {
    Load(L),
    Job(Job),
}

/// Hands loads and a step's jobs out to the connections side by side:
/// every load first (in the order given), and a job only once each table
/// it locks has finished loading, never beside a job whose locks it meets.
/// A restore gives its first step this way, so the index builds of a
/// loaded table run while bigger tables still load, as `pg_restore -j`
/// does; later steps have no loads. Each connection loops on `next` (its
/// index) and calls `done` when the task ended, however it ended.
pub struct Together<L> {
    state: Mutex<State<L>>,
    finished: tokio::sync::Notify,
}

struct State<L> {
    loads: std::collections::VecDeque<(TableName, L)>,
    /// Loads given or running, by table.
    unloaded: HashMap<TableName, usize>,
    pending: Vec<Job>,
    running: HashMap<usize, Running>,
}

enum Running {
    Load(TableName),
    Job(Vec<(TableName, bool)>),
}

impl<L> Together<L> {
    pub fn with_loads(loads: Vec<(TableName, L)>, jobs: Vec<Job>) -> Together<L> {
        let mut unloaded = HashMap::new();
        for (t, _) in &loads {
            *unloaded.entry(t.clone()).or_insert(0) += 1;
        }
        Together {
            state: Mutex::new(State {
                loads: loads.into(),
                unloaded,
                pending: jobs,
                running: HashMap::new(),
            }),
            finished: tokio::sync::Notify::new(),
        }
    }

    /// The next task for connection `worker`; waits while every pending job
    /// waits on a load or meets a running job's lock; `None` once nothing
    /// is left to hand out.
    pub async fn next(&self, worker: usize) -> Option<Task<L>> {
        loop {
            let notified = self.finished.notified();
            tokio::pin!(notified);
            // Registered before looking, so a task ending meanwhile wakes us.
            notified.as_mut().enable();
            {
                let mut s = self.state.lock().unwrap();
                if let Some((table, load)) = s.loads.pop_front() {
                    s.running.insert(worker, Running::Load(table));
                    return Some(Task::Load(load));
                }
                if s.pending.is_empty() {
                    return None;
                }
                let running: Vec<_> = s
                    .running
                    .values()
                    .filter_map(|r| match r {
                        Running::Job(locks) => Some(locks.clone()),
                        Running::Load(_) => None,
                    })
                    .collect();
                let unloaded = &s.unloaded;
                let loaded = |j: &Job| match j.calls {
                    true => unloaded.is_empty(),
                    false => j.locks.iter().all(|(t, _)| !unloaded.contains_key(t)),
                };
                if let Some(k) = next_runnable(&s.pending, &running, loaded) {
                    let job = s.pending.remove(k);
                    s.running.insert(worker, Running::Job(job.locks.clone()));
                    return Some(Task::Job(job));
                }
            }
            notified.await;
        }
    }

    /// `ok`: whether the task succeeded; after a failure nothing more is
    /// handed out (the table may be half loaded; the restore is over).
    pub fn done(&self, worker: usize, ok: bool) {
        let mut s = self.state.lock().unwrap();
        if !ok {
            s.loads.clear();
            s.pending.clear();
        }
        if let Some(Running::Load(t)) = s.running.remove(&worker) {
            if let Some(n) = s.unloaded.get_mut(&t) {
                *n -= 1;
                if *n == 0 {
                    s.unloaded.remove(&t);
                }
            }
        }
        drop(s);
        self.finished.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::restore::script::split;

    fn t(s: &str, n: &str) -> TableName {
        (s.into(), n.into())
    }

    fn texts(job: &Job) -> Vec<&str> {
        job.statements.iter().map(|s| s.text.as_str()).collect()
    }

    /// The pg_dump 15 post-data script of the script tests.
    #[test]
    fn pg_dumps_post_data_is_cut_into_runs() {
        let script = include_str!("testdata/pg15-post-data.sql");
        let statements = split(script.as_bytes()).unwrap();
        let tables: HashMap<_, _> = [
            (t("app", "orders"), 100),
            (t("app", "users"), 10),
            (t("app", "parted_1"), 5),
            (t("app", "big_orders"), 1),
        ]
        .into();
        let steps = plan(&statements, &tables);
        let Step::Together(first) = &steps[0] else {
            panic!("{steps:#?}")
        };
        // PKs of both tables, the partition's index, the other indexes:
        // side by side, biggest first.
        assert_eq!(first.len(), 5, "{first:#?}");
        assert_eq!(first[0].locks, vec![(t("app", "orders"), true)]);
        assert_eq!(first[1].locks, vec![(t("app", "orders"), false)]);
        // The session the script set up travels with each job.
        assert!(first[0]
            .session
            .iter()
            .any(|(n, s)| n == "search_path" && s.contains("set_config")));
        assert!(first[0]
            .session
            .iter()
            .any(|(n, _)| n == "default_tablespace"));
        // The partitioned parent's own index (ONLY, not a listed table)
        // after them, alone: a catalog change.
        let Step::Alone(parent) = &steps[1] else {
            panic!("{steps:#?}")
        };
        assert!(texts(parent)[0].starts_with("CREATE INDEX parted_k_idx ON ONLY app.parted"));
        // ATTACH PARTITION and everything else after it: alone, in order.
        let Step::Alone(attach) = &steps[2] else {
            panic!("{steps:#?}")
        };
        assert!(texts(attach)[0].starts_with("ALTER INDEX app.parted_k_idx ATTACH"));
        // The foreign key: added NOT VALID alone, validated in a later step.
        let add = steps
            .iter()
            .position(|s| matches!(s, Step::Alone(j) if j.statements[0].text.contains("orders_user_id_fkey")))
            .unwrap();
        let Step::Alone(j) = &steps[add] else {
            unreachable!()
        };
        assert!(
            j.statements[0]
                .text
                .ends_with("REFERENCES app.users(id) NOT VALID;"),
            "{j:?}"
        );
        let Step::Together(v) = &steps[add + 1] else {
            panic!("{steps:#?}")
        };
        assert_eq!(
            texts(&v[0]),
            vec![
                "ALTER TABLE ONLY \"app\".\"orders\" VALIDATE CONSTRAINT \"orders_user_id_fkey\";"
            ]
        );
        // Validated before the next statement (ENABLE ROW LEVEL SECURITY).
        assert!(
            matches!(&steps[add + 2], Step::Alone(j) if j.statements[0].text.contains("ENABLE ROW LEVEL SECURITY"))
        );
        // Nothing lost, nothing doubled: every statement but the settings
        // and the \restrict lines is in exactly one step.
        let all: Vec<String> = steps
            .iter()
            .flat_map(|s| match s {
                Step::Alone(j) => vec![j.clone()],
                Step::Together(js) => js.clone(),
            })
            .flat_map(|j| j.statements)
            .map(|s| s.text)
            .filter(|s| !s.contains("VALIDATE CONSTRAINT"))
            .collect();
        let expected: Vec<_> = statements
            .iter()
            .filter(|s| !matches!(s.shape, Shape::Session(_)))
            .collect();
        assert_eq!(all.len(), expected.len());
    }

    #[test]
    fn unknown_tables_and_unknown_statements_run_alone_in_place() {
        let script = "CREATE INDEX a ON s.t1 USING btree (x);\n\
            CREATE INDEX b ON s.view_like USING btree (x);\n\
            CREATE INDEX c ON s.t2 USING btree (x);\n\
            ALTER TABLE s.t1 CLUSTER ON a;\n\
            CREATE INDEX d ON s.t2 USING btree (y);\n\
            COMMENT ON INDEX s.d IS 'why';\n\
            ALTER TABLE ONLY s.t1 ADD CONSTRAINT f FOREIGN KEY (x) REFERENCES s.parted(id);\n\
            ALTER TABLE ONLY s.t1 ADD CONSTRAINT g FOREIGN KEY (x) REFERENCES s.t2(id) NOT VALID;\n\
            ALTER TABLE ONLY \"S\".\"T \"\"3\" ADD CONSTRAINT h FOREIGN KEY (x) REFERENCES s.t2(id) DEFERRABLE;";
        let statements = split(script.as_bytes()).unwrap();
        let tables: HashMap<_, _> =
            [(t("s", "t1"), 1), (t("s", "t2"), 2), (t("S", "T \"3"), 3)].into();
        let steps = plan(&statements, &tables);
        let shape: Vec<String> = steps
            .iter()
            .map(|s| match s {
                Step::Alone(j) => format!("alone {}", texts(j).join(" ")),
                Step::Together(js) => format!(
                    "together {}",
                    js.iter()
                        .map(|j| texts(j).join(" "))
                        .collect::<Vec<_>>()
                        .join(" | ")
                ),
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                "together CREATE INDEX a ON s.t1 USING btree (x);",
                "alone CREATE INDEX b ON s.view_like USING btree (x);",
                "together CREATE INDEX c ON s.t2 USING btree (x);",
                "alone ALTER TABLE s.t1 CLUSTER ON a;",
                "together CREATE INDEX d ON s.t2 USING btree (y); COMMENT ON INDEX s.d IS 'why';",
                // A key to a table the backup does not list (a partitioned one): as written.
                "alone ALTER TABLE ONLY s.t1 ADD CONSTRAINT f FOREIGN KEY (x) REFERENCES s.parted(id);",
                // NOT VALID in the dump: never validated here.
                "alone ALTER TABLE ONLY s.t1 ADD CONSTRAINT g FOREIGN KEY (x) REFERENCES s.t2(id) NOT VALID;",
                "alone ALTER TABLE ONLY \"S\".\"T \"\"3\" ADD CONSTRAINT h FOREIGN KEY (x) REFERENCES s.t2(id) DEFERRABLE NOT VALID;",
                "together ALTER TABLE ONLY \"S\".\"T \"\"3\" VALIDATE CONSTRAINT \"h\";",
            ]
        );
    }

    #[test]
    fn settings_reset_where_unset_and_unknown_ones_keep_the_script_whole() {
        let script = "SET a = 1;\nCREATE INDEX i ON s.t USING btree (x);\nSET b = 2;\nCREATE INDEX j ON s.u USING btree (x);";
        let tables: HashMap<_, _> = [(t("s", "t"), 1), (t("s", "u"), 2)].into();
        let steps = plan(&split(script.as_bytes()).unwrap(), &tables);
        let Step::Together(jobs) = &steps[0] else {
            panic!("{steps:#?}")
        };
        let session = |k: usize| {
            jobs[k]
                .session
                .iter()
                .map(|(_, s)| s.as_str())
                .collect::<Vec<_>>()
        };
        // j (the costlier) was written after SET b; i before it: b is reset.
        assert_eq!(session(0), vec!["SET a = 1;", "SET b = 2;"]);
        assert_eq!(session(1), vec!["SET a = 1;", "RESET b;"]);
        let script = "SET ROLE owner;\nCREATE INDEX i ON s.t USING btree (x);\nCREATE INDEX j ON s.u USING btree (x);";
        let steps = plan(&split(script.as_bytes()).unwrap(), &tables);
        let alone: Vec<_> = steps
            .iter()
            .map(|s| match s {
                Step::Alone(j) => j.statements[0].text.as_str(),
                Step::Together(_) => panic!("{steps:#?}"),
            })
            .collect();
        assert_eq!(
            alone,
            vec![
                "SET ROLE owner;",
                "CREATE INDEX i ON s.t USING btree (x);",
                "CREATE INDEX j ON s.u USING btree (x);"
            ]
        );
    }

    #[test]
    fn locks_that_meet_wait() {
        let job = |table: &str, excl: bool| Job {
            statements: vec![],
            locks: vec![(t("s", table), excl)],
            cost: 0,
            session: Arc::new(vec![]),
            calls: false,
        };
        let running = vec![vec![(t("s", "a"), false)]];
        // Two index builds on one table run together; a key constraint waits.
        assert_eq!(
            next_runnable(&[job("a", false)], &running, |_| true),
            Some(0)
        );
        assert_eq!(
            next_runnable(&[job("a", true), job("b", true)], &running, |_| true),
            Some(1)
        );
        assert_eq!(next_runnable(&[job("a", true)], &running, |_| true), None);
        assert_eq!(
            next_runnable(&[job("a", false)], &[vec![(t("s", "a"), true)]], |_| true),
            None
        );
    }

    /// Runs `jobs` over `n` workers, each job through `body`.
    async fn run_all<F, Fut>(jobs: Vec<Job>, n: usize, body: F) -> Result<(), &'static str>
    where
        F: Fn(Job) -> Fut,
        Fut: std::future::Future<Output = Result<(), &'static str>>,
    {
        let together = Together::<()>::with_loads(Vec::new(), jobs);
        let (together, body) = (&together, &body);
        let workers = (0..n).map(|i| async move {
            while let Some(task) = together.next(i).await {
                let Task::Job(job) = task else {
                    unreachable!("no loads given")
                };
                let r = body(job).await;
                together.done(i, r.is_ok());
                r?;
            }
            Ok::<(), &'static str>(())
        });
        futures::future::try_join_all(workers).await.map(|_| ())
    }

    #[tokio::test]
    async fn jobs_run_side_by_side_and_never_with_a_meeting_lock() {
        let job = |table: &str, excl: bool, cost| Job {
            statements: vec![Sql {
                line: 1,
                text: table.into(),
            }],
            locks: vec![(t("s", table), excl)],
            cost,
            session: Arc::new(vec![]),
            calls: false,
        };
        let jobs = vec![
            job("a", true, 3),
            job("a", false, 2),
            job("b", false, 1),
            job("c", false, 0),
        ];
        let log = Mutex::new(Vec::<(String, &'static str)>::new());
        let live = Mutex::new(Vec::<(String, bool)>::new());
        let (log_ref, live_ref) = (&log, &live);
        run_all(jobs, 2, |j: Job| async move {
            let name = j.statements[0].text.clone();
            let excl = j.locks[0].1;
            {
                let mut l = live_ref.lock().unwrap();
                assert!(
                    !l.iter().any(|(n, e)| *n == name && (*e || excl)),
                    "{name} ran beside a job holding its table"
                );
                l.push((name.clone(), excl));
            }
            log_ref.lock().unwrap().push((name.clone(), "start"));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            live_ref
                .lock()
                .unwrap()
                .retain(|(n, e)| !(*n == name && *e == excl));
            log_ref.lock().unwrap().push((name, "end"));
            Ok(())
        })
        .await
        .unwrap();
        let log = log.into_inner().unwrap();
        assert_eq!(log.len(), 8);
        // The exclusive job on a started first, and b beside it.
        assert_eq!(log[0], ("a".into(), "start"));
        assert_eq!(log[1], ("b".into(), "start"));
    }

    #[tokio::test]
    async fn a_failing_job_stops_the_step() {
        let jobs = (0..4)
            .map(|i| Job {
                statements: vec![],
                locks: vec![],
                cost: 0,
                session: Arc::new(vec![(i.to_string(), String::new())]),
                calls: false,
            })
            .collect();
        let r = run_all(jobs, 2, |j: Job| async move {
            match j.session[0].0.as_str() {
                "1" => Err("broke"),
                _ => Ok(()),
            }
        })
        .await;
        assert_eq!(r, Err("broke"));
    }

    #[tokio::test]
    async fn a_tables_jobs_wait_for_its_loads_and_other_tables_go_on() {
        let job = |table: &str| Job {
            statements: vec![Sql {
                line: 1,
                text: table.into(),
            }],
            locks: vec![(t("s", table), false)],
            cost: 0,
            session: Arc::new(vec![]),
            calls: false,
        };
        let loads = vec![
            (t("s", "big"), "big 1"),
            (t("s", "small"), "small"),
            (t("s", "big"), "big 2"),
        ];
        // A call to a schema's function may read any table: it waits for all.
        let calls = Job {
            calls: true,
            ..job("calls")
        };
        let together =
            Together::with_loads(loads, vec![job("big"), job("small"), job("none"), calls]);
        let mut order = vec![];
        // Worker 0 loads big's first part and worker 1 small; big's second
        // part goes next, whoever asks.
        let Some(Task::Load(a)) = together.next(0).await else {
            panic!()
        };
        let Some(Task::Load(b)) = together.next(1).await else {
            panic!()
        };
        order.extend([a, b]);
        together.done(1, true);
        let Some(Task::Load(c)) = together.next(1).await else {
            panic!()
        };
        order.push(c);
        assert_eq!(order, vec!["big 1", "small", "big 2"]);
        // Loads all handed out: small's job and the loadless table's may
        // start, big's may not while a part of it loads.
        let mut ran = vec![];
        for _ in 0..2 {
            let Some(Task::Job(j)) = together.next(2).await else {
                panic!()
            };
            ran.push(j.statements[0].text.clone());
            together.done(2, true);
        }
        ran.sort();
        assert_eq!(ran, vec!["none", "small"]);
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), together.next(2)).await;
        assert!(waiting.is_err(), "big's job started while big loaded");
        together.done(0, true);
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), together.next(2)).await;
        assert!(waiting.is_err(), "big's job started while big loaded");
        together.done(1, true);
        let mut ran = vec![];
        for _ in 0..2 {
            let Some(Task::Job(j)) = together.next(2).await else {
                panic!()
            };
            ran.push(j.statements[0].text.clone());
            together.done(2, true);
        }
        assert_eq!(ran, vec!["big", "calls"]);
        assert!(together.next(0).await.is_none());
    }

    #[test]
    fn a_call_to_a_schemas_function_is_seen() {
        let yes = [
            "CREATE INDEX i ON app.t USING btree (app.norm(email));",
            "ALTER TABLE app.t ADD CONSTRAINT c CHECK (\"My App\".\"ok?\" (x));",
            "CREATE INDEX i ON app.t USING btree (x) WHERE app.live(x);",
        ];
        let no = [
            "CREATE INDEX i ON app.t USING btree (lower(email));",
            "ALTER TABLE ONLY app.t ADD CONSTRAINT t_pkey PRIMARY KEY (id);",
            "CREATE INDEX i ON \"app\".\"t\" USING gist (during);",
            "ALTER TABLE ONLY app.t ADD CONSTRAINT x EXCLUDE USING gist (during WITH &&);",
        ];
        for sql in yes {
            assert!(calls_a_schemas_function(sql), "{sql}");
        }
        for sql in no {
            assert!(!calls_a_schemas_function(sql), "{sql}");
        }
    }

    #[tokio::test]
    async fn after_a_failure_nothing_more_is_handed_out() {
        let loads = vec![(t("s", "a"), 1), (t("s", "b"), 2)];
        let together = Together::with_loads(loads, vec![]);
        let Some(Task::Load(1)) = together.next(0).await else {
            panic!()
        };
        together.done(0, false);
        assert!(together.next(1).await.is_none());
    }
}
