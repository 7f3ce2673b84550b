# Sourced by the benchmark scripts (`. scripts/bench-lib.sh`, from the repository root): what each needs first.

# Run the calling script again in a private network namespace with only loopback up (call it with
# the script's own arguments): DCMTK's servers cannot bind to 127.0.0.1 alone, so they listen on
# every interface, which there is only loopback.
bench_in_netns() {
    if [ -z "${BENCH_IN_NETNS:-}" ]; then
        exec unshare -n env BENCH_IN_NETNS=1 bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
    fi
}

# Build the node, make-corpus and the other examples named, in release mode. Sets TARGET (where
# they are, honouring CARGO_TARGET_DIR) and BIN (the node; a BIN already set, another build for a
# before/after comparison, is kept).
bench_build() {
    local examples=(--example make-corpus)
    for e in "$@"; do examples+=(--example "$e"); done
    cargo build --release --quiet --bin dicom-anon-gateway "${examples[@]}"
    TARGET=${CARGO_TARGET_DIR:-$PWD/target}
    BIN=${BIN:-$TARGET/release/dicom-anon-gateway}
}

# Move a finished run's output (a directory under $WORK) aside instead of deleting it; $WORK goes
# at exit. On an ext4 without a journal (this build machine's), a new file avoids inodes deleted
# in the last 60 s (360 s while their inode-table block is dirty; fs/ext4/ialloc.c, Linux 5.x and
# later), checking each one in its group while that block is cached, and takes one only if nothing
# else is free. Deleting one run's thousand files made the next run's file creations cost up to a
# third of the node's CPU (perf: find_inode_bit, recently_deleted), charged to whichever peer ran
# next. Deletions outside a benchmark can do the same (README, Benchmarks).
retire() {
    if [ -e "$1" ]; then
        BENCH_RETIRED=$((${BENCH_RETIRED:-0} + 1))
        mv "$1" "$WORK/retired.$BENCH_RETIRED"
    fi
}

# bench_workdir NAME [PID_VARIABLE ...]: WORK, a fresh directory for this run, removed at exit,
# after every process whose PID one of the named variables holds then (an empty one is skipped).
bench_workdir() {
    WORK=$(mktemp -d "/tmp/bench-$1.XXXXXX")
    shift
    BENCH_PID_VARIABLES=("$@")
    trap bench_cleanup EXIT
}
bench_cleanup() {
    local v
    for v in "${BENCH_PID_VARIABLES[@]}"; do
        if [ -n "${!v:-}" ]; then kill "${!v}" 2>/dev/null || true; fi
    done
    rm -rf "$WORK"
}

# bench_start_node DIR: the node serving DIR/config.yaml (its output in DIR/out, its log appended
# to DIR/log), once every listener is bound (the start's "tls" line). Sets NODE_PID, NODE_PORT (the
# DICOM listener on 127.0.0.1) and HTTP_ADDR (empty with http off). A node that exits instead stops
# the benchmark with its log.
bench_start_node() {
    "$BIN" serve --config "$1/config.yaml" > "$1/out" 2>> "$1/log" &
    NODE_PID=$!
    until grep -q '^tls' "$1/out" 2>/dev/null; do
        kill -0 "$NODE_PID" 2>/dev/null || { echo "the node did not start:" >&2; cat "$1/log" >&2; exit 1; }
        sleep 0.02
    done
    NODE_PORT=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$1/out" | cut -d: -f2 || true)
    HTTP_ADDR=$(sed -n 's/^http on //p' "$1/out")
}
