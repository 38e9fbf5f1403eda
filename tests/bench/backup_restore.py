#!/usr/bin/env python3
"""Backup and restore: firedrill against the tools operators use today, on the
same database in the same run.

A throwaway PostgreSQL cluster (from the installed server binaries, on a
random local port) is filled by `pgbench -i -s SCALE`; then each tool backs it
up and restores it into a fresh database, and the table prints seconds, size
and the ratio to the template's `pg_dump | gzip` / `gunzip | psql`.

    tests/bench/run backup          (FIREDRILL_BENCH_SCALE, FIREDRILL_BENCH_JOBS)
"""
import glob, os, shutil, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCALE = int(os.environ.get("FIREDRILL_BENCH_SCALE", "30"))
JOBS = int(os.environ.get("FIREDRILL_BENCH_JOBS", "4"))
NOISE_MIB = int(os.environ.get("FIREDRILL_BENCH_NOISE_MIB", "64"))
BIN = os.environ.get("FIREDRILL_BENCH_BIN", os.path.join(ROOT, "target/release/firedrill"))
PGBIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))[-1]


def as_postgres(cmd):
    return ["runuser", "-u", "postgres", "--"] + cmd if os.geteuid() == 0 else cmd


def run(cmd, shell=False):
    """Wall seconds and peak RSS (MiB) of one process (for a pipeline: of its shell),
    read from the kernel's high-water mark of the process's own memory."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, shell=shell, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.005)
    took = time.monotonic() - start
    if p.returncode != 0:
        sys.exit(f"failed: {cmd}\n{p.stderr.read().decode()}")
    return took, peak / 1024


def size_of(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def cluster(body):
    """Runs body(work, port) against a throwaway cluster, removed afterwards."""
    work = tempfile.mkdtemp(prefix="firedrill-bench-")
    os.chmod(work, 0o755)
    if os.geteuid() == 0:
        shutil.chown(work, "postgres")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    data = os.path.join(work, "data")
    subprocess.run(as_postgres([f"{PGBIN}/initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync"]), check=True, stdout=subprocess.DEVNULL)
    opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {work} -c fsync=off -c synchronous_commit=off -c max_wal_size=8GB -c checkpoint_timeout=1h -c max_locks_per_transaction=1024"
    subprocess.run(as_postgres([f"{PGBIN}/pg_ctl", "-D", data, "-o", opts, "-l", os.path.join(work, "pg.log"), "-w", "start"]), check=True, stdout=subprocess.DEVNULL)
    try:
        body(work, port)
    finally:
        subprocess.run(as_postgres([f"{PGBIN}/pg_ctl", "-D", data, "-m", "immediate", "stop"]), stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


def bench(work, port):
    base = f"postgres://postgres@127.0.0.1:{port}"
    env = f"PGHOST=127.0.0.1 PGPORT={port} PGUSER=postgres"
    subprocess.run(f"{env} {PGBIN}/createdb bench && {env} {PGBIN}/pgbench -i -s {SCALE} -q bench", shell=True, check=True, stderr=subprocess.DEVNULL)
    raw = int(subprocess.run(f"{env} {PGBIN}/psql -XAtc 'SELECT pg_database_size(current_database())' bench", shell=True, capture_output=True, text=True, check=True).stdout)
    out = os.path.join(work, "out")
    os.makedirs(out)
    rows = []

    def backup(name, cmd, path, shell=True):
        t, rss = run(cmd, shell=shell)
        rows.append(("backup", name, t, size_of(path), rss))

    def restore(name, db, cmd, shell=True):
        subprocess.run(f"{env} {PGBIN}/createdb {db}", shell=True, check=True)
        t, rss = run(cmd, shell=shell)
        n = subprocess.run(f"{env} {PGBIN}/psql -XAtc 'SELECT count(*) FROM pgbench_accounts' {db}", shell=True, capture_output=True, text=True, check=True).stdout.strip()
        assert int(n) == SCALE * 100000, f"{name}: {n} rows restored"
        rows.append(("restore", name, t, 0, rss))

    gz, fc, fd = (os.path.join(out, n) for n in ("dump.sql.gz", "dump.custom", "dump.dir"))
    store = os.path.join(out, "store")
    backup("pg_dump | gzip (template)", f"{env} {PGBIN}/pg_dump bench | gzip > {gz}", gz)
    backup("pg_dump -Fc", f"{env} {PGBIN}/pg_dump -Fc -f {fc} bench", fc)
    backup(f"pg_dump -Fd -j {JOBS}", f"{env} {PGBIN}/pg_dump -Fd -j {JOBS} -f {fd} bench", fd)
    backup(f"firedrill backup -j {JOBS}", [BIN, "backup", "--database-url", f"{base}/bench", "--store", f"file://{store}", "--source", "bench", "-j", str(JOBS), "--no-globals"], store, shell=False)
    # The same with age encryption to two recipients and a signed manifest.
    sealed = os.path.join(out, "sealed")
    keys = os.path.join(work, "keys")
    os.makedirs(keys)
    recipients = [subprocess.run([BIN, "keygen", "age", "--out", os.path.join(keys, f"{n}.key")], capture_output=True, text=True, check=True).stdout.strip() for n in ("op", "escrow")]
    subprocess.run([BIN, "keygen", "signing", "--out", os.path.join(keys, "signing.key")], capture_output=True, check=True)
    crypt = ["--recipient", recipients[0], "--recipient", recipients[1], "--signing-key", os.path.join(keys, "signing.key")]
    backup(f"firedrill backup -j {JOBS} + age", [BIN, "backup", "--database-url", f"{base}/bench", "--store", f"file://{sealed}", "--source", "bench", "-j", str(JOBS), "--no-globals"] + crypt, sealed, shell=False)
    restore("gunzip | psql (template)", "r_gz", f"gunzip -c {gz} | {env} {PGBIN}/psql -Xq -v ON_ERROR_STOP=1 r_gz")
    restore(f"pg_restore -j {JOBS}", "r_fd", f"{env} {PGBIN}/pg_restore -j {JOBS} -d r_fd {fd}")
    restore(f"firedrill restore -j {JOBS}", "r_fr", [BIN, "restore", "--store", f"file://{store}", "--latest", "--target-url", f"{base}/r_fr", "-j", str(JOBS), "--force"], shell=False)
    restore(f"firedrill restore -j {JOBS} + age", "r_fa", [BIN, "restore", "--store", f"file://{sealed}", "--latest", "--target-url", f"{base}/r_fa", "-j", str(JOBS), "--force", "--identity", os.path.join(keys, "escrow.key"), "--signing-key", os.path.join(keys, "signing.key")], shell=False)

    print(f"backup and restore, pgbench scale {SCALE} ({raw / 2**20:.0f} MiB database), {os.cpu_count()} cores, jobs {JOBS}")
    print()
    print("| step    | tool                          | seconds |   size MiB | peak RSS MiB | time vs template |")
    print("|---------|-------------------------------|--------:|-----------:|-------------:|-----------------:|")
    for step, name, t, size, rss in rows:
        ref = next(r[2] for r in rows if r[0] == step)
        size_s = f"{size / 2**20:10.1f}" if size else f"{'':>10}"
        print(f"| {step:<7} | {name:<29} | {t:7.2f} | {size_s} | {rss:12.0f} | {ref / t:15.2f}x |")
    print()
    by = {(r[0], r[1]): r[2] for r in rows}
    for step in ("backup", "restore"):
        plain, sealed_t = by[(step, f"firedrill {step} -j {JOBS}")], by[(step, f"firedrill {step} -j {JOBS} + age")]
        print(f"encryption cost, {step}: {plain:.2f} s plain, {sealed_t:.2f} s with age ({(sealed_t / plain - 1) * 100:+.1f}%)")
    # pgbench data compresses ~200x, so little is left to encrypt: the worst
    # case is data zstd cannot shrink. NOISE_MIB of random bytes, same steps.
    subprocess.run(f"{env} {PGBIN}/createdb noise && {env} {PGBIN}/psql -Xqc \"CREATE TABLE noise AS SELECT g, decode(string_agg(lpad(to_hex((random() * 4294967295)::bigint), 8, '0'), ''), 'hex') AS b FROM generate_series(1, {NOISE_MIB} * 1024) g, generate_series(1, 256) x GROUP BY g\" noise", shell=True, check=True)
    noisy = []
    for name, extra, read in (("plain", [], []), ("age", crypt, ["--identity", os.path.join(keys, "escrow.key"), "--signing-key", os.path.join(keys, "signing.key")])):
        st = os.path.join(out, f"noise-{name}")
        t_b, _ = run([BIN, "backup", "--database-url", f"{base}/noise", "--store", f"file://{st}", "--source", "noise", "-j", str(JOBS), "--no-globals"] + extra)
        subprocess.run(f"{env} {PGBIN}/createdb n_{name}", shell=True, check=True)
        t_r, _ = run([BIN, "restore", "--store", f"file://{st}", "--latest", "--target-url", f"{base}/n_{name}", "-j", str(JOBS), "--force"] + read)
        noisy.append((name, t_b, t_r, size_of(st)))
    print()
    print(f"| {NOISE_MIB} MiB of random bytes | backup s | restore s | stored MiB |")
    print("|---|---:|---:|---:|")
    for name, t_b, t_r, size in noisy:
        print(f"| firedrill, {name} | {t_b:.2f} | {t_r:.2f} | {size / 2**20:.1f} |")
    (_, pb, pr, _), (_, ab, ar, _) = noisy
    print(f"encryption cost on incompressible data: backup {(ab / pb - 1) * 100:+.1f}%, restore {(ar / pr - 1) * 100:+.1f}%")
    print()
    print("peak RSS: the kernel high-water mark of the process started; the pg_dump rows run through a shell, so theirs is the shell's.")


if __name__ == "__main__":
    cluster(bench)
