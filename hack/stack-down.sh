#!/usr/bin/env bash
# Stops everything hack/stack-up.sh started. Safe to run when nothing is running.
# With --purge, also deletes the stack's data (etcd, databases, queues).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ -d "$STACK_DIR" ] || exit 0
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
pg_user=(); [ "$(id -u)" = 0 ] && pg_user=(runuser -u postgres --)
for db in replica primary; do
  if [ -f "$STACK_DIR/postgres/$db/postmaster.pid" ]; then
    "${pg_user[@]}" "$PG_BIN/pg_ctl" -D "$STACK_DIR/postgres/$db" -m fast -w stop >/dev/null 2>&1 || true
  fi
done
for pidfile in "$STACK_DIR"/run/*.pid; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  # Each service was started with setsid: stop its whole process group.
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
  log "stopped $(basename "$pidfile" .pid)"
done
if [ -f "$STACK_DIR/ports" ]; then
  source "$STACK_DIR/ports"
  ERL_EPMD_PORT=$EPMD_PORT epmd -kill >/dev/null 2>&1 || true
fi
if [ "${1:-}" = "--purge" ]; then rm -rf "$STACK_DIR"; log "purged $STACK_DIR"; fi
