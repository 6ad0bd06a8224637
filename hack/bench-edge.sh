#!/usr/bin/env bash
# Proxy throughput and latency, side by side in one run: wrk against
#   1. the upstream directly (nginx returning a fixed 200),
#   2. nginx `proxy_pass` with `limit_req` to that upstream,
#   3. `levee edge` (release build, standalone) to the same upstream.
# Each wrk run is bounded (BENCH_SECS, default 10 s, after a warm-up of WARMUP_SECS). nginx and
# levee are measured in ROUNDS (default 5) alternating rounds: on a shared machine the speed of
# the moment moves by a fifth within a minute, and alternating puts both servers through the
# same moments. Prints each round, the medians, how many rounds levee was ahead in, and the CPU
# time each proxy (and the upstream) used per request.
# Usage: hack/bench-edge.sh [wrk threads] [connections]
# BENCH_PROFILE=release measures a plain release build (minutes to build, not a quarter hour)
# when comparing changes; the figures to report come from the default, production.
# LEVEE_BIN=path measures that binary as it is, without building.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT_DIR"

THREADS=${1:-2}
CONNS=${2:-64}
SECS=${BENCH_SECS:-10}
"$HACK_DIR/install-deps.sh"
command -v wrk >/dev/null || die "wrk not installed"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || die "nginx not installed"
# The production profile (whole-program optimisation): levee as it would be deployed. Its first
# build took 13 to 15 minutes on two cores.
PROFILE=${BENCH_PROFILE:-production}
if [ -n "${LEVEE_BIN:-}" ]; then
  log "measuring $LEVEE_BIN as built"
else
  log "building levee with --profile $PROFILE"
  cargo build --profile "$PROFILE" --locked --quiet
  LEVEE_BIN="target/$PROFILE/levee"
fi

dir=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); NGX=$(free_port); EDGE=$(free_port); ADMIN=$(free_port)
# Two nginx instances: the upstream (one worker), and the proxy with one worker per core, as
# `levee edge` runs one worker per core; sharing one nginx between the two roles would give
# the proxy under test different resources than levee gets.
nginx_conf() {
  local name=$1 workers=$2 body=$3
  mkdir -p "$dir/$name"
  cat >"$dir/$name/nginx.conf" <<CONF
worker_processes $workers;
pid $dir/$name/nginx.pid;
error_log $dir/$name/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/$name/body;
  proxy_temp_path $dir/$name/proxy;
  fastcgi_temp_path $dir/$name/fastcgi;
  uwsgi_temp_path $dir/$name/uwsgi;
  scgi_temp_path $dir/$name/scgi;
$body
}
CONF
  "$NGINX" -c "$dir/$name/nginx.conf" -p "$dir/$name" 2>/dev/null || "$NGINX" -c "$dir/$name/nginx.conf"
}
nginx_conf upstream 1 "  server { listen 127.0.0.1:$UP; location / { return 200 \"ok\\n\"; } }"
# A per-client limit high enough never to refuse the benchmark: the work is measured, not the
# refusals.
nginx_conf proxy auto "
  limit_req_zone \$binary_remote_addr zone=per_ip:10m rate=1000000r/s;
  upstream app { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:$NGX;
    location / {
      limit_req zone=per_ip burst=1000000 nodelay;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_pass http://app;
    }
  }"
"$LEVEE_BIN" edge --standalone --listen "127.0.0.1:$EDGE" --admin-listen "127.0.0.1:$ADMIN" \
  --upstream "http://127.0.0.1:$UP" >"$dir/edge.log" 2>&1 &
edge_pid=$!
cleanup() {
  kill "$edge_pid" 2>/dev/null || true
  for n in upstream proxy; do kill "$(cat "$dir/$n/nginx.pid" 2>/dev/null)" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
wait_for "levee edge" 20 curl -sf "http://127.0.0.1:$ADMIN/readyz"
wait_for "nginx" 20 curl -sf "http://127.0.0.1:$NGX/"

# CPU time (user + system, clock ticks) the given processes have used. On a shared machine the
# CPU a proxy spends per request is steadier than the requests per second it reaches.
ticks() {
  local t=0 p f
  for p in "$@"; do
    read -r -a f <"/proc/$p/stat" || continue
    t=$((t + f[13] + f[14]))
  done
  echo "$t"
}
rate() { awk '/Requests\/sec/{print $2}' "$dir/$1.txt"; }
cpu_per_request() {
  awk -v t="$(cat "$dir/$1.cpu")" -v hz="$(getconf CLK_TCK)" '/requests in/{n=$1} END{if (n > 0) printf "%.2f\n", t * 1e6 / hz / n}' "$dir/$1.txt"
}
summary() {
  local cpu=""
  [ -f "$dir/$1.cpu" ] && cpu="   CPU $(cpu_per_request "$1") us/request"
  printf '%-9s %12s req/s   p50 %8s   p99 %8s   non-2xx %s%s\n' "$1" "$(rate "$1")" \
    "$(awk '$1=="50%"{print $2}' "$dir/$1.txt")" \
    "$(awk '$1=="99%"{print $2}' "$dir/$1.txt")" \
    "$(awk '/Non-2xx/{n=$5} END{print n+0}' "$dir/$1.txt")" \
    "$cpu"
}
workers() { pgrep -P "$(cat "$dir/$1/nginx.pid")" | tr '\n' ' '; }
run() {
  local name=$1 port=$2 before
  shift 2
  before=$(ticks "$@")
  wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency "http://127.0.0.1:$port/" >"$dir/$name.txt"
  echo $(($(ticks "$@") - before)) >"$dir/$name.cpu"
  summary "$name"
}
# Each server first gets an unmeasured run of WARMUP_SECS (default 5): a process just started
# (allocator, connection pools, the scheduler's view of its threads) is not what serves
# traffic for long, and in several runs here levee's first 5 to 10 s under load cost a seventh
# to a third more CPU per request than its later ones.
warm() {
  log "warm-up: wrk -t$THREADS -c$CONNS -d${WARMUP_SECS:-5}s against $1 (not measured)"
  wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP_SECS:-5}s" "http://127.0.0.1:$2/" >/dev/null
}
warm upstream "$UP"; warm nginx "$NGX"; warm levee "$EDGE"
ROUNDS=${ROUNDS:-5}
log "wrk -t$THREADS -c$CONNS -d${SECS}s: the upstream alone, then $ROUNDS rounds of nginx and levee"
# shellcheck disable=SC2046 # one argument per worker pid
run upstream "$UP" $(workers upstream)
for r in $(seq "$ROUNDS"); do
  # shellcheck disable=SC2046
  run "nginx-$r" "$NGX" $(workers proxy)
  run "levee-$r" "$EDGE" "$edge_pid"
done
# Added latency without queueing: one connection, one request at a time.
latency() {
  local name=$1 port=$2
  wrk -t1 -c1 -d"${SECS}s" --latency "http://127.0.0.1:$port/" >"$dir/$name-c1.txt"
}
log "wrk -t1 -c1 -d${SECS}s against each (latency without queueing)"
latency upstream "$UP"; latency nginx "$NGX"; latency levee "$EDGE"

# The median of a column over the rounds of one server.
median() { sort -g | awk '{v[NR]=$1} END{print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
ahead=0
for r in $(seq "$ROUNDS"); do
  awk -v l="$(rate "levee-$r")" -v n="$(rate "nginx-$r")" 'BEGIN{exit !(l > n)}' && ahead=$((ahead + 1))
done
echo
echo "over $ROUNDS alternating rounds (wrk -t$THREADS -c$CONNS -d${SECS}s, $(nproc) cores shared by wrk, nginx and levee):"
for n in nginx levee; do
  printf '%-9s median %10s req/s   median CPU %6s us/request\n' "$n" \
    "$(for r in $(seq "$ROUNDS"); do rate "$n-$r"; done | median)" \
    "$(for r in $(seq "$ROUNDS"); do cpu_per_request "$n-$r"; done | median)"
done
echo "levee served more requests/s than nginx in $ahead of $ROUNDS rounds"
echo
echo "one connection at a time (wrk -t1 -c1 -d${SECS}s):"
for n in upstream nginx levee; do summary $n-c1; done
