#!/bin/bash
# usage: ab.sh ROUNDS OUT BIN_A BIN_B [bench args]  -- alternating rounds, A then B
N=$1; OUT=$2; A=$3; B=$4; shift 4
: > $OUT
for r in $(seq 1 $N); do
  for side in A B; do
    if [ $side = A ]; then BIN=$A; else BIN=$B; fi
    J=$($BIN/drover-bench --bin-dir $BIN --json "$@" 2>/dev/null)
    echo "$side $(echo "$J" | python3 -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({k:d[k] for k in ['tiny_jobs_per_s','tiny_20k_jobs_per_s','apply_p50_us','apply_p99_us','durable_tiny_jobs_per_s'] if k in d}))")" >> $OUT
  done
done
