#!/bin/bash
BIN=$1; OUT=$2
$BIN/drover-bench --bin-dir $BIN --only apply --json --runs 1 --round-trips 3000 > $OUT.json 2>$OUT.err &
BPID=$!
for i in $(seq 1 200); do C=$(pgrep -f __drover_child | head -1); [ -n "$C" ] && break; sleep 0.05; done
sleep 2
ARGS=""
ARGS="-p $(echo $(pgrep -x drover-master) $(pgrep -x drover-worker) $(pgrep -x drover-bench) | tr ' ' ,)"
for p in $(pgrep -x drover-master) $(pgrep -x drover-worker) $(pgrep -x drover-bench); do echo "$p $(tr '\0' ' ' < /proc/$p/cmdline | cut -c1-50): $(ls /proc/$p/task | tr '\n' ' ')"; done > $OUT.tasks
timeout 1 perf trace -e "writev,write,read,recvfrom,sendto" $ARGS -o $OUT.trace 2>/dev/null
wait $BPID
