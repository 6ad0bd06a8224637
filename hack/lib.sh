# Shared helpers for the hack/ scripts. Sourced, never run.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$HACK_DIR/.." && pwd)"
# Everything built or downloaded is cached per user, keyed by version, so that a
# second run of any script is fast and a fresh clone reuses the work.
CACHE_DIR="${LEVEE_CACHE_DIR:-$HOME/.cache/levee}"
# Runtime state (data dirs, logs, pid files, the env file) for one stack.
STACK_DIR="${LEVEE_STACK_DIR:-$ROOT_DIR/target/stack}"

KUBE_VERSION="${LEVEE_KUBE_VERSION:-v1.36.3}"
ETCD_VERSION="${LEVEE_ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${LEVEE_HELM_VERSION:-v3.22.0}"

export GOMODCACHE="${GOMODCACHE:-$HOME/go/pkg/mod}"
export GOCACHE="${GOCACHE:-$HOME/.cache/go-build}"
export GOTOOLCHAIN=local
export CGO_ENABLED=0

log() { printf '[hack %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# wait_for NAME TIMEOUT_SECONDS CMD...: retry CMD until it succeeds or time runs out.
wait_for() {
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  local pidfile="$STACK_DIR/run/${name%% *}.pid"
  until "$@" >/dev/null 2>&1; do
    # A service that died will never become ready: say so at once.
    if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      die "$name exited during start-up; last lines of its log:
$(tail -n 15 "$STACK_DIR/logs/${name%% *}.log" 2>/dev/null)"
    fi
    if ((SECONDS >= deadline)); then
      die "$name not ready after ${timeout}s (see $STACK_DIR/logs/)"
    fi
    sleep 0.5
  done
  log "$name ready"
}

# free_port: a free TCP port on 127.0.0.1, asked of the kernel.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# as_root CMD...: run with privileges (CI and this workplace run as root; sudo elsewhere).
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}
