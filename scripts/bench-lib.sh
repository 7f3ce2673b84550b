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
