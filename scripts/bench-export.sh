#!/usr/bin/env bash
# Export throughput: our node drains its queue of anonymized instances to a DCMTK storescp (C-STORE
# SCU from the durable queue, each instance recorded as sent), against DCMTK storescu sending the
# very same files to the same storescp, in the same run, over 1 and 4 associations. Prints
# instances/s, the ratio ours/storescu and our CPU per instance.
#   scripts/bench-export.sh [COUNT] [ROWS]          (default 500 CT, 512x512 16-bit)
# Runs inside its own network namespace (only loopback), since storescp cannot bind to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
bench_in_netns "$@"
COUNT=${1:-500}
ROWS=${2:-512}
NODE_PID=""; SCP_PID=""
bench_workdir export NODE_PID SCP_PID
export TCP_NODELAY=1
bench_build
"$TARGET"/release/examples/make-corpus "$WORK/corpus" "$COUNT" "$ROWS" 5 >/dev/null
SCP_PORT=11113
now() { date +%s.%N; }
ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }
HZ=$(getconf CLK_TCK)

# config EXPORT_YAML: the node's config, with or without a destination.
config() {
    cat > "$WORK/node/config.yaml" <<YAML
project: { name: BENCH, site_id: "972149", script: $PWD/config/default-anonymizer.script }
scp: { ae_title: ANONYMIZER, host: 127.0.0.1, port: 11112, max_pdu_length: 65536 }
storage: { dir: $WORK/node/storage, min_free_bytes: 0 }
http: { enabled: false }
logging: { level: warn }
$1
YAML
}
start_node() { bench_start_node "$WORK/node"; }
stop_node() { kill "$NODE_PID"; wait "$NODE_PID" || true; NODE_PID=""; }
start_storescp() {
    retire "$WORK/scp"; mkdir -p "$WORK/scp"
    /usr/bin/storescp --fork -aet STORESCP -od "$WORK/scp" --max-pdu 65536 "$SCP_PORT" > "$WORK/scp.log" 2>&1 &
    SCP_PID=$!
    until (exec 3<>/dev/tcp/127.0.0.1/$SCP_PORT) 2>/dev/null; do sleep 0.02; done
}
stop_storescp() { kill "$SCP_PID"; wait "$SCP_PID" 2>/dev/null || true; SCP_PID=""; }
received() { find "$WORK/scp" -type f | wc -l; }

# The queue: ingest the corpus once, with no destination.
mkdir -p "$WORK/node"
config ""
start_node
/usr/bin/storescu -aec ANONYMIZER 127.0.0.1 11112 "$WORK"/corpus/*.dcm > "$WORK/ingest.log" 2>&1
stop_node
mapfile -t FILES < <(find "$WORK/node/storage/public" -name '*.dcm' | sort)
[ "${#FILES[@]}" -eq "$COUNT" ] || { echo "the node stored ${#FILES[@]} of $COUNT" >&2; exit 1; }
echo "queue: ${#FILES[@]} anonymized files, $(du -sm "$WORK/node/storage/public" | cut -f1) MB; $(nproc) cores"
cat "${FILES[@]}" > /dev/null; sync

for n in 1 4; do
    # DCMTK: n storescu processes, the files dealt round robin.
    start_storescp
    t0=$(now); pids=()
    for ((k = 0; k < n; k++)); do
        mine=(); for ((j = k; j < ${#FILES[@]}; j += n)); do mine+=("${FILES[$j]}"); done
        /usr/bin/storescu -aec STORESCP --max-pdu 65536 127.0.0.1 "$SCP_PORT" "${mine[@]}" > "$WORK/send-$k.log" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    TS=$(echo "$(now) - $t0" | bc -l)
    [ "$(received)" -eq "$COUNT" ] || { echo "storescp received $(received) from storescu" >&2; exit 1; }
    stop_storescp

    # Ours: a fresh destination (nothing sent yet) drains the same queue over n associations.
    start_storescp
    config "export: { dicom: [ { name: bench$n, ae_title: STORESCP, host: 127.0.0.1, port: $SCP_PORT, associations: $n } ] }"
    t0=$(now)
    start_node
    c0=$(ticks "$NODE_PID")
    until [ "$(received)" -ge "$COUNT" ]; do sleep 0.01; done
    TO=$(echo "$(now) - $t0" | bc -l)
    CPU=$(( $(ticks "$NODE_PID") - c0 ))
    stop_node
    SENT=$("$BIN" queue status --config "$WORK/node/config.yaml" | grep "^destination bench$n " | grep -o "sent [0-9]*" || true)
    stop_storescp
    printf '%d association(s): storescu %7.1f inst/s | ours (from the durable queue, recorded) %7.1f inst/s | ratio %.2f | our CPU %.2f ms/instance | %s\n' \
        "$n" "$(echo "$COUNT / $TS" | bc -l)" "$(echo "$COUNT / $TO" | bc -l)" "$(echo "$TS / $TO" | bc -l)" \
        "$(echo "$CPU * 1000 / $HZ / $COUNT" | bc -l)" "$SENT"
done
