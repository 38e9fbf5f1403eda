#!/usr/bin/env python3
"""Incremental physical backups (PostgreSQL 17+): what an incremental backup
costs against a full one after 1 % of a database changed, firedrill against
pg_basebackup, in one run.

A throwaway cluster (PostgreSQL 17, or FIREDRILL_BENCH_PG=18; the binaries of
target/tools, random local port, summarize_wal = on from the start) gets
pitr.py's service-shaped database (users with uuid keys, documents with text
bodies and a jsonb, a join table, indexes) of about FIREDRILL_BENCH_MB. Then:

1. a full `firedrill backup --physical`, and right after it a full
   `pg_basebackup -Ft -X fetch -c fast --compress=client-zstd:3`;
2. 1 % of the documents updated at random ids across the table, 0.5 % new
   documents (and their join rows), a few deleted; CHECKPOINT;
3. `firedrill backup --physical --incremental` (its parent must be the full
   backup of step 1), and right after it `pg_basebackup --incremental=` the
   stock full's backup_manifest (same flags);
4. a second full `firedrill backup --physical`: what a full costs now;
5. `firedrill restore --immediate` of the incremental (a chain of two,
   pg_combinebackup) and of the full of step 4, each checked against the
   source's contents; as the anchor, the stock chain unpacked by tar and
   combined by pg_combinebackup by hand.

    tests/bench/run incremental        (FIREDRILL_BENCH_MB, FIREDRILL_BENCH_PG)
"""
import json, os, shutil, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ left in tests/bench
# pitr.py only defines constants and functions at import; cluster(), psql()
# and query_restored() read pitr.PGBIN, which is pointed at the server below.
import pitr
from pitr import size_of, psql

MB = int(os.environ.get("FIREDRILL_BENCH_MB", "1000"))
PG = int(os.environ.get("FIREDRILL_BENCH_PG", "17"))
BIN = pitr.BIN
PGBIN = os.path.join(pitr.ROOT, "target", "tools", f"pg{PG}", "bin")
# The stock tool's output: compressed on the client at firedrill's default
# level, so stored sizes and the compression CPU compare.
COMPRESS = "--compress=client-zstd:3"
FINGERPRINT = ("SELECT count(*) || ' documents, ' || sum(length(body)) || ' body bytes, max id ' || max(id) || ', ' "
               "|| count(*) FILTER (WHERE ocr ? 'edited') || ' edited' FROM documents")

# 1 % of the documents rewritten where they lie (random ids: the pages are
# scattered over the table and its indexes), 0.5 % new ones with their owner
# rows, a few deleted with their join rows. One session, temp tables.
CHANGE = """
CREATE TEMP TABLE picked AS SELECT DISTINCT (1 + floor(random() * {docs}))::bigint AS id FROM generate_series(1, {updates});
CREATE TEMP TABLE doomed AS SELECT DISTINCT (1 + floor(random() * {docs}))::bigint AS id FROM generate_series(1, {deletes})
    EXCEPT SELECT id FROM picked;
UPDATE documents d
   SET title = d.title || ' (edited)',
       body = left(d.body, length(d.body) / 2) || ' ' || md5(random()::text) || ' ' || substr(d.body, length(d.body) / 2 + 1),
       ocr = jsonb_set(d.ocr, '{{fields,total}}', to_jsonb(round((random() * 10000)::numeric, 2))) || jsonb_build_object('edited', now()::text)
  FROM picked p WHERE d.id = p.id;
DELETE FROM user_documents WHERE document_id IN (SELECT id FROM doomed);
DELETE FROM documents WHERE id IN (SELECT id FROM doomed);
{insert};
INSERT INTO user_documents SELECT user_id, id, 'owner', created_at FROM documents WHERE id > {docs};
"""


def run(cmd, shell=False, out=None):
    """pitr.run's measurement (wall seconds, peak RSS MiB of the process, for a
    pipeline of its shell), but the command in a process group of its own that
    an interrupted run (^C, SIGTERM) ends before the cluster's cleanup removes
    the files it writes, and its stderr in a file (a chatty one never blocks)."""
    start = time.monotonic()
    sink = open(out, "wb") if out else subprocess.DEVNULL
    err = tempfile.TemporaryFile()
    p = subprocess.Popen(cmd, shell=shell, stdout=sink, stderr=err, start_new_session=True)
    peak = 0
    try:
        while p.poll() is None:
            peak = max(peak, pitr.hwm(p.pid))
            time.sleep(0.005)
    except BaseException:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        except ProcessLookupError:
            pass
        raise
    took = time.monotonic() - start
    if out:
        sink.close()
    if p.returncode != 0:
        err.seek(0)
        sys.exit(f"failed: {cmd}\n{err.read().decode(errors='replace')[-4000:]}")
    return took, peak / 1024


def summarized(port, timeout=600):
    """Waits until the WAL summarizer has summarized up to the last
    checkpoint's redo (as it would be in production, where it runs all the
    time), so no backup timed here waits for it; returns the seconds waited."""
    redo = psql(port, "postgres", "SELECT redo_lsn FROM pg_control_checkpoint()")
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if psql(port, "postgres", f"SELECT summarized_lsn >= '{redo}'::pg_lsn FROM pg_get_wal_summarizer_state()") == "t":
            return time.monotonic() - t0
        time.sleep(0.2)
    sys.exit(f"the WAL summarizer did not reach {redo} within {timeout} s: {psql(port, 'postgres', 'SELECT * FROM pg_get_wal_summarizer_state()')}")


def firedrill_backup(base, store, name, extra):
    """firedrill backup --physical [extra]: (seconds, peak RSS MiB, summary)."""
    out = f"{store}.{name}.json"
    t, rss = run([BIN, "backup", "--physical", *extra, "--json", "--database-url", f"{base}/postgres", "--source", "main", "--store", f"file://{store}"], out=out)
    with open(out) as f:
        return t, rss, json.load(f)


def stock_backup(base, dest, extra):
    """pg_basebackup -Ft into dest: (seconds, peak RSS MiB, stored bytes, tar bytes)."""
    t, rss = run([f"{PGBIN}/pg_basebackup", "-d", base, "-D", dest, "-Ft", "-X", "fetch", "-c", "fast", COMPRESS, *extra])
    tars = sorted(os.path.join(dest, n) for n in os.listdir(dest) if n.endswith(".tar.zst"))
    raw = sum(int(subprocess.run(f"zstd -dcq {p} | wc -c", shell=True, capture_output=True, text=True, check=True).stdout) for p in tars)
    return t, rss, size_of(dest), raw


def firedrill_restore(out, store, backup_id, name):
    dest = os.path.join(out, name)
    sink = os.path.join(out, name + ".json")
    t, rss = run([BIN, "restore", backup_id, "--store", f"file://{store}", "--data-dir", dest, "--immediate", "--json"], out=sink)
    with open(sink) as f:
        return t, rss, json.load(f), dest


def bench(work, port):
    base = f"postgres://postgres@127.0.0.1:{port}"
    # On before the data goes in, as on a server taking incremental backups.
    psql(port, "postgres", "ALTER SYSTEM SET summarize_wal = on")
    psql(port, "postgres", "SELECT pg_reload_conf()")
    t0 = time.monotonic()
    raw = pitr.fill(port, MB)
    fill_s = time.monotonic() - t0
    counts = psql(port, "app", "SELECT (SELECT count(*) FROM users) || ' users, ' || (SELECT count(*) FROM documents) || ' documents, ' || (SELECT count(*) FROM user_documents) || ' user_documents'")
    docs = int(psql(port, "app", "SELECT max(id) FROM documents"))
    users = int(psql(port, "app", "SELECT count(*) FROM users"))
    cluster_bytes = int(psql(port, "postgres", "SELECT sum(pg_database_size(oid)) FROM pg_database"))
    out = os.path.join(work, "out")
    os.makedirs(out)
    if os.geteuid() == 0:
        shutil.chown(out, "postgres")
    store = os.path.join(out, "store")
    waited = summarized(port)

    # 1. The full backups, the stock one right after firedrill's.
    b = {}
    t, rss, full = firedrill_backup(base, store, "full", [])
    if full.get("parent"):
        sys.exit(f"firedrill backup --physical without --incremental built on {full['parent']}: {full}")
    b["fd_full"] = (t, full["bytes"], full["raw_bytes"], rss)
    stock_full = os.path.join(out, "pgb_full")
    t, rss, stored, tar = stock_backup(base, stock_full, [])
    b["pgb_full"] = (t, stored, tar, rss)

    # 2. The change.
    updates, inserts, deletes = max(10, docs // 100), max(5, docs // 200), max(5, docs // 2000)
    lsn0 = pitr.lsn(psql(port, "postgres", "SELECT pg_current_wal_lsn()"))
    t0 = time.monotonic()
    psql(port, "app", CHANGE.format(docs=docs, updates=updates, deletes=deletes,
                                    insert=pitr.DOCS.format(users=users, lo=docs + 1, hi=docs + inserts).strip()))
    psql(port, "postgres", "CHECKPOINT")
    change_s = time.monotonic() - t0
    change_wal = pitr.lsn(psql(port, "postgres", "SELECT pg_current_wal_lsn()")) - lsn0
    edited = int(psql(port, "app", "SELECT count(*) FROM documents WHERE ocr ? 'edited'"))
    added = int(psql(port, "app", f"SELECT count(*) FROM documents WHERE id > {docs}"))
    removed = docs - int(psql(port, "app", f"SELECT count(*) FROM documents WHERE id <= {docs}"))
    expect = psql(port, "app", FINGERPRINT)
    changed_bytes = int(psql(port, "postgres", "SELECT sum(pg_database_size(oid)) FROM pg_database"))
    waited = max(waited, summarized(port))

    # 3. The incrementals, the stock one right after firedrill's (its parent
    # is the stock full of step 1).
    t, rss, incr = firedrill_backup(base, store, "incremental", ["--incremental"])
    if incr.get("full_because") or incr.get("parent") != full["id"]:
        sys.exit(f"firedrill backup --incremental did not build on the full backup {full['id']}: "
                 f"parent {incr.get('parent')!r}, full_because {incr.get('full_because')!r}")
    b["fd_incr"] = (t, incr["bytes"], incr["raw_bytes"], rss)
    stock_incr = os.path.join(out, "pgb_incr")
    t, rss, stored, tar = stock_backup(base, stock_incr, [f"--incremental={stock_full}/backup_manifest"])
    b["pgb_incr"] = (t, stored, tar, rss)

    # 4. What a full backup of the changed database costs.
    t, rss, full2 = firedrill_backup(base, store, "full2", [])
    if full2.get("parent"):
        sys.exit(f"the second full backup built on {full2['parent']}: {full2}")
    b["fd_full2"] = (t, full2["bytes"], full2["raw_bytes"], rss)

    # 5. Restores, each checked against the source's contents.
    r = {}
    t, rss, s, dest = firedrill_restore(out, store, incr["id"], "r_incr")
    chain = [m["id"] for m in s.get("chain", [])]
    if chain != [full["id"], incr["id"]]:
        sys.exit(f"the restore of {incr['id']} combined the chain {chain}, not [{full['id']}, {incr['id']}]")
    got = pitr.query_restored(out, dest, "app", FINGERPRINT)
    if got != expect:
        sys.exit(f"restored incremental: {got}; the source: {expect}")
    r["fd_incr"] = (t, s["unpack_seconds"], s["replay_seconds"], rss)
    t, rss, s, dest = firedrill_restore(out, store, full2["id"], "r_full")
    got = pitr.query_restored(out, dest, "app", FINGERPRINT)
    if got != expect:
        sys.exit(f"restored full: {got}; the source: {expect}")
    r["fd_full2"] = (t, s["unpack_seconds"], s["replay_seconds"], rss)

    # The stock anchor: each member's tars unpacked next to its
    # backup_manifest, then pg_combinebackup as firedrill runs it (--link on
    # 18, --copy-file-range on 17); no pg_verifybackup, no recovery.
    mode = "--link" if PG >= 18 else "--copy-file-range"
    members = []
    untar_cmd = []
    for src in (stock_full, stock_incr):
        d = src + ".plain"
        members.append(d)
        untar_cmd.append(f"mkdir -m 700 {d} && zstd -dcq {src}/base.tar.zst | tar -xf - -C {d} && cp {src}/backup_manifest {d}/")
    untar_s, _ = run(" && ".join(untar_cmd), shell=True)
    combined = os.path.join(out, "r_stock")
    combine_s, combine_rss = run([f"{PGBIN}/pg_combinebackup", "--no-sync", mode, "-o", combined, *members])
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "postgres:postgres", combined], check=True)
    got = pitr.query_restored(out, combined, "app", FINGERPRINT)
    if got != expect:
        sys.exit(f"stock chain combined: {got}; the source: {expect}")
    r["pgb_incr"] = (untar_s + combine_s, untar_s + combine_s, None, combine_rss)

    build = "debug build" if "/debug/" in BIN else "release build"
    version = psql(port, "postgres", "SHOW server_version")
    print(f"incremental physical backups, {raw / 2**20:.0f} MiB database app ({counts}; cluster {cluster_bytes / 2**20:.0f} MiB; filled in {fill_s:.0f} s), "
          f"PostgreSQL {version}, summarize_wal = on, {os.cpu_count()} cores, firedrill {build}")
    print(f"change: {edited} documents updated at random ids ({edited / docs:.2%}), {added} inserted ({added / docs:.2%}) with their owner rows, "
          f"{removed} deleted with their join rows, CHECKPOINT: {change_s:.1f} s, {change_wal / 2**20:.0f} MiB of WAL; cluster {changed_bytes / 2**20:.0f} MiB after. "
          f"The WAL summarizer was let catch up before each step (at most {waited:.1f} s).")
    print()
    rows = [
        ("firedrill backup --physical (full, before the change)", b["fd_full"]),
        ("pg_basebackup -Ft -X fetch -c fast, zstd:3 (full, before)", b["pgb_full"]),
        ("firedrill backup --physical --incremental", b["fd_incr"]),
        ("pg_basebackup --incremental=<its full's manifest> (same)", b["pgb_incr"]),
        ("firedrill backup --physical (full, after the change)", b["fd_full2"]),
    ]
    print("| backup                                                           | seconds | stored MiB | raw MiB | peak RSS MiB |")
    print("|------------------------------------------------------------------|--------:|-----------:|--------:|-------------:|")
    for name, (t, stored, tar, rss) in rows:
        print(f"| {name:<64} | {t:7.2f} | {stored / 2**20:10.1f} | {tar / 2**20:7.1f} | {rss:12.0f} |")
    print()
    print(f"pg_basebackup: -D dir -Ft -X fetch -c fast {COMPRESS}. "
          "stored: bytes in the store (firedrill: every object of the backup; pg_basebackup: its directory, base.tar.zst and backup_manifest); "
          "raw: the tar streams before compression (the WAL of the backup's span included in both).")
    print()
    print("| restore (into a fresh data directory)                            | seconds | unpack s | replay s | peak RSS MiB |")
    print("|------------------------------------------------------------------|--------:|---------:|---------:|-------------:|")
    for name, (t, unpack, replay, rss) in [
        ("firedrill restore --immediate of the incremental (chain of 2)", r["fd_incr"]),
        ("firedrill restore --immediate of the full (after the change)", r["fd_full2"]),
        (f"stock chain: tar -x (zstd), pg_combinebackup {mode}", r["pgb_incr"]),
    ]:
        rp = f"{replay:8.2f}" if replay is not None else f"{'':>8}"
        print(f"| {name:<64} | {t:7.2f} | {unpack:8.2f} | {rp} | {rss:12.0f} |")
    print()
    print("firedrill restore: unpack s covers unpacking, pg_verifybackup of each member and (incremental) pg_combinebackup; replay s the recovery to the "
          "backup's end; peak RSS is firedrill's own (not pg_combinebackup's or the recovering server's). The stock chain: "
          f"tar {untar_s:.2f} s + pg_combinebackup {combine_s:.2f} s, peak RSS pg_combinebackup's; no verification, no recovery.")
    print()

    def ratio(a, c):
        return f"{a / c:.3f}" if c else "n/a"

    fi, ff, ff1, pi, pf = b["fd_incr"], b["fd_full2"], b["fd_full"], b["pgb_incr"], b["pgb_full"]
    print("| ratio                                                            | time  | stored | raw   | peak RSS |")
    print("|------------------------------------------------------------------|------:|-------:|------:|---------:|")
    for name, x, y in [
        ("firedrill incremental / firedrill full (after the change)", fi, ff),
        ("firedrill incremental / firedrill full (before the change)", fi, ff1),
        ("pg_basebackup incremental / pg_basebackup full", pi, pf),
        ("firedrill full / pg_basebackup full", ff1, pf),
        ("firedrill incremental / pg_basebackup incremental", fi, pi),
    ]:
        print(f"| {name:<64} | {ratio(x[0], y[0]):>5} | {ratio(x[1], y[1]):>6} | {ratio(x[2], y[2]):>5} | {ratio(x[3], y[3]):>8} |")
    ri, rf, rp = r["fd_incr"], r["fd_full2"], r["pgb_incr"]
    print(f"| {'restore: firedrill incremental chain / firedrill full':<64} | {ratio(ri[0], rf[0]):>5} |        |       | {ratio(ri[3], rf[3]):>8} |")
    print(f"| {'restore unpack: firedrill chain / stock chain (tar + combine)':<64} | {ratio(ri[1], rp[1]):>5} |        |       |          |")


def main():
    if PG < 17:
        sys.exit(f"FIREDRILL_BENCH_PG={PG}: incremental backups need PostgreSQL 17 or newer")
    if not os.path.isfile(os.path.join(PGBIN, "pg_combinebackup")):
        sys.exit(f"{PGBIN}/pg_combinebackup is missing: run scripts/setup")
    if not os.access(BIN, os.X_OK):
        sys.exit(f"{BIN} is missing: cargo build --release -p firedrill (or set FIREDRILL_BENCH_BIN)")
    pitr.PGBIN = PGBIN
    # firedrill's restore finds the server, pg_verifybackup and pg_combinebackup of the backup's major here.
    os.environ["FIREDRILL_PG_BIN"] = PGBIN + (":" + os.environ["FIREDRILL_PG_BIN"] if os.environ.get("FIREDRILL_PG_BIN") else "")
    # A kill (not only ^C) still stops the cluster and removes the temp dirs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pitr.cluster(bench)


if __name__ == "__main__":
    main()
