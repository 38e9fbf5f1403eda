#!/usr/bin/env python3
"""Point-in-time recovery: firedrill's physical backups, WAL archive and
restores against the stock tools, on the same service-shaped database in the
same run.

A throwaway PostgreSQL cluster (the newest installed server binaries, random
local port) gets a database shaped like a service (`users`, `documents` with
1-2 KB bodies of varied words and a nested OCR jsonb, a `user_documents` join
table), about FIREDRILL_BENCH_MB in size. With `firedrill wal stream` running
from the start, the table compares:

1. the base backup: `firedrill backup --physical` vs `pg_basebackup -Ft -X fetch
   | zstd -3`, and the machine's floor (tar of the data directory | zstd -3);
2. restores: physical (`--immediate`, and `--latest` after a write load) vs
   logical (`firedrill restore --target-url`, `pg_restore -j 2`);
3. the WAL archive's lag while `pgbench -c 4 -T 60` writes;
4. the physical backup's peak RSS at FIREDRILL_BENCH_MB and a quarter of it.

    tests/bench/run pitr        (FIREDRILL_BENCH_MB, FIREDRILL_BENCH_LOAD_SECONDS)
"""
import glob, json, math, os, shutil, signal, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MB = int(os.environ.get("FIREDRILL_BENCH_MB", "800"))
LOAD_SECONDS = int(os.environ.get("FIREDRILL_BENCH_LOAD_SECONDS", "60"))
JOBS = 2
BIN = os.environ.get("FIREDRILL_BENCH_BIN", os.path.join(ROOT, "target/release/firedrill"))
# Debian's newest server, or another (FIREDRILL_BENCH_PGBIN=target/tools/pg17/bin).
PGBIN = os.path.abspath(os.environ.get("FIREDRILL_BENCH_PGBIN") or sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))[-1])
# firedrill's own pg_dump and friends: the same server's.
os.environ.setdefault("FIREDRILL_PG_BIN", PGBIN)
# Bytes one document costs with its share of users, join rows and indexes
# (measured: ~2.5 KB with the catalogs); the database lands within ~15% of FIREDRILL_BENCH_MB.
DOC_BYTES = 2450


def as_postgres(cmd):
    return ["runuser", "-u", "postgres", "--"] + cmd if os.geteuid() == 0 else cmd


def hwm(pid, field="VmHWM"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(cmd, shell=False, out=None):
    """Wall seconds and peak RSS (MiB) of one process (for a pipeline: of its shell),
    read from the kernel's high-water mark of the process's own memory. With out,
    its stdout goes to that file."""
    start = time.monotonic()
    sink = open(out, "wb") if out else subprocess.DEVNULL
    p = subprocess.Popen(cmd, shell=shell, stdout=sink, stderr=subprocess.PIPE)
    peak = 0
    while p.poll() is None:
        peak = max(peak, hwm(p.pid))
        time.sleep(0.005)
    took = time.monotonic() - start
    if out:
        sink.close()
    if p.returncode != 0:
        sys.exit(f"failed: {cmd}\n{p.stderr.read().decode()}")
    return took, peak / 1024


def size_of(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def lsn(s):
    hi, lo = s.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def pct(xs, p):
    """Nearest-rank percentile."""
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)] if xs else float("nan")


def archived_end(store):
    """The end of the newest WAL the archive holds (segment or .partial), from
    the records of the last few objects of the newest timeline."""
    tls = sorted(glob.glob(os.path.join(store, "main", "wal", "*", "")))
    if not tls:
        return 0
    end = 0
    for name in sorted(n for n in os.listdir(tls[-1]) if n.endswith(".json"))[-3:]:
        try:
            with open(os.path.join(tls[-1], name)) as f:
                end = max(end, lsn(json.load(f)["end"]))
        except (OSError, ValueError, KeyError):
            pass  # a .partial replaced while read
    return end


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cluster(body):
    """Runs body(work, port) against a throwaway cluster, removed afterwards."""
    work = tempfile.mkdtemp(prefix="firedrill-bench-")
    os.chmod(work, 0o755)
    if os.geteuid() == 0:
        shutil.chown(work, "postgres")
    port = free_port()
    data = os.path.join(work, "data")
    subprocess.run(as_postgres([f"{PGBIN}/initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync"]), check=True, stdout=subprocess.DEVNULL)
    opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {work} -c fsync=off -c synchronous_commit=off -c max_wal_size=8GB -c checkpoint_timeout=1h -c max_locks_per_transaction=1024"
    subprocess.run(as_postgres([f"{PGBIN}/pg_ctl", "-D", data, "-o", opts, "-l", os.path.join(work, "pg.log"), "-w", "start"]), check=True, stdout=subprocess.DEVNULL)
    try:
        return body(work, port)
    finally:
        subprocess.run(as_postgres([f"{PGBIN}/pg_ctl", "-D", data, "-m", "immediate", "stop"]), stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


def psql(port, db, sql, host="127.0.0.1"):
    env = dict(os.environ, PGHOST=host, PGPORT=str(port), PGUSER="postgres")
    return subprocess.run([f"{PGBIN}/psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql, db], env=env, capture_output=True, text=True, check=True).stdout.strip()


SCHEMA = """
CREATE TABLE users (
    id uuid PRIMARY KEY,
    email text NOT NULL UNIQUE,
    role text[] NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE documents (
    id bigserial PRIMARY KEY,
    user_id uuid NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    ocr jsonb NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE user_documents (
    user_id uuid NOT NULL,
    document_id bigint NOT NULL,
    permission text NOT NULL,
    granted_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, document_id)
);
"""

# An 8000-word vocabulary in fixed 12-byte slots of one bytea (word k: 2 to 11
# letters at 12k), so a word is an O(1) substring; picks are skewed towards
# the first words, as in text. Bodies then compress like prose (~3x), not 200x.
DOCS = """
WITH v AS (
    SELECT string_agg(convert_to(rpad(translate(md5(i::text), '0123456789', 'etaoinsrhl'), 12), 'UTF8'), ''::bytea ORDER BY i) AS w
    FROM generate_series(0, 7999) i
)
INSERT INTO documents (user_id, title, body, ocr, created_at)
SELECT md5('u' || (1 + floor(random() * {users}))::int)::uuid,
       convert_from((SELECT string_agg(substr(v.w, 12 * k + 1, 2 + k % 10), ' '::bytea)
                     FROM (SELECT floor(8000 * power(random(), 2.5))::int AS k FROM generate_series(1, 3 + g % 6)) t), 'UTF8'),
       convert_from((SELECT string_agg(substr(v.w, 12 * k + 1, 2 + k % 10), ' '::bytea)
                     FROM (SELECT floor(8000 * power(random(), 2.5))::int AS k FROM generate_series(1, 140 + g % 140)) t), 'UTF8'),
       jsonb_build_object(
           'engine', jsonb_build_object('name', 'tesseract', 'version', '5.3.' || (g % 5), 'lang', (ARRAY['eng', 'deu', 'fra', 'spa'])[1 + g % 4]),
           'pages', 1 + g % 7,
           'confidence', round(random()::numeric, 4),
           'blocks', jsonb_build_array(
               jsonb_build_object('page', 1, 'bbox', jsonb_build_array((random() * 600)::int, (random() * 800)::int, (random() * 600)::int, (random() * 800)::int), 'text', md5(g::text)),
               jsonb_build_object('page', 1 + g % 3, 'bbox', jsonb_build_array((random() * 600)::int, (random() * 800)::int, (random() * 600)::int, (random() * 800)::int), 'text', substr(md5((g * 7)::text), 1, 6 + g % 20))),
           'fields', jsonb_build_object('invoice_no', 'INV-' || lpad(g::text, 9, '0'), 'total', round((random() * 10000)::numeric, 2), 'currency', (ARRAY['EUR', 'USD', 'GBP'])[1 + g % 3], 'due', (date '2027-01-01' - (g % 400))::text)),
       now() - random() * interval '1095 days'
FROM v, generate_series({lo}, {hi}) g
"""

FINISH = """
INSERT INTO users
SELECT md5('u' || i)::uuid,
       'user' || i || '.' || substr(md5(i::text), 1, 6) || '@' || (ARRAY['example.com', 'mail.test', 'corp.example'])[1 + i % 3],
       CASE WHEN i % 10 = 0 THEN ARRAY['admin', 'editor', 'reader'] WHEN i % 10 < 3 THEN ARRAY['editor', 'reader'] ELSE ARRAY['reader'] END,
       now() - random() * interval '1500 days'
FROM generate_series(1, {users}) i;
INSERT INTO user_documents SELECT user_id, id, 'owner', created_at FROM documents;
INSERT INTO user_documents
SELECT md5('u' || (1 + (id * 7919) % {users}))::uuid, id, (ARRAY['read', 'comment', 'edit'])[1 + id % 3], created_at + interval '1 day'
FROM documents WHERE id % 2 = 0
ON CONFLICT DO NOTHING;
CREATE INDEX documents_created_at ON documents (created_at);
CREATE INDEX user_documents_document ON user_documents (document_id);
ALTER TABLE documents ADD FOREIGN KEY (user_id) REFERENCES users;
ALTER TABLE user_documents ADD FOREIGN KEY (user_id) REFERENCES users, ADD FOREIGN KEY (document_id) REFERENCES documents;
"""


def fill(port, mb):
    """Creates database app of about mb MiB; returns its size in bytes."""
    docs = max(1000, mb * 2**20 // DOC_BYTES)
    users = max(100, docs // 8)
    psql(port, "postgres", "CREATE DATABASE app")
    psql(port, "app", SCHEMA)
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(port), PGUSER="postgres")
    # Two sessions: the machine's two cores.
    half = docs // 2
    ps = [subprocess.Popen([f"{PGBIN}/psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", DOCS.format(users=users, lo=lo, hi=hi), "app"], env=env)
          for lo, hi in ((1, half), (half + 1, docs))]
    if any(p.wait() != 0 for p in ps):
        sys.exit("filling documents failed")
    psql(port, "app", FINISH.format(users=users))
    psql(port, "app", "VACUUM ANALYZE")
    psql(port, "postgres", "CHECKPOINT")
    return int(psql(port, "app", "SELECT pg_database_size('app')"))


def physical_backup(base, store):
    """firedrill backup --physical: (seconds, peak RSS MiB, summary)."""
    out = store + ".json"
    t, rss = run([BIN, "backup", "--physical", "--database-url", f"{base}/postgres", "--source", "main", "--store", f"file://{store}", "--json"], out=out)
    with open(out) as f:
        return t, rss, json.load(f)


def backup_bytes(store):
    """Bytes of the store without its WAL archive."""
    return sum(size_of(p) for p in glob.glob(os.path.join(store, "main", "*")) if os.path.basename(p) != "wal")


def restore_physical(work, store, name, target):
    dest = os.path.join(work, name)
    out = os.path.join(work, name + ".json")
    t, rss = run([BIN, "restore", "--latest", "--source", "main", "--store", f"file://{store}", "--data-dir", dest, "--json"] + target, out=out)
    with open(out) as f:
        return t, rss, json.load(f), dest


def query_restored(work, data, db, sql):
    """Starts a restored data directory on a private socket, runs sql, stops it."""
    port = free_port()
    log = os.path.join(work, os.path.basename(data) + ".log")
    opts = f"-p {port} -c listen_addresses='' -k {work}"
    subprocess.run(as_postgres([f"{PGBIN}/pg_ctl", "-D", data, "-o", opts, "-l", log, "-w", "start"]), check=True, stdout=subprocess.DEVNULL)
    try:
        return subprocess.run(as_postgres([f"{PGBIN}/psql", "-XAtq", "-h", work, "-p", str(port), "-U", "postgres", "-c", sql, db]), capture_output=True, text=True, check=True).stdout.strip()
    finally:
        subprocess.run(as_postgres([f"{PGBIN}/pg_ctl", "-D", data, "-m", "fast", "stop"]), stdout=subprocess.DEVNULL)
        shutil.rmtree(data, ignore_errors=True)


def small(work, port):
    """The physical backup's peak RSS at a quarter of the size."""
    raw = fill(port, max(1, MB // 4))
    store = os.path.join(work, "store")
    t, rss, _ = physical_backup(f"postgres://postgres@127.0.0.1:{port}", store)
    return raw, t, rss, backup_bytes(store)


def bench(work, port):
    base = f"postgres://postgres@127.0.0.1:{port}"
    env = f"PGHOST=127.0.0.1 PGPORT={port} PGUSER=postgres"
    t0 = time.monotonic()
    raw = fill(port, MB)
    fill_s = time.monotonic() - t0
    counts = psql(port, "app", "SELECT (SELECT count(*) FROM users) || ' users, ' || (SELECT count(*) FROM documents) || ' documents, ' || (SELECT count(*) FROM user_documents) || ' user_documents'")
    docs = int(counts.split(", ")[1].split()[0])
    out = os.path.join(work, "out")
    os.makedirs(out)
    if os.geteuid() == 0:
        shutil.chown(out, "postgres")
    store = os.path.join(out, "store")

    # The archive runs from before the base backup, as in production: the
    # restore to --latest needs WAL from the backup's start on.
    streamer = subprocess.Popen([BIN, "wal", "stream", "--database-url", f"{base}/postgres", "--source", "main", "--store", f"file://{store}", "--heartbeat", "1s", "--partial-every", "1s"],
                                stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "streamer.log"), "wb"))
    for _ in range(100):
        if psql(port, "postgres", "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'firedrill' AND state = 'streaming'") == "1":
            break
        if streamer.poll() is not None:
            sys.exit(f"firedrill wal stream exited {streamer.returncode}: {open(os.path.join(work, 'streamer.log')).read()}")
        time.sleep(0.1)
    else:
        sys.exit("firedrill wal stream did not start streaming within 10 s")

    # 1. Base backup.
    bb = []
    t, rss, summary = physical_backup(base, store)
    bb.append(("firedrill backup --physical", t, backup_bytes(store), rss))
    # -X fetch: the WAL of the backup's span inside the one tar, as firedrill's
    # BASE_BACKUP ... WAL does (-X stream cannot write to stdout); the server
    # injects backup_manifest into that tar, as firedrill stores it too.
    pgb = os.path.join(out, "base.tar.zst")
    t, rss = run(f"{env} {PGBIN}/pg_basebackup -D - -Ft -X fetch -c fast | zstd -3 -q > {pgb}", shell=True)
    bb.insert(0, ("pg_basebackup -Ft -X fetch \\| zstd -3", t, size_of(pgb), rss))
    os.remove(pgb)
    # The floor: the same files read from disk (page cache) and compressed
    # by one zstd -3, no server, no network; pg_wal left out as the backups
    # carry only the WAL of their own span.
    sized = os.path.join(out, "floor.bytes")
    floor_cmd = f"tar -cf - -C {work} --exclude=data/pg_wal data 2>/dev/null | zstd -3 -q | wc -c > {sized}"
    t, rss = run(as_postgres(["sh", "-c", floor_cmd]) if os.geteuid() == 0 else floor_cmd, shell=os.geteuid() != 0)
    floor = ("floor: tar data \\| zstd -3", t, int(open(sized).read()), rss)

    # 2. Restores: logical backups of the same database first.
    logical = os.path.join(out, "logical")
    fd = os.path.join(out, "dump.dir")
    lb = []
    t, rss = run([BIN, "backup", "--database-url", f"{base}/app", "--store", f"file://{logical}", "--source", "app", "-j", str(JOBS), "--no-globals"])
    lb.append((f"firedrill backup -j {JOBS}", t, size_of(logical), rss))
    t, rss = run(f"{env} {PGBIN}/pg_dump -Fd -j {JOBS} -f {fd} app", shell=True)
    lb.append((f"pg_dump -Fd -j {JOBS}", t, size_of(fd), rss))

    phys = []
    t, rss, s_imm, dest = restore_physical(out, store, "r_immediate", ["--immediate"])
    phys.append(("firedrill restore --immediate (physical)", t, s_imm["unpack_seconds"], s_imm["replay_seconds"], rss))
    n = int(query_restored(out, dest, "app", "SELECT count(*) FROM documents"))
    assert n == docs, f"physical --immediate: {n} documents restored, {docs} expected"

    # 3. WAL archive lag under load.
    subprocess.run(f"{env} {PGBIN}/createdb load && {env} {PGBIN}/pgbench -i -s 10 -q load", shell=True, check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    lsn0 = lsn(psql(port, "postgres", "SELECT pg_current_wal_lsn()"))
    # pgbench -i writes its tables' worth of WAL at once: let the archive
    # take it in before the load, so the lag measured is the load's.
    t_init = time.monotonic()
    while time.monotonic() - t_init < 300 and archived_end(store) < lsn0:
        time.sleep(0.1)
    init_catchup = time.monotonic() - t_init
    lsn0 = lsn(psql(port, "postgres", "SELECT pg_current_wal_lsn()"))
    bench_out = os.path.join(out, "pgbench.out")
    load = subprocess.Popen(f"{env} {PGBIN}/pgbench -c 4 -j 2 -T {LOAD_SECONDS} load", shell=True, stdout=open(bench_out, "wb"), stderr=subprocess.DEVNULL)
    flush, write, behind, rss_during = [], [], [], 0
    # The archive's real lag (its RPO): the server's position vs the end of
    # the newest object stored (a .partial every second), in bytes, and in
    # seconds since the server was at that position (from these samples).
    arch_bytes, arch_s, seen = [], [], []
    sample = ("SELECT pg_current_wal_lsn() - '0/0', coalesce(extract(epoch FROM flush_lag), 0), coalesce(extract(epoch FROM write_lag), 0), pg_current_wal_lsn() - flush_lsn "
              "FROM pg_stat_replication WHERE application_name = 'firedrill' AND state = 'streaming'")
    while load.poll() is None:
        tick = time.monotonic()
        row = psql(port, "postgres", sample)
        end = archived_end(store)
        if row:
            cur, f_, w_, b_ = row.split("|")
            cur = int(float(cur))
            seen.append((tick, cur))
            flush.append(float(f_))
            write.append(float(w_))
            behind.append(int(float(b_)))
            arch_bytes.append(max(0, cur - end))
            since = next((t for t, l in seen if l > end), tick)
            arch_s.append(tick - since)
        rss_during = max(rss_during, hwm(streamer.pid, "VmRSS"))
        if streamer.poll() is not None:
            sys.exit(f"firedrill wal stream exited {streamer.returncode} under load: {open(os.path.join(work, 'streamer.log')).read()[-2000:]}")
        time.sleep(max(0, 0.5 - (time.monotonic() - tick)))
    if load.returncode != 0:
        sys.exit("pgbench failed")
    lsn1 = lsn(psql(port, "postgres", "SELECT pg_current_wal_lsn()"))
    tps = next((f'{float(l.split("=")[1].split()[0]):.0f}' for l in open(bench_out) if l.startswith("tps")), "?")
    history = psql(port, "load", "SELECT count(*) FROM pgbench_history")
    # How long the archive takes to hold everything once the writes stop.
    t_stop = time.monotonic()
    while time.monotonic() - t_stop < 60 and archived_end(store) < lsn1:
        time.sleep(0.1)
    drain = time.monotonic() - t_stop
    drained = archived_end(store) >= lsn1
    init_wal = lsn0 - lsn(s_imm["reached_lsn"])
    streamer_hwm = hwm(streamer.pid) / 1024
    streamer.send_signal(signal.SIGTERM)
    streamer.wait(timeout=60)
    if streamer.returncode != 0:
        sys.exit(f"firedrill wal stream exited {streamer.returncode} on SIGTERM")
    wal_stored = size_of(os.path.join(store, "main", "wal"))
    verify = subprocess.run([BIN, "wal", "verify", "--source", "main", "--store", f"file://{store}"], capture_output=True, text=True)

    t, rss, s_lat, dest = restore_physical(out, store, "r_latest", [])
    replayed = lsn(s_lat["reached_lsn"]) - lsn(s_imm["reached_lsn"])
    phys.append((f"firedrill restore --latest (+{replayed / 2**20:.0f} MiB WAL)", t, s_lat["unpack_seconds"], s_lat["replay_seconds"], rss))
    got = query_restored(out, dest, "load", "SELECT count(*) FROM pgbench_history")

    # The logical restores last: into this cluster, their WAL would
    # otherwise be part of what --latest replays.
    rs = []

    def restore_logical(name, db, cmd, shell=True):
        psql(port, "postgres", f"CREATE DATABASE {db}")
        t, rss = run(cmd, shell=shell)
        n = int(psql(port, db, "SELECT count(*) FROM documents"))
        assert n == docs, f"{name}: {n} documents restored, {docs} expected"
        rs.append((name, t, None, None, rss))
        psql(port, "postgres", f"DROP DATABASE {db}")

    restore_logical(f"pg_restore -j {JOBS} (pg_dump -Fd)", "r_pd", f"{env} {PGBIN}/pg_restore -j {JOBS} -d r_pd {fd}")
    restore_logical(f"firedrill restore -j {JOBS} (logical)", "r_fr", [BIN, "restore", "--store", f"file://{logical}", "--latest", "--source", "app", "--target-url", f"{base}/r_fr", "-j", str(JOBS), "--force"], shell=False)
    shutil.rmtree(fd)
    shutil.rmtree(logical)
    rs += phys

    # 4. The same backup at a quarter of the size, on a cluster of its own.
    small_raw, small_t, small_rss, small_size = cluster(small)

    print(f"point-in-time recovery, {raw / 2**20:.0f} MiB database ({counts}; filled in {fill_s:.0f} s), PostgreSQL {PGBIN.split('/')[-2]}, {os.cpu_count()} cores")
    print()
    print("| base backup                              | seconds | stored MiB | peak RSS MiB | time vs pg_basebackup | size vs pg_basebackup |")
    print("|------------------------------------------|--------:|-----------:|-------------:|----------------------:|----------------------:|")
    ref_t, ref_s = bb[0][1], bb[0][2]
    for name, t, size, rss in bb + [floor]:
        print(f"| {name:<40} | {t:7.2f} | {size / 2**20:10.1f} | {rss:12.0f} | {ref_t / t:20.2f}x | {size / ref_s:20.2f}x |")
    print()
    print(f"floor: what this machine needs to read the same files from the page cache and compress them with one zstd -3, no server or network; "
          f"firedrill takes {bb[1][1] / floor[1]:.2f}x that ({raw / 2**20 / bb[1][1]:.0f} MiB/s of database). "
          f"peak RSS of the pipelines is their shell's.")
    print()
    print("| restore                                      | seconds | unpack s | replay s | peak RSS MiB | time vs pg_restore |")
    print("|----------------------------------------------|--------:|---------:|---------:|-------------:|-------------------:|")
    ref = rs[0][1]
    for name, t, unpack, replay, rss in rs:
        u = f"{unpack:8.2f}" if unpack is not None else f"{'':>8}"
        r = f"{replay:8.2f}" if replay is not None else f"{'':>8}"
        print(f"| {name:<44} | {t:7.2f} | {u} | {r} | {rss:12.0f} | {ref / t:17.2f}x |")
    print()
    print(f"physical/logical restore time: {rs[2][1] / rs[1][1]:.2f} (firedrill --immediate vs firedrill logical), {rs[2][1] / rs[0][1]:.2f} (vs pg_restore -j {JOBS}). "
          f"logical backups it compares with: " + ", ".join(f"{n} {t:.2f} s / {s / 2**20:.0f} MiB" for n, t, s, _ in lb) + ".")
    print(f"restored to --latest: pgbench_history has {got} rows, the source {history} ({'all there' if got == history else 'MISSING ROWS'}); "
          f"the physical restores include the whole cluster (here also pgbench's {LOAD_SECONDS} s of writes for --latest).")
    print()
    print(f"| WAL archive under pgbench -c 4 -T {LOAD_SECONDS} ({tps} tps, {(lsn1 - lsn0) / 2**20:.0f} MiB WAL, {len(flush)} samples) | p50 | p99 | max |")
    print("|---|---:|---:|---:|")
    print(f"| flush_lag s (a segment stored and confirmed) | {pct(flush, 50):.2f} | {pct(flush, 99):.2f} | {max(flush, default=float('nan')):.2f} |")
    slow = [f"{i * 0.5:.0f}" for i, x in enumerate(flush) if x > 2]
    print(f"| write_lag s | {pct(write, 50):.2f} | {pct(write, 99):.2f} | {max(write, default=float('nan')):.2f} |")
    print(f"| MiB behind (pg_current_wal_lsn() - flush_lsn) | {pct(behind, 50) / 2**20:.1f} | {pct(behind, 99) / 2**20:.1f} | {max(behind, default=0) / 2**20:.1f} |")
    print(f"| archive lag MiB (server position - newest object stored) | {pct(arch_bytes, 50) / 2**20:.2f} | {pct(arch_bytes, 99) / 2**20:.2f} | {max(arch_bytes, default=0) / 2**20:.2f} |")
    print(f"| archive lag s (since the server was there; 0.5 s resolution) | {pct(arch_s, 50):.1f} | {pct(arch_s, 99):.1f} | {max(arch_s, default=float('nan')):.1f} |")
    print()
    print(f"flush_lag above 2 s in {len(slow)} of {len(flush)} samples" + (f" (at about {', '.join(slow[:10])} s into the load)" if slow else "") + "; flush is confirmed per complete "
          "16 MiB segment, so pg_stat_replication's flush_lag is not the archive's lag: the .partial stored every second is (the archive lag rows).")
    print()
    print(f"streamer: took in the {init_wal / 2**20:.0f} MiB of WAL written before the load (pgbench -i) {init_catchup:.1f} s after it ended; "
          f"peak RSS {streamer_hwm:.0f} MiB over the whole run (VmHWM), {rss_during / 1024:.0f} MiB at most during the load (VmRSS); "
          + (f"archive held everything {drain:.1f} s after the load stopped; " if drained else f"ARCHIVE STILL BEHIND {drain:.0f} s after the load stopped; ") + f"{wal_stored / 2**20:.0f} MiB of WAL stored; "
          + f"wal verify: exit {verify.returncode}, {(verify.stdout.strip().splitlines() or ['(no output)'])[-1]}")
    print()
    print("| physical base backup at | database MiB | seconds | MiB/s | stored MiB | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| FIREDRILL_BENCH_MB / 4 | {small_raw / 2**20:.0f} | {small_t:.2f} | {small_raw / 2**20 / small_t:.0f} | {small_size / 2**20:.1f} | {small_rss:.0f} |")
    print(f"| FIREDRILL_BENCH_MB     | {raw / 2**20:.0f} | {bb[1][1]:.2f} | {raw / 2**20 / bb[1][1]:.0f} | {bb[1][2] / 2**20:.1f} | {bb[1][3]:.0f} |")
    print(f"peak RSS ratio {bb[1][3] / small_rss:.2f} for {raw / small_raw:.1f}x the data.")


if __name__ == "__main__":
    cluster(bench)
