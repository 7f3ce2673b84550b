#!/usr/bin/env bash
# Ingest throughput: DCMTK storescu sends the same corpus to (a) DCMTK storescp writing files, no
# anonymization, no fsync, (b) the same storescp with each file made durable before it answers
# (fdatasync and a directory fsync per file, scripts/durable-close.c preloaded: the promise our node
# keeps, without the anonymizing) and (c) our node, anonymizing and committing durably, in the same
# run, over 1 and 8 concurrent associations. Prints instances/s, the ratios ours/storescp and
# ours/durable storescp, each one's CPU time per instance (user + system, from /proc/PID/stat;
# storescp's with the children it forks) and our peak RSS.
# Then our node over DICOM TLS against our node over plain TCP, same run, 8 associations: instances/s,
# the ratio, and the node's CPU per instance on each (certificates made here with openssl).
#   scripts/bench-ingest.sh [--repeat N] [COUNT] [ROWS]
#                                                   (default 1000 CT, 512x512 16-bit, 10 patients;
#                                                    N rounds of the three runs per association
#                                                    count, in rotating order, then the medians)
#   scripts/bench-ingest.sh --index postgres [--repeat N] [COUNT] [ROWS]
#                                                   (our node with its index on PostgreSQL against
#                                                    the same node on SQLite, 1 and 8 associations,
#                                                    alternating; then two nodes on one database
#                                                    against one node: inst/s, CPU per instance of
#                                                    the nodes and of PostgreSQL; the server is
#                                                    Debian's, started here in $WORK)
#   scripts/bench-ingest.sh --memory                (16 associations x one 512 MB multi-frame each)
#   scripts/bench-ingest.sh --sustained [COUNT]     (default 50,000 small CT from 5,000 patients over
#                                                    16 associations, sent in ten equal rounds: is the
#                                                    last tenth as fast as the first, and RSS flat?)
# Each of our runs also gives, from the node's /metrics (read with curl), the mean time from an
# instance's last byte to its response (anonymize, write, index, waiting for and sharing a flush),
# the mean duration of one group-commit flush, and the images the pixel stage read with OCR and
# the time they took (the first image of each series: about 0.2 s each, which senders wait for).
# With PERF_DATA=FILE set, the node is recorded with `perf record -g` during the (first) run over
# PERF_ASSOC associations (default 8).
# Runs inside its own network namespace (only loopback), since storescp cannot bind to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
bench_in_netns "$@"
MEMORY=0; SUSTAINED=0; REPEAT=1; ARGS=(); INDEX=sqlite
usage() {
    echo "usage: scripts/bench-ingest.sh [--index postgres] [--repeat N] [COUNT] [ROWS] | --memory | --sustained [COUNT]" >&2
    exit 2
}
# count VALUE: a whole number (leading zeros are decimal, not octal), or the usage.
count() { [[ "$1" =~ ^[0-9]+$ ]] && [ $((10#$1)) -ge 1 ] || usage; echo $((10#$1)); }
while [ $# -gt 0 ]; do
    case "$1" in
        --repeat) REPEAT=$(count "${2:-}") || exit 2; shift 2 ;;
        --memory) MEMORY=1; shift ;;
        --sustained) SUSTAINED=1; shift ;;
        --index) [ "${2:-}" = postgres ] || usage; INDEX=postgres; shift 2 ;;
        *) ARGS+=("$(count "$1")") || exit 2; shift ;;
    esac
done
case "$MEMORY$SUSTAINED:${#ARGS[@]}" in
    00:[012] | 01:[01] | 10:0) ;;
    *) usage ;;
esac
if [ "$REPEAT" -gt 1 ] && [ $((MEMORY + SUSTAINED)) -gt 0 ]; then
    echo "--repeat applies to the throughput runs, not to --memory or --sustained" >&2; exit 2
fi
if [ "$SUSTAINED" = 1 ]; then COUNT=${ARGS[0]:-50000}; ROWS=32; PATIENTS=5000; else COUNT=${ARGS[0]:-1000}; ROWS=${ARGS[1]:-512}; PATIENTS=10; fi
NODE_PID=""; SCP_PID=""; PG_PID=""; NODE2_PID=""
bench_workdir ingest NODE_PID SCP_PID PG_PID NODE2_PID
export TCP_NODELAY=1
# BIN=path runs another build of the node (a before/after comparison in one run).
bench_build

if [ "$MEMORY" = 1 ]; then
    # One 512 MB instance (16 frames of 4096x4096 16-bit); 16 senders each send it at once.
    "$TARGET"/release/examples/make-corpus "$WORK/corpus" 1 4096 1 16 >/dev/null
    SENDERS=16
else
    "$TARGET"/release/examples/make-corpus "$WORK/corpus" "$COUNT" "$ROWS" "$PATIENTS" >/dev/null
fi
ALL=("$WORK"/corpus/*.dcm)
FILES=("${ALL[@]}")
echo "corpus: ${#FILES[@]} files, $(du -sm "$WORK/corpus" | cut -f1) MB; $(nproc) cores"
find "$WORK/corpus" -name "*.dcm" -exec cat {} + > /dev/null; sync

now() { date +%s.%N; }
# rate SECONDS: instances/s for the corpus sent in SECONDS.
rate() { echo "${#FILES[@]} / $1" | bc -l; }
# per_instance TICKS: CPU ms per instance of the corpus.
per_instance() { echo "$1 * 1000 / $(getconf CLK_TCK) / ${#FILES[@]}" | bc -l; }
# Node CPU (user + system) so far, in seconds.
node_cpu() { echo "$(cpu_ticks) / $(getconf CLK_TCK)" | bc -l; }
# The whole machine's busy time (every process, the senders and kernel threads included, all
# online cores: user, nice, system, irq, softirq; not steal, which the hypervisor kept), in clock
# ticks: where the cores are all busy, the ratio of two receivers' rates is the inverse ratio of
# this per instance. (In a container /proc/stat is the host's: run this on the machine itself.)
busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
# busy_share TICKS SECONDS: the share of the online cores busy, in % (nproc would follow this
# shell's affinity; /proc/stat counts every online core).
busy_share() { echo "$1 * 100 / $(getconf CLK_TCK) / $(grep -c '^cpu[0-9]' /proc/stat) / $2" | bc -l; }
# send PORT AE N: N storescu processes, the files dealt round robin (or all N send every file
# in memory mode); prints the wall time.
send() {
    local port=$1 ae=$2 n=$3 pids=() t0 t1 b0
    t0=$(now); b0=$(busy_ticks)
    for ((k = 0; k < n; k++)); do
        local mine=()
        if [ "$MEMORY" = 1 ]; then mine=("${FILES[@]}"); else
            for ((j = k; j < ${#FILES[@]}; j += n)); do mine+=("${FILES[$j]}"); done
        fi
        /usr/bin/storescu -aec "$ae" --max-pdu 65536 ${SEND_TLS:-} 127.0.0.1 "$port" "${mine[@]}" > "$WORK/send-$k.log" 2>&1 &
        pids+=($!)
    done
    local failed=0
    for p in "${pids[@]}"; do wait "$p" || failed=1; done
    t1=$(now)
    # Read by the caller (this runs in a subshell): the machine's busy time during the send.
    echo $(($(busy_ticks) - b0)) > "$WORK/busy"
    if [ $failed = 1 ] || grep -qi "failed\|error" "$WORK"/send-*.log; then echo "a sender failed:" >&2; cat "$WORK"/send-*.log >&2; exit 1; fi
    echo "$t1 - $t0" | bc -l
}

# start_node [EXTRA [TOP]]: EXTRA is added to the scp: mapping (", tls: {...}"), TOP to the file
# (an index: section).
start_node() {
    retire "$WORK/node"; mkdir -p "$WORK/node"
    cat > "$WORK/node/config.yaml" <<YAML
project: { name: BENCH, site_id: "972149", script: $PWD/config/default-anonymizer.script }
scp: { ae_title: ANONYMIZER, host: 127.0.0.1, port: 0, max_pdu_length: 65536, max_instance_bytes: 1073741824${1:-} }
storage: { dir: $WORK/node/storage, min_free_bytes: 0 }
logging: { level: warn }
${2:-}
YAML
    "$BIN" serve --config "$WORK/node/config.yaml" > "$WORK/node/out" 2> "$WORK/node/log" &
    NODE_PID=$!
    # The third start line ("tls on ADDR" or "tls disabled") comes once every listener is bound;
    # a build from before TLS (BIN=...) prints only the first two.
    local waited=0
    until grep -q '^tls' "$WORK/node/out" 2>/dev/null || { grep -q '^listening' "$WORK/node/out" 2>/dev/null && [ "$waited" -ge 40 ]; }; do
        kill -0 "$NODE_PID" 2>/dev/null || { echo "the node did not start:" >&2; cat "$WORK/node/log" >&2; exit 1; }
        sleep 0.05; waited=$((waited + 1))
    done
    NODE_PORT=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$WORK/node/out" | cut -d: -f2)
    # The operations endpoint, on by default (a build from before it prints no such line).
    HTTP_ADDR=$(sed -n 's/^http on //p' "$WORK/node/out")
    TLS_PORT=$(grep -o 'tls on 127.0.0.1:[0-9]*' "$WORK/node/out" | cut -d: -f2 || true)
}
# The running node's /metrics, or nothing when it has no endpoint (an older build, BIN=...).
node_metrics() { [ -n "$HTTP_ADDR" ] && curl -sf --noproxy '*' --max-time 5 "http://$HTTP_ADDR/metrics" || true; }
# mean_ms METRIC: a histogram's mean, in ms, from the metrics text on stdin; n/a without it.
mean_ms() {
    awk -v m="dicom_anon_$1" '$1 == m "_sum" { s = $2 } $1 == m "_count" { c = $2 }
        END { if (c) printf "%.2f", s * 1000 / c; else printf "n/a" }'
}
# The node's CPU time so far (user + system), in clock ticks: its own, and that of its OCR
# workers (children) with the readers each forks and reaped, whether or not the node has reaped
# the worker yet.
cpu_ticks() {
    local t c
    t=$(awk '{print $14 + $15 + $16 + $17}' /proc/"$NODE_PID"/stat)
    for c in $(pgrep -P "$NODE_PID" || true); do
        t=$((t + $(awk '{print $14 + $15 + $16 + $17}' /proc/"$c"/stat 2>/dev/null || echo 0)))
    done
    echo "$t"
}
stop_node() {
    local metrics
    metrics=$(node_metrics)
    ACK_MS=$(mean_ms ack_latency_seconds <<< "$metrics"); FLUSH_MS=$(mean_ms durability_flush_seconds <<< "$metrics")
    WAIT_MS=$(mean_ms durability_wait_seconds <<< "$metrics")
    # The pixel stage reads some images with OCR while their senders wait (the first of each
    # series of a volume): its share of the run is said beside the rate, which it can dominate.
    PIXELS=$(awk '$1 == "dicom_anon_pixel_read_seconds_sum" { s = $2 } $1 == "dicom_anon_pixel_read_seconds_count" { c = $2 }
        END { if (c != "") printf " | OCR read %d images in %.2f s", c, s }' <<< "$metrics")
    PEAK_KB=$(grep VmHWM /proc/"$NODE_PID"/status | awk '{print $2}')
    TICKS=$(cpu_ticks)
    kill "$NODE_PID"; wait "$NODE_PID" || true; NODE_PID=""
}
# start_storescp [PRELOAD]: PRELOAD, a library storescp runs with (the durable variant).
start_storescp() {
    retire "$WORK/scp"; mkdir -p "$WORK/scp"
    env ${1:+LD_PRELOAD="$1"} /usr/bin/storescp --fork -aet STORESCP -od "$WORK/scp" --max-pdu 65536 11113 > "$WORK/scp.log" 2>&1 &
    SCP_PID=$!
    sleep 0.3
}
# storescp's CPU time (user + system) in clock ticks: its own, that of the children it forked (one
# per association) and has reaped, and that of those not reaped yet (zombies keep their times).
# A child reaped while this reads would be counted twice or not at all (one run read 0.01 ms per
# instance), so the reading is taken again until the same children are there before and after
# (each retry needs a child to have been reaped; the last of 20 readings stands regardless).
scp_ticks() {
    local before after kids t c try
    children() { pgrep -P "$SCP_PID" | tr '\n' ' ' || true; }
    for ((try = 1; try <= 20; try++)); do
        before=$(children)
        kids=0
        for c in $before; do kids=$((kids + $(awk '{print $14 + $15}' /proc/"$c"/stat 2>/dev/null || echo 0))); done
        # storescp gone: no reading at all, rather than its children's alone.
        t=$(awk '{print $14 + $15 + $16 + $17}' /proc/"$SCP_PID"/stat) ||
            { echo "storescp ended before its CPU time was read" >&2; return 1; }
        after=$(children)
        if [ "$before" = "$after" ]; then break; fi
    done
    echo $((t + kids))
}
stop_storescp() {
    SCP_TICKS=$(scp_ticks)
    kill "$SCP_PID"; wait "$SCP_PID" 2>/dev/null || true; SCP_PID=""
}

if [ "$MEMORY" = 1 ]; then
    start_node
    T=$(send "$NODE_PORT" ANONYMIZER "$SENDERS")
    stop_node
    printf 'memory: %d associations x %s MB instance in %.1f s; our peak RSS %d MB (goal < 256 MB)\n' \
        "$SENDERS" "$(du -sm "${FILES[0]}" | cut -f1)" "$T" $((PEAK_KB / 1024))
    exit 0
fi

if [ "$SUSTAINED" = 1 ]; then
    # Ten rounds of a tenth each, 16 associations, into one node whose archive keeps growing.
    start_node
    TENTH=$((COUNT / 10)); RATES=()
    for ((r = 0; r < 10; r++)); do
        FILES=("${ALL[@]:$((r * TENTH)):$TENTH}")
        T=$(send "$NODE_PORT" ANONYMIZER 16)
        RATE=$(echo "$TENTH / $T" | bc -l); RATES+=("$RATE")
        printf 'round %2d: %7.1f inst/s, RSS %d MB\n' $((r + 1)) "$RATE" \
            $(($(grep VmRSS /proc/"$NODE_PID"/status | awk '{print $2}') / 1024))
    done
    # Sizes while the node still runs: a WAL that never starts over would show here.
    size_mb() { [ -e "$1" ] && echo $(( $(stat -c %s "$1") / 1048576 )) || echo 0; }
    INDEX=$WORK/node/storage/private/index.db
    INDEX_MB=$(size_mb "$INDEX"); WAL_MB=$(size_mb "$INDEX-wal")
    stop_node
    printf 'sustained: %d instances from %d patients, 16 associations | last tenth / first tenth %.2f (goal >= 0.9) | CPU %.2f ms/instance | peak RSS %d MB | index %d MB, WAL %d MB\n' \
        "$COUNT" "$PATIENTS" "$(echo "${RATES[9]} / ${RATES[0]}" | bc -l)" \
        "$(echo "$TICKS * 1000 / $(getconf CLK_TCK) / $COUNT" | bc -l)" $((PEAK_KB / 1024)) \
        "$INDEX_MB" "$WAL_MB"
    exit 0
fi

if [ "$INDEX" = postgres ]; then
    # A PostgreSQL cluster of our own in $WORK (as the postgres user when we are root: the server
    # refuses root), on the same host, its data on the same disk as the node's storage.
    PGBIN=$(dirname "$(compgen -G '/usr/lib/postgresql/*/bin/postgres' | head -1)")
    [ -x "$PGBIN/postgres" ] || { echo "install the Debian package postgresql" >&2; exit 1; }
    as_pg() { if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else "$@"; fi; }
    mkdir -p "$WORK/pg"; chmod 755 "$WORK"; echo -n bench > "$WORK/pg/pw"
    [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$WORK/pg"
    as_pg "$PGBIN/initdb" -D "$WORK/pg/data" -U dag --auth=scram-sha-256 --pwfile "$WORK/pg/pw" > /dev/null
    as_pg "$PGBIN/postgres" -D "$WORK/pg/data" -p 25439 -c listen_addresses=127.0.0.1 -c unix_socket_directories= \
        > "$WORK/pg.log" 2>&1 &
    PG_PID=$!
    until PGPASSWORD=bench psql -h 127.0.0.1 -p 25439 -U dag -d postgres -Atc 'SELECT 1' > /dev/null 2>&1; do
        kill -0 "$PG_PID" 2>/dev/null || { cat "$WORK/pg.log" >&2; exit 1; }; sleep 0.1
    done
    export DICOM_ANON_INDEX_URL=postgresql://dag:bench@127.0.0.1:25439/postgres
    # PostgreSQL's CPU time so far, in ticks: the postmaster's, the backends' it has reaped, and
    # those of the backends still running.
    # ($PG_PID is the shell that started it; the postmaster's own PID is in its data directory.)
    pg_ticks() {
        local t kids=0 c master
        master=$(head -1 "$WORK/pg/data/postmaster.pid")
        for c in $(pgrep -P "$master" || true); do kids=$((kids + $(awk '{print $14 + $15}' /proc/"$c"/stat 2>/dev/null || echo 0))); done
        t=$(awk '{print $14 + $15 + $16 + $17}' /proc/"$master"/stat)
        echo $((t + kids))
    }
    # A fresh schema per run, so that each run starts from an empty archive.
    RUN=0
    pg_yaml() { echo "index: { backend: postgres, url_env: DICOM_ANON_INDEX_URL, schema: run$RUN }"; }
    run_on() {
        local top="" p0
        RUN=$((RUN + 1))
        [ "$1" = postgres ] && top=$(pg_yaml)
        p0=$(pg_ticks)
        start_node "" "$top"
        T=$(send "$NODE_PORT" ANONYMIZER "$n")
        stop_node
        PGT=$(($(pg_ticks) - p0))
        STORED=$(find "$WORK/node/storage/public" -name '*.dcm' | wc -l)
        [ "$STORED" -eq "${#FILES[@]}" ] || { echo "node stored $STORED of ${#FILES[@]}" >&2; tail "$WORK/node/log" >&2; exit 1; }
        sync
    }
    for n in 1 8; do
        for ((r = 1; r <= REPEAT; r++)); do
            if [ $((r % 2)) = 1 ]; then run_on sqlite; TS=$T; CS=$TICKS; run_on postgres; TP=$T; CP=$TICKS; PP=$PGT
            else run_on postgres; TP=$T; CP=$TICKS; PP=$PGT; run_on sqlite; TS=$T; CS=$TICKS; fi
            printf '%d association(s): SQLite %7.1f inst/s | PostgreSQL %7.1f inst/s | PostgreSQL/SQLite %.2f (goal >= 0.8) | CPU ms/instance: node on SQLite %.2f, node on PostgreSQL %.2f, PostgreSQL %.2f\n' \
                "$n" "$(rate "$TS")" "$(rate "$TP")" "$(echo "$TS / $TP" | bc -l)" "$(per_instance "$CS")" "$(per_instance "$CP")" "$(per_instance "$PP")"
        done
    done
    # Two nodes on one database against one node, 8 associations in all (4 to each node).
    n=8
    run_on postgres; TONE=$T
    RUN=$((RUN + 1)); TOP=$(pg_yaml)
    p0=$(pg_ticks)
    start_node "" "$TOP"; A_PID=$NODE_PID; A_PORT=$NODE_PORT
    mkdir -p "$WORK/node2"
    { sed "s#$WORK/node/storage#$WORK/node2/storage#" "$WORK/node/config.yaml"; echo "http: { listen: 127.0.0.1:0 }"; } \
        > "$WORK/node2/config.yaml"
    bench_start_node "$WORK/node2"; NODE2_PID=$NODE_PID; B_PORT=$NODE_PORT; NODE_PID=$A_PID
    HALF=$(( ${#FILES[@]} / 2 )); ALLF=("${FILES[@]}")
    t0=$(now)
    FILES=("${ALLF[@]:0:$HALF}"); send "$A_PORT" ANONYMIZER 4 > "$WORK/two-a" &
    SA=$!
    FILES=("${ALLF[@]:$HALF}"); send "$B_PORT" ANONYMIZER 4 > "$WORK/two-b"
    wait "$SA"
    t1=$(now); FILES=("${ALLF[@]}")
    TTWO=$(echo "$t1 - $t0" | bc -l)
    kill "$NODE2_PID"; wait "$NODE2_PID" || true; NODE2_PID=""
    stop_node
    printf 'two nodes on one database, 8 associations (4 each): one node %7.1f inst/s | two nodes %7.1f inst/s | ratio %.2f | PostgreSQL CPU %.2f ms/instance\n' \
        "$(rate "$TONE")" "$(rate "$TTWO")" "$(echo "$TONE / $TTWO" | bc -l)" "$(per_instance $(($(pg_ticks) - p0)))"
    exit 0
fi

# median FORMAT: the middle of the numbers on stdin (the mean of the two middle ones for an even
# count), printed with FORMAT; n/a where there are none.
median() {
    { grep -E '^[0-9.]+$' || true; } | sort -g |
        awk -v f="$1" '{ v[NR] = $1 } END { if (!NR) printf "n/a"; else printf f, NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
run_storescp() {
    start_storescp
    TS=$(send 11113 STORESCP "$n")
    stop_storescp
    PLAIN_TICKS=$SCP_TICKS
    sync
}
run_durable_storescp() {
    : > "$WORK/durable.count"
    DURABLE_CLOSE_COUNT=$WORK/durable.count start_storescp "$WORK/durable-close.so"
    TD=$(send 11113 STORESCP "$n")
    BUSY_D=$(cat "$WORK/busy")
    stop_storescp
    DURABLE_TICKS=$SCP_TICKS
    # The library counts each file it made durable, and storescp writes nothing else.
    local synced
    synced=$(stat -c %s "$WORK/durable.count")
    [ "$synced" -eq "${#FILES[@]}" ] || { echo "durable storescp synced $synced of ${#FILES[@]} files" >&2; exit 1; }
    sync
}
run_ours() {
    start_node
    PERF_PID=""
    if [ "$PROFILED" = 1 ]; then
        perf record -g -o "$PERF_DATA" -p "$NODE_PID" 2>/dev/null & PERF_PID=$!
    fi
    TO=$(send "$NODE_PORT" ANONYMIZER "$n")
    BUSY_O=$(cat "$WORK/busy")
    [ -n "$PERF_PID" ] && { kill -INT "$PERF_PID"; wait "$PERF_PID" || true; }
    stop_node
    STORED=$(find "$WORK/node/storage/public" -name '*.dcm' | wc -l)
    [ "$STORED" -eq "${#FILES[@]}" ] || { echo "node stored $STORED of ${#FILES[@]}" >&2; tail "$WORK/node/log" >&2; exit 1; }
    sync
}
# column_of K: field K of every row kept for the medians; med_of K FORMAT: their median.
column_of() { printf '%s\n' "${ROWS_OUT[@]}" | cut -d' ' -f"$1"; }
med_of() { column_of "$1" | median "$2"; }
cc -shared -fPIC -O2 -o "$WORK/durable-close.so" scripts/durable-close.c -ldl
for n in 1 8; do
    ROWS_OUT=()
    for ((r = 1; r <= REPEAT; r++)); do
        PROFILED=0
        if [ -n "${PERF_DATA:-}" ] && [ "$n" = "${PERF_ASSOC:-8}" ] && [ "$r" = 1 ]; then PROFILED=1; fi
        # The order rotates, so that each runs first, second and third in turn.
        case $((r % 3)) in
            1) run_storescp; run_durable_storescp; run_ours ;;
            2) run_durable_storescp; run_ours; run_storescp ;;
            0) run_ours; run_storescp; run_durable_storescp ;;
        esac
        # One row: storescp inst/s, ours, ratio, CPU ms/instance of each, peak RSS MB, ack ms,
        # flush ms; then durable storescp inst/s, ours/it, its CPU ms/instance; then our mean wait
        # at the group-commit barrier (a flush's duration plus the wait for the one running); then
        # the machine's CPU per instance and the share of the cores busy, durable storescp's run
        # and ours.
        ROW=$(printf '%.1f %.1f %.2f %.2f %.2f %d %s %s %.1f %.2f %.2f %s %.2f %.2f %.0f %.0f' "$(rate "$TS")" "$(rate "$TO")" \
            "$(echo "$TS / $TO" | bc -l)" "$(per_instance "$PLAIN_TICKS")" "$(per_instance "$TICKS")" \
            $((PEAK_KB / 1024)) "$ACK_MS" "$FLUSH_MS" \
            "$(rate "$TD")" "$(echo "$TD / $TO" | bc -l)" "$(per_instance "$DURABLE_TICKS")" "$WAIT_MS" \
            "$(per_instance "$BUSY_D")" "$(per_instance "$BUSY_O")" "$(busy_share "$BUSY_D" "$TD")" "$(busy_share "$BUSY_O" "$TO")")
        # A profiled run is slowed by perf: shown, but kept out of the medians.
        if [ "$PROFILED" = 1 ]; then NOTE=" | profiled, not in the medians"; else NOTE=""; ROWS_OUT+=("$ROW"); fi
        NOTE="${PIXELS:-}$NOTE"
        # shellcheck disable=SC2086 # the row's fields are the arguments
        printf '%d association(s): storescp %7.1f inst/s | ours (anonymized, durable) %7.1f inst/s | ratio %.2f | CPU ms/instance: storescp %.2f, ours %.2f | our peak RSS %d MB | last byte to response %s ms | one flush %s ms | durable storescp %.1f inst/s, ratio %.2f, CPU %.2f ms/instance | wait at the barrier %s ms | machine CPU ms/instance (senders, kernel threads, all): durable storescp %.2f, ours %.2f, cores busy %.0f%% and %.0f%%%s\n' \
            "$n" $ROW "$NOTE"
    done
    if [ "$REPEAT" -gt 1 ]; then
        RATIOS=$(column_of 3 | tr '\n' ' ')
        DURABLE_RATIOS=$(column_of 10 | tr '\n' ' ')
        printf '%d association(s), median of %d rounds: storescp %s inst/s | ours %s inst/s | ratio %s (rounds in run order: %s) | CPU ms/instance: storescp %s, ours %s | our peak RSS %s MB | last byte to response %s ms | one flush %s ms | wait at the barrier %s ms | durable storescp %s inst/s, ratio %s (%s), CPU %s ms/instance | machine CPU ms/instance: durable storescp %s, ours %s, cores busy %s%% and %s%%\n' \
            "$n" "${#ROWS_OUT[@]}" "$(med_of 1 %.1f)" "$(med_of 2 %.1f)" "$(med_of 3 %.2f)" "${RATIOS% }" \
            "$(med_of 4 %.2f)" "$(med_of 5 %.2f)" "$(med_of 6 %.0f)" "$(med_of 7 %.2f)" "$(med_of 8 %.2f)" \
            "$(med_of 12 %.2f)" "$(med_of 9 %.1f)" "$(med_of 10 %.2f)" "${DURABLE_RATIOS% }" "$(med_of 11 %.2f)" \
            "$(med_of 13 %.2f)" "$(med_of 14 %.2f)" "$(med_of 15 %.0f)" "$(med_of 16 %.0f)"
    fi
done

# DICOM TLS against plain TCP, our node both times, same corpus, 8 associations. A test CA signs
# the node's certificate and the senders' (mutual TLS, as a hospital would run it).
PKI=$WORK/pki; mkdir -p "$PKI"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign -keyout "$PKI/ca.key" -out "$PKI/ca.pem" 2>/dev/null
for who in server client; do
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=bench-$who" \
        -keyout "$PKI/$who.key" -out "$PKI/$who.csr" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n' > "$PKI/$who.ext"
    openssl x509 -req -in "$PKI/$who.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial -days 1 \
        -extfile "$PKI/$who.ext" -out "$PKI/$who.pem" 2>/dev/null
done
TLS_YAML=", tls: { port: 0, cert_file: $PKI/server.pem, key_file: $PKI/server.key, client_ca_file: $PKI/ca.pem }"
n=8
start_node "$TLS_YAML"
C0=$(node_cpu); TP=$(send "$NODE_PORT" ANONYMIZER "$n"); CP=$(echo "$(node_cpu) - $C0" | bc -l)
stop_node
start_node "$TLS_YAML"
C0=$(node_cpu)
TT=$(SEND_TLS="+tls $PKI/client.key $PKI/client.pem +cf $PKI/ca.pem" send "$TLS_PORT" ANONYMIZER "$n")
CT=$(echo "$(node_cpu) - $C0" | bc -l)
stop_node
STORED=$(find "$WORK/node/storage/public" -name '*.dcm' | wc -l)
[ "$STORED" -eq "${#FILES[@]}" ] || { echo "node stored $STORED of ${#FILES[@]} over TLS" >&2; tail "$WORK/node/log" >&2; exit 1; }
printf 'TLS vs plain, %d associations: plain %7.1f inst/s | TLS %7.1f inst/s | ratio %.2f | node CPU/instance plain %.2f ms, TLS %.2f ms\n' \
    "$n" "$(rate "$TP")" "$(rate "$TT")" "$(echo "$TP / $TT" | bc -l)" \
    "$(echo "$CP * 1000 / ${#FILES[@]}" | bc -l)" "$(echo "$CT * 1000 / ${#FILES[@]}" | bc -l)"
