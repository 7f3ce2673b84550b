#!/usr/bin/env bash
# The real-variety measurement of tests/variety.rs, side by side: for each tree (the working tree,
# or each git REF given, checked out in a temporary worktree and built), the shipped profile and the
# RSNA-compatible script (config/default-anonymizer.script) over the same corpus. Prints one
# Markdown table, e.g. the before/after of a fix:
#
#     scripts/variety.sh                 # this tree: profile vs RSNA script
#     scripts/variety.sh main HEAD       # before (main) and after (HEAD), both scripts
#
# The test binary and the corpus come from this tree; each REF contributes its anonymizer binary and
# its config/. Needs what scripts/test.sh installs (dicom3tools, pydicom, pynetdicom, deid-data,
# dicomgenerator).
#
# Each REF's worktree stays (detached) in $VARIETY_TREES (default /tmp/variety-trees) between runs,
# and every tree is built, one after another, into the target folder $VARIETY_TARGET (default
# $VARIETY_TREES/target), never into one that other builds use: cargo gives every checkout of this
# crate the same artifact names, so a build elsewhere could swap the binary being measured. Seed it
# with a copy of a warm target folder to save the first build.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
trees=${VARIETY_TREES:-/tmp/variety-trees}
target=${VARIETY_TARGET:-$trees/target}
mkdir -p "$trees" "$target"
work=$(mktemp -d /tmp/variety.XXXXXX)
logs=$(mktemp -d /tmp/variety-logs.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Build tree $1 and copy its binary to $2 (the next tree's build overwrites it). The crate's
# artifacts have the same names whichever tree built them, and cargo finds them fresh when the last
# build is newer than this tree's files: touch them so that this tree's sources are compiled.
build_binary() {
    find "$1/src" -name '*.rs' -exec touch {} +
    (cd "$1" && CARGO_TARGET_DIR=$target cargo build --quiet --bin dicom-anon-gateway)
    cp "$target/debug/dicom-anon-gateway" "$2"
}

test_binary=$(CARGO_TARGET_DIR=$target cargo test --quiet --test variety --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "variety":
        print(m["executable"])')
[ -x "$test_binary" ] || { echo "could not build tests/variety.rs" >&2; exit 1; }

refs=("$@")
[ ${#refs[@]} -gt 0 ] || refs=(.)
columns=()
for ref in "${refs[@]}"; do
    if [ "$ref" = . ]; then
        tree=$here
        name="working tree"
    else
        tree="$trees/$(printf '%s' "$ref" | tr -c 'A-Za-z0-9_.-' _)"
        if [ -d "$tree" ]; then
            git -C "$tree" checkout --quiet --detach "$(git rev-parse "$ref")"
        else
            git worktree add --quiet --detach "$tree" "$ref"
        fi
        name="$ref ($(git rev-parse --short "$ref"))"
    fi
    bin="$work/bin-${#columns[@]}"
    echo "building $name" >&2
    build_binary "$tree" "$bin"
    for script in profile rsna; do
        json="$work/table-${#columns[@]}-$script.json"
        echo "measuring $name with the $script script" >&2
        VARIETY_BIN=$bin VARIETY_ROOT=$tree VARIETY_SCRIPT=$script VARIETY_MEASURE=1 VARIETY_TABLE=$json \
            "$test_binary" --nocapture --test-threads 1 >"$logs/${#columns[@]}-$script.txt" 2>&1 ||
            { echo "the run failed: $work/log-${#columns[@]}-$script.txt" >&2; tail -30 "$logs/${#columns[@]}-$script.txt" >&2; exit 1; }
        columns+=("$name, $script|$json")
    done
done

python3 - "${columns[@]}" <<'EOF'
import json, sys
cols = [c.split("|", 1) for c in sys.argv[1:]]
tables = [(name, json.load(open(path))) for name, path in cols]
rows = [
    ("files in the corpus (DICOM)", lambda t: f"{t['files']} ({t['dicom_inputs']})"),
    ("stored / quarantined", lambda t: f"{t['stored']} / {sum(t['quarantined'].values())}"),
    ("identifying values searched (found in their input)", lambda t: f"{t['values_searched']} ({t['values_found_in_input']})"),
    ("hard leaks (files)", lambda t: f"{t['hard_leaks']} ({t['hard_leak_files']})"),
    ("planted values left", lambda t: f"{t['planted_left']}"),
    ("adversarial values left (files)", lambda t: f"{t['adversarial_left']} ({t['adversarial_left_files']})"),
    ("name parts / dates left (files)", lambda t: f"{t['soft_leaks']} ({t['soft_leak_files']})"),
    ("new dciodvfy errors (files)", lambda t: f"{t['new_errors']} ({t['new_error_files']})"),
    ("broken references (of checked)", lambda t: f"{t['broken_references']} ({t['references_checked']})"),
    ("coded values changed (files)", lambda t: f"{t['coded_changed']} ({t['coded_changed_files']})"),
    ("valid instances quarantined", lambda t: f"{t['valid_quarantined']}"),
    ("images held: pixels not readable", lambda t: f"{t.get('pixels_held', 'n/a')}"),
    ("dates in the future (files)", lambda t: f"{t['future_dates']} ({t['future_date_files']})"),
    ("patients merged into another's pseudonym", lambda t: f"{t['merged_patients']}"),
]
print("| | " + " | ".join(n for n, _ in tables) + " |")
print("|---|" + "---|" * len(tables))
for label, f in rows:
    print(f"| {label} | " + " | ".join(f(t) for _, t in tables) + " |")
reasons = sorted({r for _, t in tables for r in t["quarantined"]})
for r in reasons:
    print(f"| quarantined: {r} | " + " | ".join(str(t["quarantined"].get(r, 0)) for _, t in tables) + " |")
EOF
echo "per-file findings of each run: $logs" >&2
