#!/bin/bash
# usage: queued_data.sh BIN_DIR DATA_DIR JOBS [PORT]
# A redb data directory holding JOBS queued prime jobs (Submits of 100,000,
# as drover-bench's recovery workloads), left as a kill -9 leaves it.
BIN=$1; D=$2; N=$3; PORT=${4:-17811}
rm -rf $D; mkdir -p $D
$BIN/drover-master --listen 127.0.0.1:$PORT --data-dir $D --max-queued $N --insecure > $D.log 2>&1 &
MP=$!
until $BIN/drover --master http://127.0.0.1:$PORT health >/dev/null 2>&1; do
  kill -0 $MP 2>/dev/null || { cat $D.log; exit 1; }
  sleep 0.1
done
A=1000003; left=$N
while [ $left -gt 0 ]; do
  n=$(( left < 100000 ? left : 100000 ))
  $BIN/drover --master http://127.0.0.1:$PORT submit prime $A..=$((A+n-1)) > /dev/null || { kill -9 $MP; exit 1; }
  A=$((A+n)); left=$((left-n))
done
kill -9 $MP; wait $MP 2>/dev/null
du -sh $D
