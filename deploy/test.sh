#!/usr/bin/env bash
# End-to-end test of the compose deployment on a real Docker engine.
#
#   deploy/test.sh
#
# 0. checks deploy/docker-compose.ha.yml with `compose config` (two masters
#    on PostgreSQL; no PostgreSQL image can be pulled here, so it is not run);
# 1. builds the image (deploy/build-image.sh) and starts a master and 3
#    workers from deploy/docker-compose.yml; waits for health;
# 2. maps 300 fib/prime/sleep jobs through the cli service: all results,
#    correct, in order; status shows 3 workers on 3 container hosts, each of
#    which ran jobs;
# 3. docker-kills a worker in the middle of a map of long sleeps: the map
#    completes with every result;
# 4. disconnects a worker from the network for longer than the lease, then
#    reconnects it: its jobs ran elsewhere, each result recorded once, and it
#    serves again;
# 5. kills and restarts the master in the middle of a batch, with its volume:
#    nothing is lost, the workers reconnect by themselves (PENDING until the
#    master has a durable store, i.e. `drover-master --store`);
# 6. a second compose project on its own network (the worker-only compose
#    file) joins the master by address, across networks, and runs jobs.
#
# Prints PASS/FAIL (or PENDING) per check and exits non-zero on any failure.
# Always removes what it started (both projects, their volumes and networks,
# and the image it built), also on failure or interruption. Bounded in time:
# every wait polls with a deadline, and the whole run is under `timeout`.
#
# Environment:
#   DROVER_TEST_TIMEOUT  overall limit in seconds (default 1800: it includes
#                        building the static binaries, 10 min from scratch on a
#                        busy 2-core machine)
#   DROVER_IMAGE         use/build this image tag instead of a throwaway one
#                        (then it is not removed afterwards)
#   DROVER_TEST_SKIP_BUILD=1  use DROVER_IMAGE as it is; do not build
#   DROVER_TEST_KEEP=1   leave the containers running (for debugging)
#
# Needs docker, `docker compose` or docker-compose (1.28+), python3, cargo.
set -uo pipefail

if [[ -z "${_DROVER_E2E_INNER:-}" ]]; then
  export _DROVER_E2E_INNER=1
  # The whole run is bounded. On expiry the script gets SIGTERM (and tears
  # down); SIGKILL follows if tearing down hangs.
  exec timeout --kill-after=90 "${DROVER_TEST_TIMEOUT:-1800}" bash "$0" "$@"
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
started=$SECONDS

# ---------------------------------------------------------------- settings

# The caller's DROVER_* variables (e.g. a DROVER_MASTER for a host CLI) must
# not leak into the containers; keep only the test's own.
user_image="${DROVER_IMAGE:-}"
skip_build="${DROVER_TEST_SKIP_BUILD:-0}"
keep="${DROVER_TEST_KEEP:-0}"
limit="${DROVER_TEST_TIMEOUT:-1800}"
for v in $(compgen -e | grep '^DROVER_' || true); do unset "$v"; done

suffix="$$-$RANDOM"
p1="drover-e2e-$suffix"      # the master's "host"
p2="drover-e2e-$suffix-w"    # a second "host": workers only
if [[ -n "$user_image" ]]; then
  image="$user_image"
  own_image=0
else
  image="drover-e2e:$suffix"
  own_image=1
fi
if [[ "$skip_build" == 1 && -z "$user_image" ]]; then
  echo "DROVER_TEST_SKIP_BUILD=1 needs DROVER_IMAGE" >&2
  exit 2
fi

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  echo "neither \`docker compose\` nor docker-compose is installed" >&2
  exit 2
fi
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/drover-e2e.XXXXXX")"
check="$here/test_check.py"

# Configuration of both projects (see docker-compose.yml): a short lease so
# that the partition step is quick, one process per worker, few IO slots so
# that sleep jobs spread over the workers.
export DROVER_IMAGE="$image"
export DROVER_LEASE=3s
export DROVER_PROCESSES=1
export DROVER_IO_SLOTS=4
export DROVER_GRACE=5s

# Where the second project's worker reaches the master: the master's port is
# published on the address that `host-gateway` names inside containers (the
# default bridge's gateway; 127.0.0.1 is not reachable from containers), on
# an ephemeral port.
gateway="$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' 2>/dev/null)"
if [[ -z "$gateway" ]] && command -v ip >/dev/null; then
  gateway="$(ip -4 -o addr show docker0 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -1)"
fi
[[ -n "$gateway" ]] || gateway=0.0.0.0
export DROVER_PUBLISH="$gateway:"

# The second project reaches the master through `master-host`; this override
# maps that name to the Docker host, as a real second host's DNS would name
# the master's host.
cat >"$work/worker-override.yml" <<'EOF'
services:
  worker:
    extra_hosts: ["master-host:host-gateway"]
  cli:
    extra_hosts: ["master-host:host-gateway"]
EOF

c1() { "${compose[@]}" -p "$p1" -f "$here/docker-compose.yml" "$@"; }
c2() {
  DROVER_MASTER="${master_via_host:-http://master-host:50051}" \
    "${compose[@]}" -p "$p2" -f "$here/docker-compose.worker.yml" -f "$work/worker-override.yml" "$@"
}

# ---------------------------------------------------------------- reporting

passed=0
failed=0
pending=0
pass() { passed=$((passed + 1)); printf 'PASS     %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL     %s\n' "$*"; }
pend() { pending=$((pending + 1)); printf 'PENDING  %s\n' "$*"; }
info() { printf '         %s\n' "$*"; }
step() { printf '\n== step %s (%ds)\n' "$*" $((SECONDS - started)); }

teardown() {
  local rc=$?
  trap - EXIT INT TERM
  if ((failed > 0)) || ((rc != 0)); then
    echo
    echo "== logs (last 40 lines per container)"
    for p in c1 c2; do
      $p logs --no-color --tail 40 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' || true
    done
  fi
  if [[ "$keep" == 1 ]]; then
    echo "DROVER_TEST_KEEP=1: left running: projects $p1 and $p2"
  else
    c2 down -v -t 5 --remove-orphans >/dev/null 2>&1 || true
    c1 down -v -t 5 --remove-orphans >/dev/null 2>&1 || true
    ((own_image)) && docker rmi "$image" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  echo
  echo "== $passed passed, $failed failed, $pending pending; $((SECONDS - started))s"
  if ((rc == 0 && failed > 0)); then rc=1; fi
  exit "$rc"
}
trap teardown EXIT
trap 'fail "interrupted, or over the time limit (DROVER_TEST_TIMEOUT=${limit}s)"; exit 124' INT TERM

# ---------------------------------------------------------------- helpers

# Polls `cond` (a command) every 0.5 s until it succeeds or `secs` pass.
wait_for() {
  local secs=$1
  shift
  local deadline=$((SECONDS + secs))
  until "$@"; do
    ((SECONDS >= deadline)) && return 1
    sleep 0.5
  done
}

master_id() { c1 ps -q master 2>/dev/null | head -1; }

# The status document, straight from the master's container (fast: no new
# container per poll).
status() {
  docker exec "$(master_id)" /drover --master http://127.0.0.1:50051 --output json status \
    >"$work/status.json" 2>/dev/null
}
# Evaluates a Python expression over the last status (s, w(host)).
sq() { python3 "$check" status "$work/status.json" "$1"; }
# Status refreshed, then the expression; false if the master does not answer.
sqnow() { status && sq "$1"; }
# True when the expression is true in a fresh status.
until_status() { [[ "$(sqnow "$1" 2>/dev/null)" == True ]]; }

hostname_of() { docker inspect -f '{{.Config.Hostname}}' "$1"; }
worker_ids() { c1 ps -q worker 2>/dev/null; }
worker_hosts() { for id in $(worker_ids); do hostname_of "$id"; done | sort; }

# cli NAME ARGS...: runs the cli service of project 1; stdout to NAME.json.
cli() {
  local name=$1
  shift
  timeout 150 "${compose[@]}" -p "$p1" -f "$here/docker-compose.yml" \
    run --rm -T cli --output json "$@" >"$work/$name.json" 2>"$work/$name.err"
}
cli_err() { tail -3 "$work/$1.err" | tr '\n' ' '; }

# Waits for a background job with a deadline; its exit status, or 124.
wait_pid() {
  local pid=$1 secs=$2
  local deadline=$((SECONDS + secs))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      kill "$pid" 2>/dev/null
      wait "$pid" 2>/dev/null
      return 124
    fi
    sleep 0.5
  done
  wait "$pid"
}

# Checks a map's JSON results: map_ok NAME KIND ARGS... [--lost NAME].
map_ok() {
  local name=$1
  shift
  python3 "$check" map "$work/$name.json" "$@"
}

repeat() { local n=$1 v=$2; for ((i = 0; i < n; i++)); do printf '%s ' "$v"; done; }

echo "drover e2e: compose projects $p1 and $p2, image $image, ${compose[*]}"

# ---------------------------------------------------------------- step 0
# The high-availability variant needs a PostgreSQL image, which cannot be
# pulled here: its file is checked, not run (the HA tests run PostgreSQL
# from Debian's packages on the host: tests/tests/ha.rs).
step "0: docker-compose.ha.yml"
if ha_config="$("${compose[@]}" -f "$here/docker-compose.ha.yml" config 2>&1)"; then
  masters_named="$(grep -c 'DROVER_MASTER: http://master-a:50051,http://master-b:50051' <<<"$ha_config")"
  stores="$(grep -c 'DROVER_STORE: postgres://' <<<"$ha_config")"
  if [[ "$masters_named" == 2 && "$stores" == 2 ]]; then
    pass "step 0: docker-compose.ha.yml is valid: two masters on PostgreSQL, worker and cli name both"
  else
    fail "step 0: docker-compose.ha.yml: $stores masters on postgres://, $masters_named services naming both masters"
  fi
else
  fail "step 0: docker-compose.ha.yml does not parse: $ha_config"
fi

# ---------------------------------------------------------------- step 1
step "1: build the image, start a master and 3 workers"

if [[ "$skip_build" == 1 ]]; then
  info "DROVER_TEST_SKIP_BUILD=1: using $image as it is"
elif "$here/build-image.sh" >"$work/build.log" 2>&1; then
  info "deploy/build-image.sh: static binaries and image built in $((SECONDS - started))s"
else
  tail -30 "$work/build.log"
  fail "step 1: deploy/build-image.sh failed"
  exit 1
fi
if ! docker image inspect "$image" >/dev/null 2>&1; then
  fail "step 1: no image $image"
  exit 1
fi
user="$(docker image inspect -f '{{.Config.User}}' "$image")"
size="$(docker image inspect -f '{{.Size}}' "$image")"
if [[ "$user" == 65532* ]]; then
  pass "step 1: image $image, $((size / 1000000)) MB, runs as uid $user"
else
  fail "step 1: image runs as user '$user', expected 65532"
fi

if ! c1 up -d --scale worker=3 >"$work/up.log" 2>&1; then
  tail -20 "$work/up.log"
  fail "step 1: compose up failed"
  exit 1
fi
t0=$SECONDS
if wait_for 60 bash -c "[[ \$(docker inspect -f '{{.State.Health.Status}}' $(master_id)) == healthy ]]"; then
  pass "step 1: master healthy (compose healthcheck \`drover health\`) after $((SECONDS - t0))s"
else
  fail "step 1: master not healthy within 60s"
  exit 1
fi
if wait_for 30 until_status 'len(s["workers"]) == 3'; then
  pass "step 1: 3 workers connected to master:50051 by service name"
else
  fail "step 1: workers connected: $(sq 'len(s["workers"])' 2>/dev/null)"
  exit 1
fi
master_port="$(c1 port master 50051 | tail -1 | sed 's/.*://')"
info "master published on $gateway:$master_port"

# ---------------------------------------------------------------- step 2
step "2: 300 mixed fib/prime/sleep jobs through the cli service"

t0=$SECONDS
# Three maps at once, so that the kinds are mixed in the queue.
declare -A range2=([fib]=0..100 [prime]=0..100 [sleep]=10..110)
declare -A pid2=()
for kind in fib prime sleep; do
  cli "$kind" map "$kind" "${range2[$kind]}" &
  pid2[$kind]=$!
done
for kind in fib prime sleep; do
  if wait_pid "${pid2[$kind]}" 120; then
    if out="$(map_ok "$kind" "$kind" "${range2[$kind]}")"; then
      pass "step 2: map $kind ${range2[$kind]}: $out"
    else
      fail "step 2: map $kind ${range2[$kind]}: $out"
    fi
  else
    fail "step 2: map $kind did not succeed: $(cli_err "$kind")"
  fi
done
info "300 jobs in $((SECONDS - t0))s"
fib_batch="$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["batch_id"])' "$work/fib.json" 2>/dev/null)"

mapfile -t hosts < <(worker_hosts)
status
if [[ "$(sq "sorted(x['host'] for x in s['workers']) == sorted('${hosts[*]}'.split())")" == True ]] &&
  [[ "$(sq "len(set(x['host'] for x in s['workers'])) == 3")" == True ]]; then
  pass "step 2: status shows 3 workers on 3 hosts, the worker containers: ${hosts[*]}"
else
  fail "step 2: status hosts $(sq "sorted(x['host'] for x in s['workers'])"), containers ${hosts[*]}"
fi
if [[ "$(sq "all(x['completed'] > 0 for x in s['workers'])")" == True ]]; then
  pass "step 2: every worker ran jobs: completed $(sq "', '.join(x['host'] + '=' + str(x['completed']) for x in s['workers'])")"
else
  fail "step 2: a worker ran no jobs: $(sq "[(x['host'], x['completed']) for x in s['workers']]")"
fi

# ---------------------------------------------------------------- step 3
step "3: docker kill a worker in the middle of a map of long sleeps"

args3="$(repeat 60 1000)"
# shellcheck disable=SC2086
cli kill map sleep $args3 & pid=$!
victim=""
if wait_for 30 until_status 'any(x["running"] > 0 for x in s["workers"])'; then
  vhost="$(sq 'next(x["host"] for x in s["workers"] if x["running"] > 0)')"
  vname="$(sq "w('$vhost')['name']")"
  vrunning="$(sq "w('$vhost')['running']")"
  for id in $(worker_ids); do [[ "$(hostname_of "$id")" == "$vhost" ]] && victim=$id; done
fi
if [[ -n "$victim" ]]; then
  docker kill "$victim" >/dev/null
  info "killed worker $vname (container $vhost) while it ran $vrunning jobs"
  if wait_pid "$pid" 90; then
    # shellcheck disable=SC2086
    if out="$(map_ok kill sleep $args3 --lost "$vname")"; then
      pass "step 3: map completed: $out"
    else
      fail "step 3: $out"
    fi
  else
    fail "step 3: map did not complete: $(cli_err kill)"
  fi
  if wait_for 15 until_status "w('$vhost') is None"; then
    pass "step 3: the killed worker left status; $(sq 's["retried"]') jobs retried in all"
  else
    fail "step 3: the killed worker is still in status"
  fi
  # Bring it back for the next steps; it rejoins by itself.
  docker start "$victim" >/dev/null
  if wait_for 30 until_status "len(s['workers']) == 3 and w('$vhost') is not None"; then
    pass "step 3: the killed worker's container started again and rejoined"
  else
    fail "step 3: the restarted worker did not rejoin: $(sq "[x['host'] for x in s['workers']]")"
  fi
else
  fail "step 3: no worker ran the sleep jobs within 30s"
  wait_pid "$pid" 90
fi

# ---------------------------------------------------------------- step 4
step "4: disconnect a worker from the network past the lease ($DROVER_LEASE), reconnect it"

status
succeeded_before="$(sq 's["succeeded"]')"
late_before="$(sq 's["late_results_dropped"]')"
# Jobs of 3 s: a victim seen running jobs still holds them when the
# disconnect takes effect (with 1 s jobs a loaded run saw them all finish
# first, and nothing was left to lose).
args4="$(repeat 36 3000)"
# shellcheck disable=SC2086
cli part map sleep $args4 & pid=$!
victim=""
# Another worker than step 3's, if it runs jobs too.
prev="${vhost:-}"
if wait_for 30 until_status 'any(x["running"] > 0 for x in s["workers"])'; then
  vhost="$(sq "sorted((x['host'] == '$prev', x['host']) for x in s['workers'] if x['running'] > 0)[0][1]")"
  vname="$(sq "w('$vhost')['name']")"
  vrunning="$(sq "w('$vhost')['running']")"
  for id in $(worker_ids); do [[ "$(hostname_of "$id")" == "$vhost" ]] && victim=$id; done
fi
if [[ -n "$victim" ]]; then
  net="$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$victim" | awk '{print $1}')"
  docker network disconnect "$net" "$victim"
  t0=$SECONDS
  info "disconnected worker $vname (container $vhost) from $net while it ran $vrunning jobs"
  if wait_for 30 until_status "w('$vhost') is None"; then
    pass "step 4: the master dropped the silent worker after $((SECONDS - t0))s (lease $DROVER_LEASE)"
  else
    fail "step 4: the master still lists the disconnected worker after 30s"
  fi
  if wait_pid "$pid" 60; then
    # shellcheck disable=SC2086
    if out="$(map_ok part sleep $args4 --lost "$vname")"; then
      pass "step 4: map completed while the worker was cut off: $out"
    else
      fail "step 4: $out"
    fi
  else
    fail "step 4: map did not complete: $(cli_err part)"
  fi
  docker network connect "$net" "$victim"
  t0=$SECONDS
  if wait_for 60 until_status "w('$vhost') is not None"; then
    pass "step 4: reconnected worker is back in status after $((SECONDS - t0))s"
  else
    fail "step 4: reconnected worker not back in status within 60s"
  fi
  status
  delta=$(($(sq 's["succeeded"]') - succeeded_before))
  late=$(($(sq 's["late_results_dropped"]') - late_before))
  if ((delta == 36)); then
    pass "step 4: each result recorded once: succeeded +$delta for 36 jobs; late results dropped: $late"
  else
    fail "step 4: succeeded +$delta for 36 jobs (late results dropped: $late)"
  fi
  args4b="$(repeat 24 300)"
  out=""
  # shellcheck disable=SC2086
  if cli again map sleep $args4b && out="$(map_ok again sleep $args4b)" &&
    until_status "w('$vhost')['completed'] > 0"; then
    pass "step 4: it serves again: $out; it completed $(sq "w('$vhost')['completed']") of them"
  else
    fail "step 4: after reconnecting: ${out:-$(cli_err again)}; its completed: $(sq "w('$vhost') and w('$vhost')['completed']")"
  fi
else
  fail "step 4: no worker ran the sleep jobs within 30s"
  wait_pid "$pid" 60
fi

# ---------------------------------------------------------------- step 5
step "5: restart the master in the middle of a batch, with its volume"

# The help is read whole before it is searched: `grep -q` stops at the first
# match, and under pipefail the writer's SIGPIPE would read as "no --store".
master_help="$(docker run --rm --entrypoint /drover-master "$image" --help 2>/dev/null)"
if ! grep -q -- '--store' <<<"$master_help"; then
  pend "step 5 (durable master not yet landed: drover-master has no --store)"
else
  args5="$(repeat 60 500)"
  status
  succeeded_before="$(sq 's["succeeded"]')"
  # shellcheck disable=SC2086
  if cli submit5 submit sleep $args5; then
    batch5="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["batch_id"])' "$work/submit5.json")"
    wait_for 30 until_status "s['running'] > 0 and s['succeeded'] > $succeeded_before"
    info "batch $batch5 submitted; killing the master with $(sq 's["running"]') jobs running, $(sq 's["queued"]') queued"
    mid="$(master_id)"
    docker kill "$mid" >/dev/null
    docker start "$mid" >/dev/null
    t0=$SECONDS
    if wait_for 60 bash -c "[[ \$(docker inspect -f '{{.State.Health.Status}}' $mid) == healthy ]]"; then
      pass "step 5: master restarted and healthy after $((SECONDS - t0))s"
    else
      fail "step 5: master not healthy within 60s of its restart"
    fi
    out=""
    if cli get5 get "$batch5" --wait --timeout 90s && out="$(map_ok get5 sleep $args5)"; then
      pass "step 5: the batch submitted before the restart completed: $out"
    else
      fail "step 5: batch after the restart: ${out:-$(cli_err get5)}"
    fi
    out=""
    if [[ -n "$fib_batch" ]] && cli getfib get "$fib_batch" && out="$(map_ok getfib fib 0..100)"; then
      pass "step 5: results from before the restart kept: $out"
    else
      fail "step 5: step 2's fib batch after the restart: ${out:-$(cli_err getfib)}"
    fi
    if wait_for 30 until_status "sorted(x['host'] for x in s['workers']) == sorted('${hosts[*]}'.split())"; then
      pass "step 5: the 3 workers reconnected by themselves"
    else
      fail "step 5: workers after the restart: $(sq "[x['host'] for x in s['workers']]")"
    fi
  else
    fail "step 5: submit failed: $(cli_err submit5)"
  fi
fi

# ---------------------------------------------------------------- step 6
step "6: a worker of a second compose project (its own network) joins by address"

# Asked again: a restarted container gets a new ephemeral port.
master_port="$(c1 port master 50051 | tail -1 | sed 's/.*://')"
master_via_host="http://master-host:$master_port"
if c2 up -d >"$work/up2.log" 2>&1; then
  w2="$(c2 ps -q worker | head -1)"
  w2host="$(hostname_of "$w2")"
  w2net="$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$w2" | awk '{print $1}')"
  info "worker $w2host on network $w2net, DROVER_MASTER=$master_via_host (master-host = host-gateway)"
  if wait_for 60 until_status "len(s['workers']) == 4 and w('$w2host') is not None"; then
    pass "step 6: status shows the 4th worker, host $w2host"
  else
    fail "step 6: the second project's worker did not join: $(sq "[x['host'] for x in s['workers']]")"
  fi
  # The client is on the second project's network too.
  args6="$(repeat 32 300)"
  out=""
  # shellcheck disable=SC2086
  if DROVER_MASTER="$master_via_host" timeout 150 "${compose[@]}" -p "$p2" \
    -f "$here/docker-compose.worker.yml" -f "$work/worker-override.yml" run --rm -T cli --output json map sleep $args6 >"$work/p2.json" 2>"$work/p2.err" &&
    out="$(map_ok p2 sleep $args6)" && until_status "w('$w2host')['completed'] > 0"; then
    pass "step 6: a map from the second network: $out; the 4th worker completed $(sq "w('$w2host')['completed']")"
  else
    fail "step 6: ${out:-$(cli_err p2)}; the 4th worker completed: $(sq "w('$w2host') and w('$w2host')['completed']")"
  fi
else
  tail -20 "$work/up2.log"
  fail "step 6: compose up of the worker-only project failed"
fi

# ---------------------------------------------------------------- finally
step "end: no container restarted on its own"

# The compose file restarts a crashed master or worker (restart:
# unless-stopped), which would hide a crash from the checks above. The
# test's own kills are followed by a manual `docker start`, which does not
# count as a restart.
restarts="$(for id in $(c1 ps -q) $(c2 ps -q); do
  docker inspect -f '{{.Name}} {{.RestartCount}}' "$id"
done | awk '$2 > 0 {printf "%s restarted %s time(s); ", substr($1, 2), $2}')"
if [[ -z "$restarts" ]]; then
  pass "end: every container ran without a crash or a restart by the restart policy"
else
  fail "end: $restarts(see the logs below)"
fi
