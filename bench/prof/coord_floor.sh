#!/bin/bash
# usage: coord_floor.sh BIN_DIR STORE(redb|memory) [N]
# Starts a master of BIN_DIR on its own and runs the coord_floor example
# (cargo build --release -p drover-bench --example coord_floor) against it.
BIN=$1; STORE=$2; N=${3:-1000}
D=$(mktemp -d /tmp/coordfloor-XXXX)
if [ $STORE = redb ]; then A="--store redb --data-dir $D/data"; else A="--store memory"; fi
$BIN/drover-master --listen 127.0.0.1:0 $A > $D/out 2> $D/err &
MP=$!
for i in $(seq 1 100); do grep -q 127.0.0.1 $D/out 2>/dev/null && break; sleep 0.05; done
ADDR=$(grep -o '127.0.0.1:[0-9]*' $D/out | head -1)
echo "$STORE ($BIN): $($(dirname $0)/../../target/release/examples/coord_floor http://$ADDR $N)"
kill $MP; wait $MP 2>/dev/null; rm -rf $D
