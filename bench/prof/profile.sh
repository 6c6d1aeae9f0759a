#!/bin/bash
# usage: profile.sh BIN_DIR WORKLOAD(tiny|apply) OUT_PREFIX [bench args...]
BIN=$1; W=$2; OUT=$3; shift 3
$BIN/drover-bench --bin-dir $BIN --only $W --json "$@" > $OUT.json 2>$OUT.err &
BPID=$!
# wait for the workers' children to exist
for i in $(seq 1 200); do
  C=$(pgrep -f __drover_child | head -1)
  [ -n "$C" ] && break; sleep 0.05
done
sleep 1.5   # skip start-up and warm-up
M=$(pgrep -x drover-master); WK=$(pgrep -x drover-worker | tr '\n' ' ')
echo "master=$M workers+children=$WK bench=$BPID" > $OUT.pids
for p in $M $WK $BPID; do echo "$p $(tr '\0' ' ' < /proc/$p/cmdline | cut -c1-60): $(ls /proc/$p/task | tr '\n' ' ')"; done > $OUT.tasks
perf record -e cpu-clock -F 2999 -a -o $OUT.data -- sleep ${PROF_SECS:-6} 2>/dev/null >/dev/null
wait $BPID
