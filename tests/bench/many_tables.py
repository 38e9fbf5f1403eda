#!/usr/bin/env python3
"""Scale of the catalog, not only of the data: a multi-tenant layout of many
small tables (FIREDRILL_BENCH_SCHEMAS schemas x FIREDRILL_BENCH_TABLES tables,
100 x 100 by default), each with a uuid key, text, jsonb, a timestamp index and
a few rows. firedrill backs it up, restores it and drills it; pg_dump -Fd and
pg_restore, with the same number of jobs, do the same in the same run.

    tests/bench/run tables        (FIREDRILL_BENCH_SCHEMAS, FIREDRILL_BENCH_TABLES, FIREDRILL_BENCH_JOBS)
"""
import os, subprocess, sys

from backup_restore import BIN, PGBIN, cluster, run, size_of

SCHEMAS = int(os.environ.get("FIREDRILL_BENCH_SCHEMAS", "100"))
TABLES = int(os.environ.get("FIREDRILL_BENCH_TABLES", "100"))
JOBS = int(os.environ.get("FIREDRILL_BENCH_JOBS", "2"))
ROWS = 5


def bench(work, port):
    base = f"postgres://postgres@127.0.0.1:{port}"
    env = f"PGHOST=127.0.0.1 PGPORT={port} PGUSER=postgres"

    def sql(db, text):
        return subprocess.run(f"{env} {PGBIN}/psql -XAtq -v ON_ERROR_STOP=1 {db}", shell=True, input=text, capture_output=True, text=True, check=True).stdout.strip()

    subprocess.run(f"{env} {PGBIN}/createdb tenants", shell=True, check=True)
    for s in range(SCHEMAS):
        sql("tenants", f"""
            CREATE SCHEMA tenant_{s:03};
            DO $$ BEGIN FOR t IN 0..{TABLES - 1} LOOP
              EXECUTE format('CREATE TABLE tenant_{s:03}.t_%s (
                  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                  name text NOT NULL,
                  body jsonb,
                  created timestamptz NOT NULL DEFAULT now())', t);
              EXECUTE format('CREATE INDEX ON tenant_{s:03}.t_%s (created)', t);
              EXECUTE format('INSERT INTO tenant_{s:03}.t_%s (name, body)
                  SELECT md5(g::text), jsonb_build_object(''n'', g, ''tags'', ARRAY[''a'', md5(g::text)])
                  FROM generate_series(1, {ROWS}) g', t);
            END LOOP; END $$;""")
    raw = int(sql("tenants", "SELECT pg_database_size(current_database())"))
    tables = SCHEMAS * TABLES
    out = os.path.join(work, "out")
    os.makedirs(out)
    rows = []

    def restored_ok(db):
        n = sql(db, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname LIKE 'tenant\\_%'")
        assert int(n) == tables, f"{db}: {n} tables restored, {tables} expected"
        got = sql(db, f"SELECT count(*) FROM tenant_{SCHEMAS - 1:03}.t_{TABLES - 1}")
        assert int(got) == ROWS, f"{db}: {got} rows in the last table"

    fd = os.path.join(out, "dump.dir")
    store = os.path.join(out, "store")
    t, rss = run(f"{env} {PGBIN}/pg_dump -Fd -j {JOBS} -f {fd} tenants", shell=True)
    rows.append(("backup", f"pg_dump -Fd -j {JOBS}", t, size_of(fd), rss))
    t, rss = run([BIN, "backup", "--database-url", f"{base}/tenants", "--store", f"file://{store}", "--source", "tenants", "-j", str(JOBS), "--no-globals"])
    rows.append(("backup", f"firedrill backup -j {JOBS}", t, size_of(store), rss))
    subprocess.run(f"{env} {PGBIN}/createdb r_fd", shell=True, check=True)
    t, rss = run(f"{env} {PGBIN}/pg_restore -j {JOBS} -d r_fd {fd}", shell=True)
    restored_ok("r_fd")
    rows.append(("restore", f"pg_restore -j {JOBS}", t, 0, rss))
    subprocess.run(f"{env} {PGBIN}/createdb r_fr", shell=True, check=True)
    t, rss = run([BIN, "restore", "--store", f"file://{store}", "--latest", "--target-url", f"{base}/r_fr", "-j", str(JOBS), "--force"])
    restored_ok("r_fr")
    rows.append(("restore", f"firedrill restore -j {JOBS}", t, 0, rss))
    # A drill restores into its own database and checks every table's count,
    # every index and constraint: no standard tool does that, so no ratio.
    t, rss = run([BIN, "drill", "--latest", "--store", f"file://{store}", "--drill-url", f"{base}/postgres", "-j", str(JOBS)])
    rows.append(("drill", f"firedrill drill -j {JOBS}", t, 0, rss))

    print(f"many small tables: {SCHEMAS} schemas x {TABLES} tables ({tables} tables, {ROWS} rows each, {raw / 2**20:.0f} MiB database), {os.cpu_count()} cores, jobs {JOBS}")
    print()
    print("| step    | tool                          | seconds |   size MiB | peak RSS MiB | firedrill speed vs pg_dump/pg_restore |")
    print("|---------|-------------------------------|--------:|-----------:|-------------:|--------------------------------------:|")
    for step, name, t, size, rss in rows:
        ref = next(r for r in rows if r[0] == step)
        ratio = f"{ref[2] / t:.2f}x" if ref is not rows[-1] and step != "drill" else ""
        size_s = f"{size / 2**20:10.1f}" if size else f"{'':>10}"
        print(f"| {step:<7} | {name:<29} | {t:7.2f} | {size_s} | {rss:12.0f} | {ratio:>37} |")


if __name__ == "__main__":
    cluster(bench)
