#!/usr/bin/env bash
# Retrieve throughput: DCMTK dcmqrscp as the PACS holds COUNT instances in 5 studies. (a) DCMTK
# movescu moves each study to a DCMTK storescp (no anonymization, no fsync), one study after the
# other; (b) our `retrieve` finds them with C-FIND and moves them to the running node, which
# anonymizes and commits each durably, 1 and then 2 moves at a time. Same PACS, same run. Prints
# instances/s, the ratio ours/DCMTK and the node's CPU per instance.
#   scripts/bench-retrieve.sh [COUNT] [ROWS]        (default 500 CT, 512x512 16-bit)
# Runs inside its own network namespace (only loopback): DCMTK cannot bind to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
bench_in_netns "$@"
COUNT=${1:-500}
ROWS=${2:-512}
NODE_PID=""; SCP_PID=""; PACS_PID=""
bench_workdir retrieve NODE_PID SCP_PID PACS_PID
export TCP_NODELAY=1
bench_build
"$TARGET"/release/examples/make-corpus "$WORK/corpus" "$COUNT" "$ROWS" 5 >/dev/null
now() { date +%s.%N; }
ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }
HZ=$(getconf CLK_TCK)
wait_port() { until (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; do sleep 0.02; done; }

# The PACS, knowing both receivers as move destinations.
mkdir -p "$WORK/pacs/db"
cat > "$WORK/pacs/dcmqrscp.cfg" <<CFG
NetworkTCPPort = 11200
MaxPDUSize = 65536
MaxAssociations = 16
HostTable BEGIN
node = (ANONYMIZER, 127.0.0.1, 11112)
dcmtk = (STORESCP, 127.0.0.1, 11113)
HostTable END
VendorTable BEGIN
VendorTable END
AETable BEGIN
PACS $WORK/pacs/db RW (200, 4096mb) ANY
AETable END
CFG
/usr/bin/dcmqrscp -c "$WORK/pacs/dcmqrscp.cfg" > "$WORK/pacs.log" 2>&1 &
PACS_PID=$!
wait_port 11200
/usr/bin/storescu -aec PACS 127.0.0.1 11200 "$WORK"/corpus/*.dcm > "$WORK/fill.log" 2>&1
mapfile -t STUDIES < <(/usr/bin/findscu -S -k QueryRetrieveLevel=STUDY -k StudyInstanceUID -aec PACS 127.0.0.1 11200 2>&1 \
    | grep -ao '(0020,000d) UI \[[0-9.]*' | sed 's/.*\[//')
echo "PACS: $COUNT instances in ${#STUDIES[@]} studies, $(du -sm "$WORK/corpus" | cut -f1) MB; $(nproc) cores"
sync

# DCMTK: movescu, one study after the other, to storescp.
mkdir -p "$WORK/scp"
/usr/bin/storescp --fork -aet STORESCP -od "$WORK/scp" --max-pdu 65536 11113 > "$WORK/scp.log" 2>&1 &
SCP_PID=$!
wait_port 11113
t0=$(now)
for uid in "${STUDIES[@]}"; do
    /usr/bin/movescu -S -aem STORESCP -aec PACS -k QueryRetrieveLevel=STUDY -k StudyInstanceUID="$uid" 127.0.0.1 11200 >> "$WORK/move.log" 2>&1
done
TD=$(echo "$(now) - $t0" | bc -l)
GOT=$(find "$WORK/scp" -type f | wc -l)
kill "$SCP_PID"; wait "$SCP_PID" 2>/dev/null || true; SCP_PID=""
[ "$GOT" -eq "$COUNT" ] || { echo "storescp received $GOT of $COUNT" >&2; exit 1; }
printf 'DCMTK movescu -> storescp (1 move at a time): %7.1f inst/s\n' "$(echo "$COUNT / $TD" | bc -l)"

for moves in 1 2; do
    retire "$WORK/node"; mkdir -p "$WORK/node"
    cat > "$WORK/node/config.yaml" <<YAML
project: { name: BENCH, site_id: "972149", script: $PWD/config/default-anonymizer.script }
scp: { ae_title: ANONYMIZER, host: 127.0.0.1, port: 11112, max_pdu_length: 65536 }
storage: { dir: $WORK/node/storage, min_free_bytes: 0 }
http: { enabled: false }
logging: { level: warn }
pacs: [ { name: pacs, ae_title: PACS, host: 127.0.0.1, port: 11200 } ]
YAML
    bench_start_node "$WORK/node"
    c0=$(ticks "$NODE_PID")
    t0=$(now)
    "$BIN" retrieve --config "$WORK/node/config.yaml" --from pacs --study-date 19000101- --moves "$moves" \
        --csv "$WORK/report.csv" > "$WORK/retrieve.out" 2> "$WORK/retrieve.err"
    TO=$(echo "$(now) - $t0" | bc -l)
    CPU=$(( $(ticks "$NODE_PID") - c0 ))
    kill "$NODE_PID"; wait "$NODE_PID" || true; NODE_PID=""
    STORED=$(find "$WORK/node/storage/public" -name '*.dcm' | wc -l)
    [ "$STORED" -eq "$COUNT" ] || { echo "the node stored $STORED of $COUNT" >&2; cat "$WORK/retrieve.out" >&2; exit 1; }
    printf 'ours, %d move(s) at a time (C-FIND + C-MOVE, anonymized, fsync): %7.1f inst/s | ratio %.2f | node CPU %.2f ms/instance\n' \
        "$moves" "$(echo "$COUNT / $TO" | bc -l)" "$(echo "$TD / $TO" | bc -l)" "$(echo "$CPU * 1000 / $HZ / $COUNT" | bc -l)"
done
