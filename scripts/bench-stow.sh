#!/usr/bin/env bash
# STOW-RS throughput, in one run on one corpus:
#  ingest: our node receiving the corpus by C-STORE (DCMTK storescu) against the same node receiving
#          it by STOW-RS (curl posting multipart/related bodies of BATCH instances), and Orthanc with
#          its DICOMweb plugin receiving the very same STOW-RS bodies; over 1 and 4 senders at once.
#          Prints instances/s, the ratios STOW-RS/C-STORE and ours/Orthanc, and CPU per instance.
#  export: our node draining its queue to Orthanc by STOW-RS (export.dicomweb) against draining it
#          to the same Orthanc by C-STORE (export.dicom, bench-export's path).
#   scripts/bench-stow.sh [COUNT] [ROWS] [BATCH]     (default 500 CT, 512x512 16-bit, 50 per request)
# The node reads the first image of each series with OCR on both doors alike; its time is printed.
# Runs inside its own network namespace (only loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
bench_in_netns "$@"
COUNT=${1:-500}
ROWS=${2:-512}
BATCH=${3:-50}
NODE_PID=""; ORTHANC_PID=""
bench_workdir stow NODE_PID ORTHANC_PID
export TCP_NODELAY=1
[ -x /usr/sbin/Orthanc ] && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] ||
    { echo "needs Debian's orthanc and orthanc-dicomweb" >&2; exit 1; }
bench_build
"$TARGET"/release/examples/make-corpus "$WORK/corpus" "$COUNT" "$ROWS" 5 >/dev/null
FILES=("$WORK"/corpus/*.dcm)
BOUNDARY=bench-stow-boundary
CT="multipart/related; type=\"application/dicom\"; boundary=$BOUNDARY"
# The bodies, made once: BATCH instances each.
mkdir -p "$WORK/bodies"
for ((i = 0, b = 0; i < ${#FILES[@]}; i += BATCH, b++)); do
    {
        for f in "${FILES[@]:i:BATCH}"; do
            printf -- '--%s\r\nContent-Type: application/dicom\r\n\r\n' "$BOUNDARY"; cat "$f"; printf '\r\n'
        done
        printf -- '--%s--\r\n' "$BOUNDARY"
    } > "$WORK/bodies/$(printf %05d $b)"
done
BODIES=("$WORK"/bodies/*)
echo "corpus: ${#FILES[@]} files, $(du -sm "$WORK/corpus" | cut -f1) MB, ${#BODIES[@]} STOW-RS bodies of up to $BATCH; $(nproc) cores"
sync

now() { date +%s.%N; }
ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }
HZ=$(getconf CLK_TCK)
ms_per() { echo "scale=2; ($2) * 1000 / $HZ / $1" | bc -l; }

# start_node EXTRA_YAML
start_node() {
    retire "$WORK/node"; mkdir -p "$WORK/node"
    cat > "$WORK/node/config.yaml" <<YAML
project: { name: BENCH, site_id: "972149", script: $PWD/config/default-anonymizer.script }
scp: { ae_title: ANONYMIZER, host: 127.0.0.1, port: 0, max_pdu_length: 65536, max_instance_bytes: 1073741824 }
storage: { dir: $WORK/node/storage, min_free_bytes: 0 }
http: { listen: "127.0.0.1:0" }
logging: { level: warn }
$1
YAML
    bench_start_node "$WORK/node"
}
metrics() { curl -sf --max-time 5 "http://$HTTP_ADDR/metrics"; }
ocr() {
    metrics | awk '$1 == "dicom_anon_pixel_read_seconds_sum" { s = $2 } $1 == "dicom_anon_pixel_read_seconds_count" { c = $2 }
        END { if (c != "") printf "OCR %d images %.2f s", c, s }'
}
stop_node() { kill "$NODE_PID"; wait "$NODE_PID" || true; NODE_PID=""; }

ORTHANC_HTTP=28042; ORTHANC_DICOM=28043
start_orthanc() {
    retire "$WORK/orthanc"; mkdir -p "$WORK/orthanc/db"
    cat > "$WORK/orthanc/config.json" <<JSON
{ "Name": "BENCH", "StorageDirectory": "$WORK/orthanc/db", "IndexDirectory": "$WORK/orthanc/db",
  "HttpPort": $ORTHANC_HTTP, "DicomPort": $ORTHANC_DICOM, "DicomAet": "ORTHANC", "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false, "StorageCompression": false, "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
  "DicomWeb": { "Enable": true, "Root": "/dicom-web/" } }
JSON
    /usr/sbin/Orthanc "$WORK/orthanc/config.json" > "$WORK/orthanc/log" 2>&1 &
    ORTHANC_PID=$!
    until curl -sf "http://127.0.0.1:$ORTHANC_HTTP/system" > /dev/null; do
        kill -0 "$ORTHANC_PID" 2>/dev/null || { echo "Orthanc did not start:" >&2; cat "$WORK/orthanc/log" >&2; exit 1; }
        sleep 0.1
    done
}
stop_orthanc() { kill "$ORTHANC_PID"; wait "$ORTHANC_PID" || true; ORTHANC_PID=""; }

# post URL N: N senders, the bodies dealt round robin, each posted in turn; prints the wall time.
post() {
    local url=$1 n=$2 pids=() t0 t1
    t0=$(now)
    for ((k = 0; k < n; k++)); do
        (
            for ((j = k; j < ${#BODIES[@]}; j += n)); do
                code=$(curl -s -o "$WORK/rsp-$k" -w '%{http_code}' -X POST -H "Content-Type: $CT" \
                    -H 'Accept: application/dicom+json' --data-binary @"${BODIES[$j]}" "$url")
                [ "$code" = 200 ] || { echo "HTTP $code from $url:" >&2; head -c 600 "$WORK/rsp-$k" >&2; exit 1; }
            done
        ) &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    t1=$(now)
    echo "$t1 - $t0" | bc -l
}
# cstore PORT N: N storescu processes, the files dealt round robin; prints the wall time.
cstore() {
    local port=$1 n=$2 pids=() t0 t1
    t0=$(now)
    for ((k = 0; k < n; k++)); do
        local mine=()
        for ((j = k; j < ${#FILES[@]}; j += n)); do mine+=("${FILES[$j]}"); done
        /usr/bin/storescu -aec ANONYMIZER --max-pdu 65536 127.0.0.1 "$port" "${mine[@]}" > "$WORK/send-$k.log" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    t1=$(now)
    if grep -qi "failed\|error" "$WORK"/send-*.log; then cat "$WORK"/send-*.log >&2; exit 1; fi
    echo "$t1 - $t0" | bc -l
}
rate() { echo "scale=1; $COUNT / $1" | bc -l; }

echo
echo "ingest (instances/s | CPU ms per instance)"
for n in 1 4; do
    start_node ""
    c0=$(ticks "$NODE_PID"); t=$(cstore "$NODE_PORT" "$n"); c1=$(ticks "$NODE_PID")
    dimse=$(rate "$t"); dimse_cpu=$(ms_per "$COUNT" "$c1 - $c0"); dimse_ocr=$(ocr); stop_node
    start_node ""
    c0=$(ticks "$NODE_PID"); t=$(post "http://$HTTP_ADDR/dicomweb/studies" "$n"); c1=$(ticks "$NODE_PID")
    stow=$(rate "$t"); stow_cpu=$(ms_per "$COUNT" "$c1 - $c0"); stow_ocr=$(ocr)
    stored=$(find "$WORK/node/storage/public" -name '*.dcm' | wc -l)
    [ "$stored" = "$COUNT" ] || { echo "STOW-RS stored $stored of $COUNT" >&2; exit 1; }
    stop_node
    start_orthanc
    c0=$(ticks "$ORTHANC_PID"); t=$(post "http://127.0.0.1:$ORTHANC_HTTP/dicom-web/studies" "$n"); c1=$(ticks "$ORTHANC_PID")
    orthanc=$(rate "$t"); orthanc_cpu=$(ms_per "$COUNT" "$c1 - $c0"); stop_orthanc
    printf '%d sender(s): C-STORE %s | %s ms (%s); STOW-RS %s | %s ms (%s); Orthanc STOW-RS %s | %s ms\n' \
        "$n" "$dimse" "$dimse_cpu" "$dimse_ocr" "$stow" "$stow_cpu" "$stow_ocr" "$orthanc" "$orthanc_cpu"
    printf '    STOW-RS / C-STORE %.2fx   ours / Orthanc (STOW-RS) %.2fx\n' \
        "$(echo "$stow / $dimse" | bc -l)" "$(echo "$stow / $orthanc" | bc -l)"
done

echo
echo "export to Orthanc (instances/s | node CPU ms per instance)"
# The queue, filled once with the export off; each run starts the node on a copy of it.
start_node ""
cstore "$NODE_PORT" 4 > /dev/null
stop_node
mv "$WORK/node" "$WORK/filled"
drain() {
    local yaml=$1 t0 t1 c0 c1
    start_orthanc
    retire "$WORK/node"; cp -a "$WORK/filled" "$WORK/node"
    printf '%s\n' "$yaml" >> "$WORK/node/config.yaml"
    t0=$(now)
    bench_start_node "$WORK/node"
    c0=$(ticks "$NODE_PID")
    until [ "$(metrics | awk '$1 ~ /^dicom_anon_exports_total\{destination="orthanc",outcome="sent"\}/ { print $2 }')" = "$COUNT" ]; do
        kill -0 "$NODE_PID" 2>/dev/null || { echo "the node stopped:" >&2; cat "$WORK/node/log" >&2; exit 1; }
        sleep 0.05
    done
    t1=$(now); c1=$(ticks "$NODE_PID")
    local held; held=$(curl -s "http://127.0.0.1:$ORTHANC_HTTP/statistics" | python3 -c 'import json,sys; print(json.load(sys.stdin)["CountInstances"])')
    [ "$held" = "$COUNT" ] || { echo "Orthanc holds $held of $COUNT" >&2; exit 1; }
    stop_node; stop_orthanc
    printf '%s %s\n' "$(rate "$(echo "$t1 - $t0" | bc -l)")" "$(ms_per "$COUNT" "$c1 - $c0")"
}
read -r dimse dimse_cpu < <(drain "export: { dicom: [{ name: orthanc, ae_title: ORTHANC, host: 127.0.0.1, port: $ORTHANC_DICOM, associations: 4 }] }")
read -r stow stow_cpu < <(drain "export: { dicomweb: [{ name: orthanc, url: \"http://127.0.0.1:$ORTHANC_HTTP/dicom-web\", batch: $BATCH, requests: 4 }] }")
printf 'C-STORE (4 associations) %s | %s ms; STOW-RS (4 requests of %d) %s | %s ms; STOW-RS / C-STORE %.2fx\n' \
    "$dimse" "$dimse_cpu" "$BATCH" "$stow" "$stow_cpu" "$(echo "$stow / $dimse" | bc -l)"
