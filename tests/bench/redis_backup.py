#!/usr/bin/env python3
"""Redis backup: firedrill against `redis-cli --rdb` (the standard tool) on the
same server in the same run.

A throwaway redis-server (random local port, diskless replication without the
5 s wait) is filled with `DEBUG POPULATE N` (FIREDRILL_BENCH_KEYS, default
2 000 000 keys of 100 bytes); then `redis-cli --rdb FILE` (and the same piped
through `zstd -3`) and `firedrill backup --redis-url` each fetch the snapshot.
The table prints seconds, stored size and peak RSS, and the ratio of each
time to `redis-cli --rdb | zstd`.

    tests/bench/run redis
"""
import os, shutil, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backup_restore import BIN, run, size_of  # noqa: E402

KEYS = int(os.environ.get("FIREDRILL_BENCH_KEYS", "2000000"))


def main():
    work = tempfile.mkdtemp(prefix="firedrill-redis-bench-")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", work, "--enable-debug-command", "yes", "--repl-diskless-sync-delay", "0"],
        stdout=subprocess.DEVNULL)
    try:
        cli = ["redis-cli", "-p", str(port)]
        for _ in range(200):
            if subprocess.run(cli + ["PING"], capture_output=True).stdout.strip() == b"PONG":
                break
            time.sleep(0.05)
        subprocess.run(cli + ["DEBUG", "POPULATE", str(KEYS), "key", "100"], check=True, capture_output=True)
        rows = []
        rdb = os.path.join(work, "cli.rdb")
        t, m = run(cli + ["--rdb", rdb])
        rows.append(("redis-cli --rdb (uncompressed)", t, size_of(rdb), m))
        os.remove(rdb)
        t, m = run(f"redis-cli -p {port} --rdb - 2>/dev/null | zstd -q -3 -o {rdb}.zst", shell=True)
        rows.append(("redis-cli --rdb - | zstd -3", t, size_of(rdb + ".zst"), None))
        store = os.path.join(work, "store")
        t, m = run([BIN, "backup", "--redis-url", f"redis://127.0.0.1:{port}/", "--store", f"file://{store}",
                    "--source", "bench"])
        rows.append(("firedrill backup --redis-url", t, size_of(store), m))
        base = rows[1][1]
        print(f"Redis backup, {KEYS} keys (DEBUG POPULATE, 100-byte values), same server, same run\n")
        print("| tool | seconds | stored MiB | peak RSS MiB | time vs redis-cli \\| zstd |")
        print("|---|---:|---:|---:|---:|")
        for name, t, size, mem in rows:
            mem_text = f"{mem:.0f}" if mem is not None else "(shell)"
            print(f"| {name} | {t:.2f} | {size / 2**20:.1f} | {mem_text} | {base / t:.2f}x |")
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
