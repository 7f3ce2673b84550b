#!/usr/bin/env bash
# The durability choice of src/durability.rs, measured on this disk: the latency of making one
# 0.5 MB instance durable (file data, its rename, a 4 KiB index WAL append) by
#   fsync:  sync_file_range + fdatasync(WAL) + rename + fdatasync(file) + fsync(directory)
#   syncfs: rename + syncfs (everything dirty on the file system, one journal commit)
#   probe:  syncfs as above, then the journal probe the barrier makes after each flush (a held
#           file grown to one byte and cut back: see journal_alive in src/durability.rs)
# first alone, then with a stranger writing to the same file system (`dd`). One instance at a time:
# neither side gets the batching a group commit gives it under concurrent associations.
#   scripts/bench-flush.sh [DIR]      (default: a temp directory under /tmp)
set -euo pipefail
DIR=$(mktemp -d "${1:-/tmp}/bench-flush.XXXXXX")
DD_PID=""
cleanup() {
    rm -f "$DIR/.stranger"
    # The killed writer's status is no failure of ours: under `set -e` it used to end this
    # function before the directory (and its 1 GiB file) was removed.
    if [ -n "$DD_PID" ]; then
        pkill -P "$DD_PID" 2>/dev/null || true
        wait "$DD_PID" 2>/dev/null || true
    fi
    rm -rf "$DIR"
}
trap cleanup EXIT
run() {
    python3 - "$DIR" "$1" <<'PY'
import ctypes, os, statistics, sys, time
libc = ctypes.CDLL("libc.so.6", use_errno=True)
root, label = sys.argv[1], sys.argv[2]
data = os.urandom(512 * 1024)
d = os.open(root, os.O_RDONLY)
wal = os.open(os.path.join(root, "wal"), os.O_CREAT | os.O_WRONLY, 0o644)
probe = os.open(os.path.join(root, ".flush-probe"), os.O_CREAT | os.O_WRONLY, 0o600)
def one(mode, i):
    tmp, dest = f"{root}/.{i}.part", f"{root}/{i}.dcm"
    t = time.perf_counter()
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    os.write(fd, data)
    if mode == "fsync":
        libc.sync_file_range(fd, ctypes.c_longlong(0), ctypes.c_longlong(0), 2)
        os.pwrite(wal, b"x" * 4096, (i % 1000) * 4096); os.fdatasync(wal)
        os.rename(tmp, dest); os.fdatasync(fd); os.fsync(d)
    else:
        os.pwrite(wal, b"x" * 4096, (i % 1000) * 4096)
        os.rename(tmp, dest)
        if libc.syncfs(d) != 0: raise OSError(ctypes.get_errno(), "syncfs")
        if mode == "probe":
            os.ftruncate(probe, 1); os.ftruncate(probe, 0)
    os.close(fd)
    return (time.perf_counter() - t) * 1000
times = {"fsync": [], "syncfs": [], "probe": []}
for rnd in range(4):  # interleaved, so a drift in the machine hits both alike
    for mode in times:
        times[mode] += [one(mode, rnd * 1000 + k) for k in range(150)]
        for f in os.listdir(root):
            if f.endswith(".dcm"): os.unlink(os.path.join(root, f))
for mode, v in times.items():
    v.sort()
    print(f"{label:>9} | {mode:>6}: median {statistics.median(v):6.2f} ms | p90 {v[len(v) * 9 // 10]:6.2f} ms")
PY
}
run alone
# The stranger rewrites one 1 GiB file over and over, so the disk never fills.
touch "$DIR/.stranger"
(while [ -e "$DIR/.stranger" ]; do dd if=/dev/zero of="$DIR/stranger" bs=1M count=1024 status=none; done) & DD_PID=$!
sleep 1
run "+ stranger"
