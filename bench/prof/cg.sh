#!/bin/bash
# usage: cg.sh BIN_DIR WORKLOAD PREFIX ROLE(master|worker) [bench args]
BIN=$1; W=$2; OUT=$3; ROLE=$4; shift 4
$BIN/drover-bench --bin-dir $BIN --only $W --json "$@" > $OUT.json 2>$OUT.err &
BPID=$!
for i in $(seq 1 200); do C=$(pgrep -f __drover_child | head -1); [ -n "$C" ] && break; sleep 0.05; done
sleep 1.5
if [ $ROLE = master ]; then P=$(pgrep -x drover-master); else P=$(pgrep -x drover-worker | head -1); fi
perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p $P -o $OUT.data -- sleep ${PROF_SECS:-3} 2>/dev/null >/dev/null
wait $BPID
