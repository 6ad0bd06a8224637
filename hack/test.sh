#!/usr/bin/env bash
# The one test command: installs what is missing (Debian packages, moto, etcd and
# kube-apiserver built from source), starts the local stack, runs every test, and stops
# the stack again unless it was already running before. Extra arguments go to `cargo test`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT_DIR"

started=$SECONDS
was_up=0
if [ -f "$STACK_DIR/run/kube-apiserver.pid" ] && kill -0 "$(cat "$STACK_DIR/run/kube-apiserver.pid")" 2>/dev/null; then
  was_up=1
fi
"$HACK_DIR/stack-up.sh"
((was_up)) || trap '"$HACK_DIR/stack-down.sh"' EXIT
log "stack ready after $((SECONDS - started))s"

source "$STACK_DIR/env"
# Benchmarks are measured with `cargo bench`; in a debug test run they would only be slow.
cargo test --locked --lib --bins --tests "$@"
log "all tests passed in $((SECONDS - started))s"
