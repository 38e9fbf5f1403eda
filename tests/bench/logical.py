#!/usr/bin/env python3
"""Logical backup and restore at the machine's limit: firedrill against
pg_dump / pg_restore and against the floor of what the server itself can
do, on realistic data, in one run.

A throwaway cluster (Debian's newest server, random local port) gets
pitr.py's service-shaped database (users with uuid keys, unique e-mails and
role arrays; documents with text bodies, a jsonb OCR result and an index on
created_at; a join table with a composite key; foreign keys) of about
FIREDRILL_BENCH_MB (default 800), and, as a second table, `pgbench -i` data
(FIREDRILL_BENCH_SCALE, default 50), whose rows compress ~200x and cost the
server little to produce. For each database, with JOBS = FIREDRILL_BENCH_JOBS
(default 2, the cores here):

backup   pg_dump | gzip -6 (the template), pg_dump -Fd -j JOBS,
         firedrill backup -j JOBS, and the floor: one
         `COPY t TO STDOUT | zstd -3 > /dev/null` per table, all at once;
restore  pg_restore -j JOBS (from the -Fd dump), firedrill restore -j JOBS,
         and the floor: one `COPY t FROM file` per table at once into tables
         without indexes, then the index builds and keys by
         `pg_restore -j JOBS --section=post-data`; and the same with the
         biggest table's file cut into JOBS parts loaded side by side
         (firedrill loads a big table in parts too: before PostgreSQL 16
         in at most two, from 16 chunk by chunk).

Every restore is checked (row count and a digest of the biggest table).
Peak RSS of every firedrill row; the service-shaped backup and restore also
at a quarter of the size, to show that memory does not grow with the data.

    tests/bench/run logical     (FIREDRILL_BENCH_MB, FIREDRILL_BENCH_SCALE, FIREDRILL_BENCH_JOBS)
"""
import itertools, os, shutil, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True
import pitr
from pitr import psql, run, size_of

MB = int(os.environ.get("FIREDRILL_BENCH_MB", "800"))
SCALE = int(os.environ.get("FIREDRILL_BENCH_SCALE", "50"))
JOBS = int(os.environ.get("FIREDRILL_BENCH_JOBS", "2"))
BIN = pitr.BIN
PGBIN = pitr.PGBIN

# What a restore must reproduce: rows, and a digest of the biggest table.
CHECKS = {
    "app": ("documents", "SELECT count(*) || ' ' || md5(string_agg(id::text || title || md5(body) || ocr::text, ',' ORDER BY id)) FROM documents"),
    "bench": ("pgbench_accounts", "SELECT count(*) || ' ' || md5(string_agg(aid::text || abalance || filler, ',' ORDER BY aid)) FROM pgbench_accounts"),
}


def timed_shell(cmd):
    t0 = time.monotonic()
    subprocess.run(cmd, shell=True, check=True, stderr=subprocess.PIPE)
    return time.monotonic() - t0


def tables_of(port, db):
    return psql(port, db, "SELECT quote_ident(schemaname) || '.' || quote_ident(relname) FROM pg_stat_user_tables ORDER BY pg_total_relation_size(relid) DESC").split()


def measure(work, port, db):
    """Backs db up and restores it every way; returns the table's rows."""
    base = f"postgres://postgres@127.0.0.1:{port}"
    env = f"PGHOST=127.0.0.1 PGPORT={port} PGUSER=postgres"
    out = os.path.join(work, f"out-{db}")
    os.makedirs(out)
    if os.geteuid() == 0:
        shutil.chown(out, "postgres")
    table, check_sql = CHECKS[db]
    expected = psql(port, db, check_sql)
    tables = tables_of(port, db)
    rows = []

    gz, fd, store = (os.path.join(out, n) for n in ("dump.sql.gz", "dump.dir", "store"))
    t, _ = run(f"{env} {PGBIN}/pg_dump {db} | gzip -6 > {gz}", shell=True)
    rows.append(("backup", "pg_dump | gzip -6 (template)", t, size_of(gz), None))
    t, _ = run(f"{env} {PGBIN}/pg_dump -Fd -j {JOBS} -f {fd} {db}", shell=True)
    rows.append(("backup", f"pg_dump -Fd -j {JOBS}", t, size_of(fd), None))
    t, rss = run([BIN, "backup", "--database-url", f"{base}/{db}", "--store", f"file://{store}", "--source", db, "-j", str(JOBS), "--no-globals"])
    rows.append(("backup", f"firedrill backup -j {JOBS}", t, size_of(store), rss))
    floor = " & ".join(f"{env} {PGBIN}/psql -XAtq -c 'COPY {t} TO STDOUT' {db} | zstd -3 -q > /dev/null" for t in tables)
    t = timed_shell(f"{floor} & wait")
    rows.append(("backup", f"floor: {len(tables)} x COPY TO | zstd -3", t, None, None))

    def restored(name, target):
        got = psql(port, target, check_sql)
        assert got == expected, f"{name}: {got!r}, expected {expected!r}"
        psql(port, "postgres", f"DROP DATABASE {target}")

    psql(port, "postgres", "CREATE DATABASE r_pd")
    t, _ = run(f"{env} {PGBIN}/pg_restore -j {JOBS} -d r_pd {fd}", shell=True)
    rows.append(("restore", f"pg_restore -j {JOBS}", t, None, None))
    restored("pg_restore", "r_pd")
    t, rss = run([BIN, "restore", "--store", f"file://{store}", "--latest", "--source", db, "--target-url", f"{base}/r_fr", "-j", str(JOBS), "--force"])
    rows.append(("restore", f"firedrill restore -j {JOBS}", t, None, rss))
    restored("firedrill", "r_fr")

    # The floor: the data as plain COPY files the server reads itself.
    files = {t: os.path.join(out, f"{i}.copy") for i, t in enumerate(tables)}
    for t, f in files.items():
        psql(port, db, f"COPY {t} TO '{f}'")
    psql(port, "postgres", "CREATE DATABASE r_floor")
    subprocess.run(f"{env} {PGBIN}/pg_restore --section=pre-data -d r_floor {fd}", shell=True, check=True)
    load = " & ".join(f"{env} {PGBIN}/psql -XAtq -c \"COPY {t} FROM '{f}'\" r_floor" for t, f in files.items())
    t_load = timed_shell(f"{load} & wait")
    t_post = timed_shell(f"{env} {PGBIN}/pg_restore -j {JOBS} --section=post-data -d r_floor {fd}")
    rows.append(("restore", f"floor: {len(tables)} x COPY FROM, then post-data -j {JOBS}", t_load + t_post, None, None))
    restored("floor", "r_floor")

    # The same with the biggest table in JOBS parts, as firedrill loads it.
    big = tables[0]
    with open(files[big], "rb") as f:
        n = sum(1 for _ in f)
    parts = [os.path.join(out, f"big-{i}.copy") for i in range(JOBS)]
    with open(files[big], "rb") as f:
        for i, part in enumerate(parts):
            with open(part, "wb") as w:
                w.writelines(itertools.islice(f, n * (i + 1) // JOBS - n * i // JOBS))
    psql(port, "postgres", "CREATE DATABASE r_split")
    subprocess.run(f"{env} {PGBIN}/pg_restore --section=pre-data -d r_split {fd}", shell=True, check=True)
    pieces = [(big, p) for p in parts] + [(t, f) for t, f in files.items() if t != big]
    load = " & ".join(f"{env} {PGBIN}/psql -XAtq -c \"COPY {t} FROM '{f}'\" r_split" for t, f in pieces)
    t_load = timed_shell(f"{load} & wait")
    t_post = timed_shell(f"{env} {PGBIN}/pg_restore -j {JOBS} --section=post-data -d r_split {fd}")
    rows.append(("restore", f"floor: the same, biggest table in {JOBS} parts", t_load + t_post, None, None))
    restored("floor, split", "r_split")
    shutil.rmtree(out, ignore_errors=True)
    return rows


def defaults(work, port):
    """firedrill backup of app at several worker counts and zstd levels."""
    base = f"postgres://postgres@127.0.0.1:{port}"
    out = []
    for jobs, level in ((1, 3), (2, 1), (2, 3), (2, 6), (4, 3), (8, 3)):
        store = os.path.join(work, f"defaults-{jobs}-{level}")
        t, rss = run([BIN, "backup", "--database-url", f"{base}/app", "--store", f"file://{store}", "--source", "app",
                      "-j", str(jobs), "--compression-level", str(level), "--no-globals"])
        out.append((jobs, level, t, size_of(store), rss))
        shutil.rmtree(store, ignore_errors=True)
    return out


def table(title, rows):
    print(title)
    print()
    print("| step    | tool                                          | seconds | stored MiB | peak RSS MiB | firedrill faster by |")
    print("|---------|-----------------------------------------------|--------:|-----------:|-------------:|--------------------:|")
    for step, name, t, size, rss in rows:
        ours = next(r[2] for r in rows if r[0] == step and r[1].startswith("firedrill"))
        size_s = f"{size / 2**20:10.1f}" if size else " " * 10
        rss_s = f"{rss:12.0f}" if rss else " " * 12
        ratio = f"{t / ours:18.2f}x" if not name.startswith("firedrill") else " " * 19
        print(f"| {step:<7} | {name:<45} | {t:7.2f} | {size_s} | {rss_s} | {ratio} |")
    print()


def bench(work, port):
    t0 = time.monotonic()
    raw = pitr.fill(port, MB)
    fill_s = time.monotonic() - t0
    app = measure(work, port, "app")
    tuning = defaults(work, port)
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(port), PGUSER="postgres")
    psql(port, "postgres", "CREATE DATABASE bench")
    subprocess.run([f"{PGBIN}/pgbench", "-i", "-q", "-s", str(SCALE), "bench"], env=env, check=True, stderr=subprocess.DEVNULL)
    bench_raw = int(psql(port, "bench", "SELECT pg_database_size('bench')"))
    pgb = measure(work, port, "bench")
    return raw, fill_s, app, bench_raw, pgb, tuning


def small(work, port):
    raw = pitr.fill(port, max(1, MB // 4))
    return raw, [r for r in measure(work, port, "app") if r[1].startswith("firedrill")]


def main():
    raw, fill_s, app, bench_raw, pgb, tuning = pitr.cluster(bench)
    small_raw, small_rows = pitr.cluster(small)
    version = PGBIN.split("/")[-2].removeprefix("pg")
    table(f"logical backup and restore, service-shaped database of {raw / 2**20:.0f} MiB (filled in {fill_s:.0f} s), PostgreSQL {version}, {os.cpu_count()} cores, {JOBS} jobs", app)
    table(f"the same, pgbench -i -s {SCALE} ({bench_raw / 2**20:.0f} MiB)", pgb)
    print(f"| firedrill backup of the {raw / 2**20:.0f} MiB database | seconds | stored MiB | peak RSS MiB |")
    print("|---|--:|--:|--:|")
    for jobs, level, t, size, rss in tuning:
        print(f"| -j {jobs}, zstd level {level} | {t:.2f} | {size / 2**20:.1f} | {rss:.0f} |")
    print()
    print(f"| peak RSS MiB, firedrill | {small_raw / 2**20:.0f} MiB database | {raw / 2**20:.0f} MiB database |")
    print("|---|--:|--:|")
    for (step, name, _, _, rss_small) in small_rows:
        rss_big = next(r[4] for r in app if r[1] == name)
        print(f"| {name} | {rss_small:.0f} | {rss_big:.0f} |")
    print()
    print("floor rows: the server's own COPY with nothing else (no checksums, no store, no schema), one stream per table; "
          "'faster by' is the row's seconds over firedrill's. pg_dump rows run through a shell: no RSS.")


if __name__ == "__main__":
    main()
