#!/bin/bash
# usage: recover.sh BIN_DIR DATA_DIR [PORT]
# Starts a master on a copy of DATA_DIR (queued_data.sh makes one) and
# prints the seconds until it answers health, the recovery time it logs,
# and its VmRSS (MiB) then; the copy is removed.
BIN=$1; SRC=$2; PORT=${3:-17812}
W=$(mktemp -d -p "$(dirname $SRC)"); cp -a $SRC/. $W
S=$(date +%s.%N)
$BIN/drover-master --listen 127.0.0.1:$PORT --data-dir $W --max-queued 1000000000 --insecure > $W.log 2>&1 &
MP=$!
until $BIN/drover --master http://127.0.0.1:$PORT health >/dev/null 2>&1; do
  kill -0 $MP 2>/dev/null || { cat $W.log; exit 1; }
  sleep 0.02
done
E=$(date +%s.%N)
RSS=$(awk '/VmRSS/ {print int($2/1024)}' /proc/$MP/status)
kill -9 $MP; wait $MP 2>/dev/null
echo "$(echo "$E - $S" | bc) s, $(grep -o 'ms=[0-9]*' $W.log | head -1), rss=$RSS"
rm -rf $W $W.log
