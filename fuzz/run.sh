#!/usr/bin/env bash
# Runs each cargo-fuzz target of drover for a bounded time.
#
#   bash fuzz/run.sh            # 30 s per target
#   bash fuzz/run.sh 300        # 5 min per target
#   bash fuzz/run.sh 30 job_args
#
# cargo-fuzz needs a nightly compiler (sanitizers): it uses the nightly
# toolchain if rustup has one, else the stable one with RUSTC_BOOTSTRAP=1.
# It installs cargo-fuzz if missing. Artifacts go to target/fuzz (inside the
# workspace's target directory); a crash leaves its input in
# fuzz/artifacts/<target>/ and makes this script exit non-zero.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
secs="${1:-30}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(expand_args job_args child_frames)
fi

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    cargo=(cargo +nightly)
else
    export RUSTC_BOOTSTRAP=1
    cargo=(cargo)
fi
if ! "${cargo[@]}" fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# Seeds: a valid child frame (F(10) and is_prime(17)), a few ranges and
# arguments, so the fuzzer starts from inputs that reach deep.
seed() {
    local dir="fuzz/corpus/$1"
    mkdir -p "$dir"
    printf "$2" > "$dir/seed-$3"
}
# ChildRequest { jobs: [{slot 1, fib, "10"}, {slot 2, prime, "17"}] } in one
# frame: a little-endian length, then the message.
seed child_frames '\x14\x00\x00\x00\x0a\x08\x08\x01\x10\x01\x1a\x0210\x0a\x08\x08\x02\x10\x02\x1a\x0217' 1
seed expand_args '\x032..5\n7\n1..=3' 1
seed expand_args '\xff0..1000' 2
seed job_args '\x0220' 1
seed job_args '\x031112582705942171' 2
seed job_args '\x04500' 3

status=0
for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${secs}s" >&2
    if ! "${cargo[@]}" fuzz run --fuzz-dir fuzz --target-dir target/fuzz "$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=4096 -timeout=10 \
        -print_final_stats=1; then
        echo "fuzz/run.sh: $t failed; see fuzz/artifacts/$t/" >&2
        status=1
    fi
done
exit "$status"
