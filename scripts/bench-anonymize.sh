#!/usr/bin/env bash
# Offline anonymization throughput: our `anonymize` command against DCMTK dcmodify doing comparable
# edits (erase private tags, modify ~20 attributes, regenerate UIDs) on a copy, and against `cp -r`
# of the corpus then `sync` (copying the bytes durably: the floor any tool pays), same corpus, same run.
#   scripts/bench-anonymize.sh [COUNT] [ROWS]      (default: 1000 CT instances, 512x512 16-bit)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
COUNT=${1:-1000}
ROWS=${2:-512}
bench_workdir anonymize
[ -x /usr/bin/dcmodify ] || { echo "dcmodify missing: apt-get install dcmtk" >&2; exit 1; }

bench_build bench-engine
"$TARGET"/release/examples/make-corpus "$WORK/corpus" "$COUNT" "$ROWS" 10 >/dev/null
SIZE=$(du -sm "$WORK/corpus" | cut -f1)
echo "corpus: $COUNT CT instances, ${ROWS}x${ROWS} 16-bit, ${SIZE} MB; $(nproc) cores"

cat > "$WORK/config.yaml" <<YAML
project:
  name: BENCH
  site_id: "972149"
  script: $PWD/config/default-anonymizer.script
storage:
  dir: $WORK/storage
logging:
  level: warn
YAML

now() { date +%s.%N; }
# Warm the page cache so both tools read from memory, and write back the corpus so that neither
# tool pays for flushing it.
cat "$WORK"/corpus/*.dcm > /dev/null
sync

t0=$(now)
/usr/bin/time -f "%M" -o "$WORK/rss" "$BIN" anonymize --config "$WORK/config.yaml" --out "$WORK/out" "$WORK/corpus" > "$WORK/ours.log"
t1=$(now)
OURS=$(echo "$t1 - $t0" | bc -l)
OUT_COUNT=$(find "$WORK/out" -name '*.dcm' | wc -l)
[ "$OUT_COUNT" -eq "$COUNT" ] || { echo "ours wrote $OUT_COUNT of $COUNT files" >&2; cat "$WORK/ours.log"; exit 1; }

# The floor: the same bytes copied and made durable, nothing read into memory or changed.
t0=$(now)
cp -r "$WORK/corpus" "$WORK/copied"
sync
t1=$(now)
COPY=$(echo "$t1 - $t0" | bc -l)

cp -r "$WORK/corpus" "$WORK/dcmodify"
sync
MODS=()
for kv in "(0010,0010)=ANON" "(0010,0020)=ANON" "(0010,0030)=" "(0008,0050)=" "(0008,0090)=" "(0020,0010)=" \
          "(0008,0020)=20000101" "(0008,0021)=20000101" "(0008,0022)=20000101" "(0008,0023)=20000101" \
          "(0010,1010)=045Y" "(0012,0062)=YES" "(0012,0063)=dcmodify"; do MODS+=(-m "$kv"); done
for tag in "(0008,0080)" "(0008,0081)" "(0008,1010)" "(0008,1050)" "(0008,1070)" "(0010,1000)" "(0010,1040)" \
           "(0018,1000)" "(0020,4000)"; do MODS+=(-ea "$tag"); done
t0=$(now)
find "$WORK/dcmodify" -name '*.dcm' -print0 | xargs -0 -n 250 -P "$(nproc)" /usr/bin/dcmodify -nb -q -imt -ep -gst -gse -gin "${MODS[@]}"
t1=$(now)
sync
t2=$(now)
THEIRS=$(echo "$t1 - $t0" | bc -l)
THEIRS_DURABLE=$(echo "$t2 - $t0" | bc -l)

"$TARGET"/release/examples/bench-engine "$(ls "$WORK"/corpus/*.dcm | head -1)" 2000
printf 'ours (anonymize, %s cores, durable at exit):  %6.2f s  %7.1f instances/s  peak RSS %s MB\n' \
    "$(nproc)" "$OURS" "$(echo "$COUNT / $OURS" | bc -l)" "$(( $(cat "$WORK/rss") / 1024 ))"
printf 'dcmodify (%s processes, left in page cache):  %6.2f s  %7.1f instances/s\n' \
    "$(nproc)" "$THEIRS" "$(echo "$COUNT / $THEIRS" | bc -l)"
printf 'dcmodify + sync (durable, like ours):         %6.2f s  %7.1f instances/s\n' \
    "$THEIRS_DURABLE" "$(echo "$COUNT / $THEIRS_DURABLE" | bc -l)"
printf 'cp -r + sync (the bytes copied, durable):      %6.2f s  %7.1f instances/s\n' \
    "$COPY" "$(echo "$COUNT / $COPY" | bc -l)"
printf 'ratio ours/(cp -r + sync): %.2fx\n' "$(echo "$COPY / $OURS" | bc -l)"
printf 'ratio ours/dcmodify: %.2fx durable vs durable, %.2fx durable vs page cache\n' \
    "$(echo "$THEIRS_DURABLE / $OURS" | bc -l)" "$(echo "$THEIRS / $OURS" | bc -l)"
