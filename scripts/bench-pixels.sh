#!/usr/bin/env bash
# The burned-in text stage, measured (README, "Benchmarks"):
#   scripts/bench-pixels.sh [US_COUNT] [CR_COUNT] [CT_COUNT]     (default 40 US, 4 CR, 300 CT)
# 1. ms per frame, offline, one OCR worker: 640x480 RGB ultrasound and 2000x2500 16-bit radiographs,
#    each with the patient's name, ID and birth date drawn at three sizes (scripts/make-pixel-corpus.py);
# 2. an at-risk stream (the ultrasound) over 4 associations to the node: instances/s;
# 3. CT ingest (512x512, one series, no text) alone, then with the ultrasound stream beside it;
# 4. detection: planted words a plain Tesseract pass finds in the images as they are (what OCR
#    redactors such as presidio-image-redactor run) against what ours leaves readable, and the
#    pixels ours masked outside the planted words.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
US=${1:-40}
CR=${2:-4}
CT=${3:-300}
bench_workdir pixels NODE_PID
[ -x /usr/bin/tesseract ] || { echo "tesseract missing: apt-get install tesseract-ocr tesseract-ocr-eng" >&2; exit 1; }
python3 -c 'import pydicom, PIL' 2>/dev/null || python3 -m pip install --quiet pydicom pillow
# BIN=path runs an existing build instead of building the release binary.
if [ -z "${BIN:-}" ]; then bench_build; fi
python3 scripts/make-pixel-corpus.py "$WORK/corpus" "$US" "$CR" "$CT"
echo "corpus: $US US 640x480 RGB, $CR CR 2000x2500 16-bit (text drawn), $CT CT 512x512 (no text); $(nproc) cores"

now() { date +%s.%N; }
config() {
    cat > "$1" <<YAML
project: { name: BENCH, site_id: "972149", pixels: { workers: 1 } }
scp: { ae_title: ANONYMIZER, host: 127.0.0.1, port: 0, max_pdu_length: 65536 }
storage: { dir: $2, min_free_bytes: 0 }
logging: { level: warn }
http: { enabled: false }
YAML
}

# 1. Offline, per kind: wall time and CPU (ours and Tesseract's, children included) per frame.
for kind in us cr; do
    n=$(ls "$WORK/corpus/$kind" | wc -l)
    config "$WORK/$kind.yaml" "$WORK/off-$kind"
    t0=$(now)
    /usr/bin/time -f "%U %S" -o "$WORK/$kind.cpu" "$BIN" anonymize --config "$WORK/$kind.yaml" --out "$WORK/out-$kind" "$WORK/corpus/$kind" > "$WORK/$kind.log"
    t1=$(now)
    read -r user sys < "$WORK/$kind.cpu"
    printf "offline %s: %d frames, %.0f ms per frame, CPU %.0f ms per frame (OCR included)\n" "$kind" "$n" \
        "$(echo "($t1 - $t0) * 1000 / $n" | bc -l)" "$(echo "($user + $sys) * 1000 / $n" | bc -l)"
done

start_node() {
    retire "$WORK/node"; mkdir -p "$WORK/node"
    config "$WORK/node/config.yaml" "$WORK/node/storage"
    bench_start_node "$WORK/node"
}
stop_node() { kill "$NODE_PID"; wait "$NODE_PID" || true; NODE_PID=""; }
send() { TCP_NODELAY=1 /usr/bin/storescu -aec ANONYMIZER 127.0.0.1 "$NODE_PORT" "$@" > /dev/null 2>&1; }

# 2. The ultrasound over 4 associations.
start_node
mapfile -t files < <(ls "$WORK"/corpus/us/*.dcm)
t0=$(now)
for a in 0 1 2 3; do
    send $(for ((i = a; i < ${#files[@]}; i += 4)); do echo "${files[$i]}"; done) &
done
wait %2 %3 %4 %5 2>/dev/null || wait
t1=$(now)
stored=$(find "$WORK/node/storage/public" -name '*.dcm' | wc -l)
printf "at-risk stream, 4 associations: %d of %d stored, %.2f instances/s\n" "$stored" "$US" "$(echo "$stored / ($t1 - $t0)" | bc -l)"
stop_node

# 3. CT alone, then CT with the ultrasound stream beside it (two associations, sent in a loop).
start_node
t0=$(now); send "$WORK"/corpus/ct/*.dcm; t1=$(now)
alone=$(echo "$CT / ($t1 - $t0)" | bc -l)
stop_node
start_node
( while true; do send "$WORK"/corpus/us/*.dcm; done ) & US_LOOP=$!
( while true; do send "$WORK"/corpus/us/*.dcm; done ) & US_LOOP2=$!
sleep 2
t0=$(now); send "$WORK"/corpus/ct/*.dcm; t1=$(now)
kill "$US_LOOP" "$US_LOOP2"; wait "$US_LOOP" "$US_LOOP2" 2>/dev/null || true
beside=$(echo "$CT / ($t1 - $t0)" | bc -l)
stop_node
printf "CT ingest: alone %.0f instances/s, with an ultrasound stream beside it %.0f (%.2fx)\n" "$alone" "$beside" "$(echo "$beside / $alone" | bc -l)"

# 4. Detection, against a plain Tesseract pass over the images as they are.
python3 - "$WORK" <<'PY'
import json, subprocess, sys
from pathlib import Path
import pydicom
work = Path(sys.argv[1])
truth = json.loads((work / "corpus/truth.json").read_text())

def norm(s):
    return "".join(c for c in s.upper() if c.isalnum())

def ocr(gray, w, h, strong):
    out = ""
    images = [(gray, w, h)]
    if strong:
        big = bytes(gray[(y // 2) * w + x // 2] for y in range(h * 2) for x in range(w * 2)) if w <= 1024 else gray
        bw, bh = (w * 2, h * 2) if w <= 1024 else (w, h)
        images = [(big, bw, bh), (bytes(255 - v for v in big), bw, bh)]
    for px, iw, ih in images:
        pgm = b"P5\n%d %d\n255\n" % (iw, ih) + px
        args = ["tesseract", "stdin", "stdout"] + (["--psm", "11"] if strong else [])
        out += subprocess.run(args, input=pgm, capture_output=True).stdout.decode(errors="replace") + "\n"
    return norm(out)

def gray(ds):
    a = ds.pixel_array if hasattr(ds, "pixel_array") else None
    raw = ds.PixelData
    w, h = ds.Columns, ds.Rows
    if ds.SamplesPerPixel == 3:
        return bytes(sum(raw[i * 3:i * 3 + 3]) // 3 for i in range(w * h)), w, h
    vals = [int.from_bytes(raw[i * 2:i * 2 + 2], "little") & 0xFFF for i in range(w * h)]
    top = max(vals) or 1
    return bytes(v * 255 // top for v in vals), w, h

outputs = {}
for kind in ("us", "cr"):
    for p in (work / f"out-{kind}").rglob("*.dcm"):
        ds = pydicom.dcmread(p)
        outputs[(kind, int(ds.InstanceNumber))] = ds
stats = {"planted": 0, "peer_found": 0, "ours_left": 0, "masked_outside": 0, "pixels": 0}
for path, t in truth.items():
    kind = "us" if "/us/" in path else "cr"
    src = pydicom.dcmread(path)
    out = outputs.get((kind, int(src.InstanceNumber)))
    g, w, h = gray(src)
    peer = ocr(g, w, h, strong=False)
    left = ocr(*gray(out), strong=True) if out is not None else ""
    for word in t["words"]:
        stats["planted"] += 1
        stats["peer_found"] += norm(word["text"]) in peer
        stats["ours_left"] += out is None or norm(word["text"]) in left
    if out is not None:
        a, b = src.PixelData, out.PixelData
        step = 3 if src.SamplesPerPixel == 3 else 2
        boxes = [wd["box"] for wd in t["words"]]
        for i in range(0, min(len(a), len(b)), step * 7):
            if a[i:i + step] != b[i:i + step]:
                x, y = (i // step) % w, (i // step) // w
                inside = any(bx - 12 <= x < bx + bw + 12 and by - 12 <= y < by + bh + 12 for bx, by, bw, bh in boxes)
                stats["masked_outside"] += not inside
            stats["pixels"] += 1
print(f"detection: {stats['planted']} planted words; a plain Tesseract pass finds {stats['peer_found']} "
      f"({stats['planted'] - stats['peer_found']} missed); ours leaves {stats['ours_left']} readable; "
      f"pixels masked outside the planted words: {stats['masked_outside']} of {stats['pixels']} sampled (1 in 7)")
PY
